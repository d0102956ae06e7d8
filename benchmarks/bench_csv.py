"""Benchmark: reading a large numeric CSV file into a float64 feature matrix and labels.

The question it answers: which parser should ``crossent.datasets`` read CSV files with, and
how close to the file's own size can the memory of ``crossent train --data big.csv`` stay?
The file is generated here (``--size-mb``, default 200: 20 float columns written with five
decimals and an integer label, like an exported table), then every provider reads it into
``X`` (n, 20) float64 and ``y`` (n,) in its own fresh process (see ``_harness.py``): one
warm-up read (page cache, imports), then ``--repeats`` timed reads; the first timed read also
gives the peak memory growth, the returned ``X`` included (measured in the fresh process,
after the imports and after reading the file once into the page cache).

Providers:

* ``crossent``               ``crossent.datasets.load_file``: pandas' C parser in chunks of
                             16 MiB of text, written straight into one column-major float64
                             block that becomes ``X`` in place (what ``crossent train`` does).
* ``pandas``                 ``pandas.read_csv(path)`` whole, then ``DataFrame.to_numpy``.
* ``pandas, engine=pyarrow`` ``pandas.read_csv(path, engine="pyarrow")``, then ``to_numpy``.
* ``pyarrow``                ``pyarrow.csv.read_csv`` (multithreaded) into an Arrow table,
                             then each column ``to_numpy`` into ``X``.
* ``pyarrow, streaming``     ``pyarrow.csv.open_csv``: record batches of 16 MiB, each turned
                             into a block of rows, concatenated at the end.
* ``stdlib csv`` (``--baseline``) crossent's first reader: ``csv.reader`` into a list of
                             rows, ``np.array(rows, dtype=str)``, then ``astype(float64)`` per
                             column (about ten times the file size; slow).

Run: ``python benchmarks/bench_csv.py`` (about 2 minutes on 2 cores for 200 MB;
``--size-mb 800`` for the size the issue measured).  Prints a Markdown table and writes
``benchmarks/results/bench_csv.csv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
PROVIDERS = ("crossent", "pandas", "pandas, engine=pyarrow", "pyarrow", "pyarrow, streaming")
BASELINE = "stdlib csv"
FEATURES = 20
MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------


def generate(path: Path, size_mb: float) -> int:
    """Write about ``size_mb`` MB of CSV (seeded: the same bytes every time); returns rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pc

    rng = np.random.default_rng(0)
    rows = int(size_mb * 1e6 / (FEATURES * 10 + 2))  # about 10 bytes per value, 2 per label
    names = [f"x{j}" for j in range(FEATURES)] + ["label"]
    schema = pa.schema([(n, pa.float64()) for n in names[:-1]] + [("label", pa.int64())])
    options = pc.WriteOptions(quoting_style="none")
    tmp = path.with_suffix(".part")
    with pc.CSVWriter(str(tmp), schema, write_options=options) as writer:
        for start in range(0, rows, 200_000):
            m = min(200_000, rows - start)
            X = np.round(rng.standard_normal((m, FEATURES)) * 10, 5)
            y = rng.integers(0, 5, m)
            writer.write_table(pa.table({**{n: X[:, j] for j, n in enumerate(names[:-1])},
                                         "label": y}, schema=schema))
    tmp.replace(path)
    return rows


# --------------------------------------------------------------------------------------------
# The providers (each returns X, y)
# --------------------------------------------------------------------------------------------


def read(provider: str, path: str):
    import numpy as np

    if provider == "crossent":
        from crossent.datasets import load_file

        data = load_file(path)
        return data.X, data.y
    if provider in ("pandas", "pandas, engine=pyarrow"):
        import pandas as pd

        frame = pd.read_csv(path, engine="pyarrow" if "pyarrow" in provider else "c")
        X = frame.iloc[:, :-1].to_numpy(dtype=np.float64)
        y = frame.iloc[:, -1].to_numpy()
        return X, y
    if provider == "pyarrow":
        import pyarrow.csv as pc

        table = pc.read_csv(path)
        X = np.empty((table.num_rows, table.num_columns - 1), order="F")
        for j in range(table.num_columns - 1):
            X[:, j] = table.column(j).to_numpy()
        return X, table.column(table.num_columns - 1).to_numpy()
    if provider == "pyarrow, streaming":
        import pyarrow.csv as pc

        blocks, labels = [], []
        with pc.open_csv(path, read_options=pc.ReadOptions(block_size=16 * MiB)) as reader:
            for batch in reader:
                k = batch.num_columns - 1
                blocks.append(np.column_stack([batch.column(j).to_numpy() for j in range(k)]))
                labels.append(batch.column(k).to_numpy())
        return np.concatenate(blocks), np.concatenate(labels)
    if provider == BASELINE:
        import csv

        with open(path, newline="") as fh:
            rows = [row for row in csv.reader(fh) if row]
        cells = np.array(rows[1:], dtype=str)
        del rows
        X = np.column_stack([cells[:, j].astype(np.float64) for j in range(FEATURES)])
        return X, cells[:, -1].astype(np.int64)
    raise ValueError(provider)


