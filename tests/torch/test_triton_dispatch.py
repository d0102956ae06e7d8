"""The public torch functions with ``impl="triton"``: the Triton kernels behind
``cross_entropy`` (fused loss + gradient) and ``linear_cross_entropy`` (per chunk, in place),
run in Triton's interpreter on CPU tensors when there is no GPU.  The kernels' own grid is
in ``test_triton_cross_entropy.py``; this module checks the wiring.
"""

from __future__ import annotations

import pytest
from triton_support import triton_device  # noqa: E402

DEVICE = triton_device()
ON_GPU = DEVICE.type == "cuda"

import torch  # noqa: E402

import crossent.torch as ct  # noqa: E402


@pytest.mark.parametrize("options", [
    dict(),
    dict(label_smoothing=0.1, z_loss=1e-3, softcap=5.0, reduction="none", weight=True),
    dict(reduction="sum", probability=True),
])
def test_cross_entropy_through_triton(options):
    options = dict(options)
    x = torch.randn(6, 50, device=DEVICE)
    if options.pop("probability", False):
        y = torch.softmax(torch.randn(6, 50, device=DEVICE), 1)
    else:
        y = torch.tensor([1, 2, -100, 4, 5, 49], device=DEVICE)
    if options.pop("weight", False):
        options["weight"] = torch.rand(50, device=DEVICE) + 0.5
    xx = x.clone().requires_grad_()
    loss = ct.cross_entropy(xx, y, impl="triton", **options)
    go = torch.randn_like(loss)
    (grad,) = torch.autograd.grad(loss, xx, go)
    xr = x.double().requires_grad_()
    ref = ct.cross_entropy_ref(xr, y, **{k: (v.double() if torch.is_tensor(v) else v)
                                         for k, v in options.items()})
    (ref_grad,) = torch.autograd.grad(ref, xr, go.double())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_linear_cross_entropy_through_triton():
    h = torch.randn(10, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(50, 8, device=DEVICE, requires_grad=True)
    y = torch.randint(0, 50, (10,), device=DEVICE)
    loss = ct.linear_cross_entropy(h, w, y, impl="triton", chunk_size=4, label_smoothing=0.1)
    ref = ct.linear_cross_entropy_ref(h, w, y, label_smoothing=0.1)
    grads = torch.autograd.grad(loss, (h, w))
    ref_grads = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-6)


def test_explicit_triton_refuses_float64():
    with pytest.raises(RuntimeError, match="float64"):
        ct.cross_entropy(torch.randn(2, 3, dtype=torch.float64, device=DEVICE),
                         torch.tensor([0, 1], device=DEVICE), impl="triton")
