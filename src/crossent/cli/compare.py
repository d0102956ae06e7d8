"""``crossent compare``: cross-entropy against squared error, measured on the same data.

The texts this project starts from argue that cross-entropy trains a softmax classifier
faster than squared error, because squared error's gradient carries a factor ``p`` that
vanishes when the model is confidently wrong.  This command trains the same model twice,
same data, same solver, same step size, same seed, once with each loss, and prints and
plots the learning curves epoch by epoch, so the claim is measured rather than asserted.
"""

from __future__ import annotations

import argparse
import warnings

from . import Needs
from . import _common as common
from .train import add_model_options, make_model

DEFAULT_PLOT = "compare.png"
DEFAULT_EPOCHS = 50
NEEDS = Needs(common.MODEL_PACKAGES + ("matplotlib",))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train with cross-entropy and with squared error on the same data and "
        "compare the learning curves",
        description="Train the same softmax-regression model twice on the same data, same "
        "solver, step size and seed: once with cross-entropy, once with squared error on the "
        "softmax probabilities. Print the loss and accuracy per epoch of both and write one "
        "plot of the two learning curves.",
    )
    common.add_training_data_options(p)
    add_model_options(p, loss=False, solver="sgd",
                      epochs_help=f"epochs (iterations for lbfgs and gd) each model trains; "
                      f"no early stopping (default: {DEFAULT_EPOCHS})")
    out = p.add_argument_group("output")
    out.add_argument("--plot", metavar="FILE.png", default=DEFAULT_PLOT,
                     help="where to write the plot; its extension chooses the format: .png, "
                     f".pdf, .svg, ... (default: {DEFAULT_PLOT})")
    common.add_force(out)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inputs = [("--data", args.data)]
    common.check_figure_output(args.plot, args.force, "--plot", inputs)
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    training = common.prepare_training(args, "compare")
    test = training.test
    common.flush()
    which = "test" if test is not None else "train"
    unit = "epoch" if args.solver == "sgd" else "iteration"
    runs = {}
    for loss, label in (("cross_entropy", "cross-entropy"), ("mse", "squared error")):
        model = make_model(args, loss=loss, tol=None)
        curves, _ = common.fit_with_curves(model, training, track=True, desc=label,
                                           label=label)
        runs[loss] = (model, curves)

    (ce_model, ce), (_, se) = runs["cross_entropy"], runs["mse"]
    lr = getattr(ce_model, "learning_rate_", None)
    features = "standardised features" if args.standardize else "features as given"
    print(f"both models: {args.solver}, {args.epochs} {unit}s, "
          + (f"learning rate {lr:.3g}, " if lr else "")
          + f"alpha {args.alpha:g}, seed {args.seed}, {features}; curves: {which} set")
    print()

    def loss_of(c, i):
        return (c.test_loss if test is not None else c.train_loss)[i]

    def acc_of(c, i):
        return (c.test_accuracy if test is not None else c.train_accuracy)[i]

    n = min(len(ce.iteration), len(se.iteration))
    shown = [i for i in range(n) if i < 10 or (i + 1) % max(1, n // 10) == 0 or i == n - 1]
    rows = [(ce.iteration[i],
             common.fmt(ce.objective[i]), common.fmt(loss_of(ce, i)), common.fmt(acc_of(ce, i)),
             common.fmt(se.objective[i]), common.fmt(loss_of(se, i)), common.fmt(acc_of(se, i)))
            for i in shown]
    text = common.table(rows, header=(unit, "objective", "log loss", "accuracy",
                                      "objective", "log loss", "accuracy"), indent="")
    first = text.index("objective")
    second = text.index("objective", first + 1)
    print(" " * first + "cross-entropy".ljust(second - first) + "squared error")
    print(text)
    print()
    print(f"objective: each model's own training loss + L2; log loss and accuracy: {which} "
          "set, the same yardstick for both")
    print(common.pairs([
        (f"after 1 {unit}", f"cross-entropy {acc_of(ce, 0):.4f}, squared error "
         f"{acc_of(se, 0):.4f} {which} accuracy"),
        (f"after {n} {unit}s", f"cross-entropy {acc_of(ce, n - 1):.4f}, squared error "
         f"{acc_of(se, n - 1):.4f} {which} accuracy"),
    ]))

    from ..plots import compare_figure, save_figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = compare_figure(ce, se, title=f"cross-entropy vs squared error: softmax "
                             f"regression on {training.source.rsplit('/', 1)[-1]} "
                             f"({args.solver}, same step size)")
    common.write_output(args.plot, args.force, "--plot",
                        lambda fh: save_figure(fig, fh, args.plot), inputs)
    print(f"plot saved to {args.plot}")
    return 0