def worker(provider: str, path: str, repeats: int) -> dict:
    """Memory from the first read in this fresh process (a warm-up read would leave freed
    memory with the allocator, which the next read reuses unseen); time from all reads."""
    import json

    import numpy as np  # noqa: F401

    if provider == "crossent":
        import crossent.datasets  # noqa: F401
    if "pandas" in provider or provider == "crossent":
        import pandas  # noqa: F401
    if "pyarrow" in provider:
        import pyarrow.csv  # noqa: F401
    with open(path, "rb") as fh:  # the page cache, warm for every provider alike
        while fh.read(16 * MiB):
            pass
    times: list[float] = []
    cpu: list[float] = []

    def call():
        start, start_cpu = time.perf_counter(), time.process_time()
        result = read(provider, path)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        return result

    extra, method, (X, y) = h.peak_extra_bytes(call)
    out = {"rows": int(X.shape[0]), "checksum": float(X[:, 0].sum() + y.sum())}
    del X, y
    for _ in range(repeats - 1):
        call()
    out.update(times=times, cpu=cpu, extra_bytes=extra, memory_method=method)
    print(json.dumps(out))
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200,
                        help="size of the generated CSV file in MB (default: 200)")
    parser.add_argument("--repeats", type=int, default=3, help="timed reads per provider")
    parser.add_argument("--baseline", action="store_true",
                        help="also measure crossent's first, stdlib-csv reader (slow, ~10x "
                        "the file size in memory)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS + (BASELINE,),
                        help="measure only these")
    parser.add_argument("--file", type=Path,
                        help="where the generated file goes (default: the temp folder; it is "
                        "reused when it exists)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_csv.csv")
    parser.add_argument("--worker", nargs=3, metavar=("PROVIDER", "PATH", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        provider, path, repeats = args.worker
        worker(provider, path, int(repeats))
        return

    path = args.file or Path(tempfile.gettempdir()) / f"crossent-bench-{args.size_mb:g}MB.csv"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr)
        generate(path, args.size_mb)
    size = os.path.getsize(path)
    providers = args.providers or (PROVIDERS + ((BASELINE,) if args.baseline else ()))
    info = {**h.machine(), **h.versions(("crossent", "numpy", "pandas", "pyarrow")),
            "date": h.now()}
    print(f"{path}: {size / MiB:.0f} MiB, {FEATURES} float columns + an integer label; "
          f"{info['cpu']}, {info['cores']} cores; pandas {info['pandas']}, "
          f"pyarrow {info['pyarrow']}\n")

    results, table = [], []
    checksums = set()
    for provider in providers:
        print(f"  {provider} ...", file=sys.stderr, flush=True)
        r = h.run_worker(Path(__file__), [provider, str(path), str(args.repeats)],
                         env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")})
        if "error" in r:
            table.append([provider, "-", "-", "-", "-", r["error"][:60]])
            results.append({"provider": provider, "error": r["error"], **info})
            continue
        checksums.add(round(r["checksum"], 6))
        seconds, cpu = statistics.median(r["times"]), statistics.median(r["cpu"] or [0.0])
        extra = r["extra_bytes"]
        table.append([provider, f"{seconds:.2f}", f"{cpu:.2f}", f"{size / seconds / 1e6:.0f}",
                      f"{extra / MiB:.0f}", f"{extra / size:.2f}"])
        results.append({"provider": provider, "file_mib": round(size / MiB, 1),
                        "rows": r["rows"], "median_s": round(seconds, 4),
                        "cpu_s": round(cpu, 4), "mb_per_s": round(size / seconds / 1e6, 1),
                        "peak_extra_mib": round(extra / MiB, 1),
                        "extra_per_file_byte": round(extra / size, 3),
                        "memory_method": r["memory_method"], "repeats": args.repeats, **info})
    h.print_table(("provider", "median s", "CPU s", "MB/s", "peak extra MiB", "extra / file"),
                  table, right={1, 2, 3, 4, 5})
    if len(checksums) > 1:
        print("\nWARNING: the providers read different numbers:", sorted(checksums))
    h.write_csv(args.out, results)


if __name__ == "__main__":
    main()
