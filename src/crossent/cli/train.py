"""``crossent train``: fit a softmax regression and print how well it does.

The whole pipeline of the textbooks on real data: features ``x`` (standardised with the
training rows' mean and standard deviation, as ``make_pipeline(StandardScaler(), ...)``
does), logits ``Wx + b``, softmax, cross-entropy against the label, and a solver that follows
the gradient.  By default it trains on scikit-learn's bundled digits with the 80/20 split
scikit-learn's examples use.  The data summary is printed before training starts.  The
numbers in the table are :func:`crossent.metrics.log_loss` and
:func:`crossent.metrics.accuracy` of the fitted model's probabilities, the same functions
``crossent score`` and ``crossent evaluate`` use.
"""

from __future__ import annotations

import argparse
import datetime
import warnings

from . import Needs, Sometimes
from . import _common as common

NEEDS = Needs(common.MODEL_PACKAGES,
              (Sometimes(("matplotlib",), "for --plot", lambda args: bool(args.plot)),))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a softmax-regression classifier (default: on the bundled digits)",
        description="Train a softmax-regression classifier (standardised features, logits "
        "Wx + b, softmax, cross-entropy, L2 penalty) and print its loss and accuracy on the "
        "training and test sets. Without --data it trains on scikit-learn's bundled 8x8 "
        "digits with an 80/20 split (seed 0).",
    )
    common.add_training_data_options(p)
    add_model_options(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="MODEL.npz",
                     help="save the model (plain arrays and JSON metadata, no pickle)")
    out.add_argument("--plot", metavar="CURVES.png",
                     help="save the learning curves (log loss and accuracy per iteration); "
                     "the file's extension chooses the format: .png, .pdf, .svg, ...")
    common.add_force(out)
    p.set_defaults(run=run)


def add_model_options(p: argparse.ArgumentParser, *, loss: bool = True,
                      solver: str = "lbfgs", epochs_help: str | None = None) -> None:
    g = p.add_argument_group("model")
    if loss:
        g.add_argument("--loss", choices=("cross_entropy", "mse"), default="cross_entropy",
                       help="training loss: cross-entropy, or squared error on the softmax "
                       "probabilities (default: cross_entropy)")
    g.add_argument("--solver", choices=("lbfgs", "gd", "sgd"), default=solver,
                   help=f"lbfgs (SciPy L-BFGS-B), gd (full-batch gradient descent) or sgd "
                   f"(minibatches, momentum 0.9) (default: {solver})")
    g.add_argument("--epochs", type=common.positive_int, metavar="N",
                   help=epochs_help or "most iterations (lbfgs, gd) or epochs (sgd) "
                   "(default: 1000; training stops earlier once converged)")
    g.add_argument("--lr", type=common.learning_rate, default="auto", metavar="RATE",
                   help="step size of gd and sgd; 'auto' is 1/L for gd and (1 - 0.9)/L for "
                   "sgd (momentum 0.9), L the gradient's Lipschitz bound (default: auto)")
    g.add_argument("--alpha", type=common.non_negative, default=1e-3,
                   help="L2 penalty on the weights (default: 0.001)")
    g.add_argument("--batch-size", type=common.positive_int, default=64, metavar="N",
                   help="minibatch size of sgd (default: 64)")


def make_model(args: argparse.Namespace, loss: str | None = None, **overrides):
    from ..classifier import SoftmaxRegression

    params = dict(
        loss=loss or args.loss, solver=args.solver, alpha=args.alpha,
        learning_rate=args.lr, batch_size=args.batch_size, random_state=args.seed,
    )
    if args.epochs is not None:
        params["max_iter"] = args.epochs
    params.update(overrides)
    return SoftmaxRegression(**params)


def run(args: argparse.Namespace) -> int:
    from ..metrics import accuracy, log_loss

    inputs = [("--data", args.data)]
    common.check_output(args.out, args.force, "--out", inputs)
    common.check_figure_output(args.plot, args.force, "--plot", inputs)
    if args.out and args.plot and common.same_path(args.out, args.plot):
        raise common.UsageError("--out and --plot name the same file")
    training = common.prepare_training(args, "train")
    train, test, scaler = training.train, training.test, training.scaler
    model = make_model(args)
    loss_name = "cross-entropy" if model.loss == "cross_entropy" else "squared error"
    features = "standardised features" if scaler is not None else "features as given"
    print(f"model: SoftmaxRegression, {loss_name} loss, {model.solver} solver, "
          f"alpha {model.alpha:g}, {features}")
    common.flush()

    curves, seconds = common.fit_with_curves(model, training, track=args.plot is not None,
                                             desc=f"train ({args.solver})")
    p_train = model.predict_proba(train.X)
    y_train, y_test = training.y_train, training.y_test
    rows = [("train", common.fmt(log_loss(y_train, p_train)),
             common.fmt(accuracy(y_train, p_train)), train.n_samples)]
    if test is not None:
        p_test = model.predict_proba(test.X)
        rows.append(("test", common.fmt(log_loss(y_test, p_test)),
                     common.fmt(accuracy(y_test, p_test)), test.n_samples))
    unit = "epochs" if model.solver == "sgd" else "iterations"
    print()
    print(common.table(rows, header=("", "log loss", "accuracy", "rows")))
    print()
    print(common.pairs([
        (unit, f"{model.n_iter_} ({common.convergence(model, scaler is not None)})"),
        ("objective", f"{model.loss_curve_[-1]:.6f} (mean {loss_name} + L2 penalty)"
         if model.loss_curve_ else "-"),
        *([("learning rate", f"{model.learning_rate_:.3g}"
            + (" (auto: 1/L)" if model.solver == "gd" and args.lr == "auto" else
               " (auto: 0.1/L)" if args.lr == "auto" else ""))]
          if model.solver != "lbfgs" else []),
        ("fit time", f"{seconds:.2f} s"),
    ]))

    if args.out:
        from .. import __version__
        from ..classifier import save_model

        meta = {
            "target": training.target_name,
            "trained_on": training.source,
            "train_rows": train.n_samples,
            "identifiers": list(training.identifiers),
            "dropped": list(args.drop),
            "seed": args.seed,
            "test_size": args.test_size,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "crossent_version": __version__,
        }
        saved = model
        if scaler is not None:
            from sklearn.pipeline import make_pipeline

            saved = make_pipeline(scaler, model)
        common.write_output(args.out, args.force, "--out", lambda fh: save_model(
            saved, fh, feature_names=list(training.feature_names), metadata=meta), inputs)
        print(f"model saved to {args.out}")
    if args.plot:
        from ..plots import learning_curves_figure, save_figure

        title = (f"SoftmaxRegression ({loss_name}, {model.solver}) on "
                 f"{training.source.rsplit('/', 1)[-1]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. log-scale warnings on a constant curve
            fig = learning_curves_figure(curves, title=title)
        common.write_output(args.plot, args.force, "--plot",
                            lambda fh: save_figure(fig, fh, args.plot), inputs)
        print(f"learning curves saved to {args.plot}")
    return 0
