"""``crossent plot``: the pictures that explain cross-entropy, as PNG (or PDF, SVG, ...) files.

* ``bce``: binary cross-entropy against the predicted probability, for y = 1 and y = 0;
* ``softmax``: the softmax probabilities of a logits vector;
* ``losses``: cross-entropy and squared error, and their gradients with respect to the
  correct class's logit, against the probability of the correct class;
* ``overview`` (default): all of them on one page.

Every curve is computed by the library's own loss functions (see :mod:`crossent.plots`).
"""

from __future__ import annotations

import argparse
import math

from . import Needs
from . import _common as common

NEEDS = Needs(("matplotlib",))

FIGURES = ("overview", "bce", "softmax", "losses")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw the figures that explain cross-entropy (PNG, PDF, SVG, ...)",
        description="Draw the figures that explain cross-entropy as PNG (or PDF, SVG, ... "
        "chosen by the extension of --out): binary "
        "cross-entropy against the predicted probability (bce); the softmax of a logits "
        "vector (softmax); cross-entropy and squared error and their gradients against the "
        "probability of the correct class (losses); or all of them on one page (overview).",
    )
    p.add_argument("figure", nargs="?", choices=FIGURES, default="overview",
                   help="which figure (default: overview)")
    p.add_argument("--logits", type=float, nargs="+", metavar="Z", default=[2.0, 4.0, 0.5],
                   help="the logits of the softmax figure (default: 2 4 0.5)")
    p.add_argument("--out", metavar="FILE.png",
                   help="where to write the figure; its extension chooses the format: .png, "
                   ".pdf, .svg, ... (default: FIGURE.png, e.g. overview.png)")
    common.add_force(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import plots

    out = args.out or f"{args.figure}.png"
    common.check_figure_output(out, args.force, "--out")
    if len(args.logits) < 2 or not all(math.isfinite(z) for z in args.logits):
        raise common.UsageError(f"--logits must be at least 2 finite numbers, got "
                                f"{' '.join(map(str, args.logits))}")
    make = {
        "overview": lambda: plots.overview_figure(args.logits),
        "bce": plots.binary_cross_entropy_figure,
        "softmax": lambda: plots.softmax_figure(args.logits),
        "losses": plots.loss_gradient_figure,
    }[args.figure]
    fig = make()
    common.write_output(out, args.force, "--out", lambda fh: plots.save_figure(fig, fh, out))
    width, height = (round(v * plots.DPI) for v in fig.get_size_inches())
    print(f"crossent plot: {args.figure} ({width} x {height} px) saved to {out}")
    return 0
