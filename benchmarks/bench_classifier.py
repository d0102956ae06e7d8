"""Benchmark: ``crossent.SoftmaxRegression`` against scikit-learn's ``LogisticRegression``.

Fit time (median of ``--repeats`` fits after one warm-up fit), iterations, accuracy and log
loss, and peak extra memory, side by side, on two datasets:

* ``digits``  scikit-learn's bundled 8x8 digits, 80/20 split with ``random_state=0``
              (1437 rows x 64 features, 10 classes); scores on the 360 test rows.
* ``blobs-200k``  ``make_classification(200_000, 100, n_informative=30, n_classes=20,
              random_state=0)``; all 200,000 rows are fitted and scored (training scores).

Providers, each in its own fresh process (see ``_harness.py``), all on float64 data:

* ``crossent``            ``SoftmaxRegression()``: the defaults (L-BFGS-B, alpha=1e-3, tol=1e-4).
* ``crossent alpha=1/n``  ``SoftmaxRegression(alpha=1/n_samples)``: exactly the objective of
                          ``LogisticRegression(C=1)`` with three or more classes (both datasets
                          here), so iterations and accuracy match it (two classes would take
                          ``alpha=2/n_samples``: see ``SoftmaxRegression``'s docstring).
* ``sklearn``             ``LogisticRegression(max_iter=10000)``: the defaults (lbfgs, C=1,
                          tol=1e-4), with BLAS and OpenMP threads as installed.
* ``sklearn 1-thread``    the same inside ``threadpool_limits(1)``: SoftmaxRegression limits
                          BLAS to one thread while fitting (its own thread pool splits the
                          matrix products), so this row shows how much of the difference is
                          threading rather than arithmetic.

Run: ``python benchmarks/bench_classifier.py`` (about 10 minutes on 2 cores; ``--quick`` for
digits only).  Writes ``benchmarks/results/bench_classifier.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
DATASETS = ("digits", "blobs-200k")
PROVIDERS = ("crossent", "crossent alpha=1/n", "sklearn", "sklearn 1-thread")
MiB = 1 << 20


def load(dataset: str):
    """``(X_fit, y_fit, X_score, y_score)`` as float64 / int64 arrays."""
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2,
                                                            random_state=0)
        return X_train, y_train, X_test, y_test
    from sklearn.datasets import make_classification

    X, y = make_classification(200_000, 100, n_informative=30, n_classes=20, random_state=0)
    return X, y, X, y


def make(provider: str, n_samples: int):
    from sklearn.linear_model import LogisticRegression

    from crossent import SoftmaxRegression

    if provider == "crossent":
        return SoftmaxRegression()
    if provider == "crossent alpha=1/n":
        return SoftmaxRegression(alpha=1.0 / n_samples)
    return LogisticRegression(max_iter=10000)


def worker(dataset: str, provider: str, repeats: int) -> dict:
    import contextlib

    from sklearn.metrics import accuracy_score, log_loss
    from threadpoolctl import threadpool_limits

    X, y, X_score, y_score = load(dataset)
    limit = (threadpool_limits(limits=1) if provider == "sklearn 1-thread"
             else contextlib.nullcontext())
    fitted = {}

    def call():
        model = make(provider, len(X))
        model.fit(X, y)
        fitted["model"] = model
        return model

    with limit:
        result = h.measure(call, repeats)
    model = fitted["model"]
    proba = model.predict_proba(X_score)
    return {
        **result,
        "n_iter": int(model.n_iter_[0] if hasattr(model.n_iter_, "__len__") else model.n_iter_),
        "accuracy": float(accuracy_score(y_score, model.classes_[proba.argmax(axis=1)])),
        "log_loss": float(log_loss(y_score, proba, labels=model.classes_)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits only")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed fits per provider (default: 7 on digits, 3 on blobs-200k)")
    p.add_argument("--csv", type=Path, default=HERE / "results" / "bench_classifier.csv")
    p.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import json

        dataset, provider, repeats = args.worker
        print(json.dumps(worker(dataset, provider, int(repeats))))
        return 0

    machine, versions, date = h.machine(), h.versions(
        ("crossent", "numpy", "scipy", "scikit-learn", "threadpoolctl")), h.now()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    rows, csv_rows = [], []
    for dataset in DATASETS[:1] if args.quick else DATASETS:
        repeats = args.repeats or (7 if dataset == "digits" else 3)
        for provider in PROVIDERS:
            r = h.run_worker(Path(__file__), [dataset, provider, str(repeats)])
            if "error" in r:
                print(f"{dataset} {provider}: {r['error']}", file=sys.stderr)
                continue
            median = statistics.median(r["times"])
            rows.append([dataset, provider, f"{median:.3f}", str(r["n_iter"]),
                         f"{r['accuracy']:.4f}", f"{r['log_loss']:.4f}",
                         f"{r['extra_bytes'] / MiB:.0f}"])
            csv_rows.append({
                "dataset": dataset, "provider": provider, "fit_s_median": median,
                "fit_s_all": " ".join(f"{t:.4f}" for t in r["times"]), "repeats": repeats,
                "n_iter": r["n_iter"], "accuracy": r["accuracy"], "log_loss": r["log_loss"],
                "peak_extra_mib": r["extra_bytes"] / MiB, "memory_method": r["memory_method"],
                **{f"machine_{k}": v for k, v in machine.items()},
                **{f"version_{k}": v for k, v in versions.items()}, "date": date,
            })
    print()
    h.print_table(["dataset", "provider", "fit (s, median)", "iterations",
                   "accuracy", "log loss", "peak extra MiB"], rows, right={2, 3, 4, 5, 6})
    print("\naccuracy and log loss: digits on its 360 test rows, blobs-200k on the 200,000 "
          "fitted rows")
    h.write_csv(args.csv, csv_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
