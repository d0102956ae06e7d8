"""Fine-tune a Hugging Face causal language model whose loss never materialises its logits.

    python examples/finetune_transformers.py --steps 20

A tiny Llama built from a config with random weights (nothing is downloaded) learns to count
(token t is followed by t + 1), with a plain PyTorch loop.  The one crossent line is
``crossent.transformers.patch(model)``: every forward given ``labels`` then computes its loss
with crossent.torch.linear_cross_entropy, chunk by chunk, from the final hidden states and the
output layer's weight; ``outputs.logits`` is None.  Needs ``pip install "crossent[transformers]"``.
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import crossent.transformers


def counting_batch(batch_size: int, length: int, vocab: int, generator: torch.Generator):
    """Rows ``s, s+1, s+2, ...`` (mod vocab) from random starts; labels are the inputs
    (the model shifts them), with the first two positions not trained on."""
    starts = torch.randint(0, vocab, (batch_size, 1), generator=generator)
    ids = (starts + torch.arange(length)) % vocab
    labels = ids.clone()
    labels[:, :2] = -100
    return ids, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    crossent.transformers.patch(model)  # the one line
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, args.steps + 1):
        ids, labels = counting_batch(8, 32, args.vocab, generator)
        outputs = model(input_ids=ids, labels=labels)  # outputs.logits is None: not computed
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step:3d}  loss {outputs.loss.item():.4f}")


if __name__ == "__main__":
    main()
