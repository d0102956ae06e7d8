"""Draw peak memory against N from ``results/linear_ce_memory.csv`` (written by
``bench_linear_cross_entropy.py --sweep``) into ``docs/linear_ce_memory.png``.

Benchmarks never plot inline; this script only reads their CSV.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
STYLE = {"crossent": ("C0", "o"), "naive": ("C3", "s"), "torch-chunked": ("C2", "^")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", type=Path, default=HERE / "results" / "linear_ce_memory.csv")
    p.add_argument("--out", type=Path, default=HERE.parent / "docs" / "linear_ce_memory.png")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    dims = None
    with open(args.csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["peak_extra_mib"]:
                series[row["provider"]].append((int(row["N"]), float(row["peak_extra_mib"])))
                dims = (row["D"], row["V"])
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    for name, points in series.items():
        points.sort()
        color, marker = STYLE.get(name, (None, "x"))
        ax.plot([n for n, _ in points], [m for _, m in points], marker=marker, color=color,
                label=name)
    ax.set_xlabel("tokens N")
    ax.set_ylabel("peak extra memory of one step (MiB)")
    if dims:
        ax.set_title(f"linear + cross-entropy, forward + backward, D={dims[0]}, V={dims[1]}",
                     fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
