"""Data for the classifier: the bundled digits, and tables read from CSV, NPY and NPZ files.

Every loader returns a :class:`Dataset` whose features are a finite float64 matrix, or raises
:class:`DataError` (a ``ValueError``) with one line that names the file, the column or line,
what was expected and what was found.

File formats
------------
``.csv``
    Comma-separated, UTF-8, with a header line naming the columns.  Every column except the
    target holds numbers (``nan``/``inf`` and empty cells are refused).  The target column
    (default: the last one) may hold integers or any text.  Read by pandas' C parser in
    chunks straight into float64 columns, so reading takes about the memory of the float64
    table plus one chunk (see ``benchmarks/bench_csv.py`` for the measurements that chose
    pandas over pyarrow).
``.npy``
    A 2-D numeric array; the target is a column index (default: the last column).  Columns
    are named ``column 0``, ``column 1``, ...
``.npz``
    An array ``X`` of shape (n, d) and 1-D arrays of length n, of which the target (default
    ``y``) holds the labels.  Feature columns are named ``x0``, ``x1``, ...

Files are opened with ``allow_pickle=False``: object arrays are refused, never unpickled.  The
header of every ``.npy`` file and ``.npz`` member is read first, and an array whose declared
shape needs more memory than is available, or more bytes than the file holds, is refused
before anything is allocated.

Identifier columns
------------------
When training, a column that identifies rows rather than describing them is left out of the
features and reported in :attr:`Dataset.identifiers`: one named ``id``, ``index``,
``Unnamed: 0`` (the index pandas writes), ending in ``_id``/``Id``/``ID`` (``customer_id``,
``PassengerId``), or a column of integers counting the rows (0, 1, 2, ... or 1, 2, 3, ...).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

__all__ = [
    "DataError",
    "NotAnArchive",
    "Dataset",
    "Table",
    "load_digits",
    "load_file",
    "read_table",
    "load_npy",
    "npy_table",
    "read_npz",
    "csv_header",
    "available_memory",
    "check_memory",
    "default_target",
    "resolve_target",
    "identifier_reason",
    "is_identifier_name",
    "id_columns",
    "label_column",
    "check_classes",
    "train_test_split",
]

DIGITS = "digits"
_INTEGER = re.compile(r"^[+-]?\d+$")
# the body of a CSV file is parsed in chunks of about this many bytes of text
_CSV_CHUNK_BYTES = 16 << 20
# and its lines are counted (to size the table before parsing) in blocks of this many bytes
_COUNT_BLOCK_BYTES = 16 << 20
# a float-written target with more distinct values than this (and than 5% of the rows), or
# an integer one with more than this and than half the rows, is called continuous
_FEW_CLASSES = 20

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes in all)


class DataError(ValueError):
    """A data file that cannot be used, described in one line."""


class NotAnArchive(DataError):
    """What :func:`read_npz` raises for a file that is not an ``.npz`` archive at all (not
    a zip file), as opposed to an archive with a bad member."""


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (n, d) float64, labels ``y`` (n,) or None, and where they came from.

    ``identifiers`` are the columns left out of the features because they identify rows
    (see the module doc); ``target_kind`` is how the labels were written (``"int"``,
    ``"float"`` or ``"text"``, see :class:`Table`)."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: tuple[str, ...]
    target_name: str | None
    source: str
    identifiers: tuple[str, ...] = ()
    target_kind: str | None = None

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def subset(self, rows: np.ndarray) -> Dataset:
        return Dataset(self.X[rows], None if self.y is None else self.y[rows],
                       self.feature_names, self.target_name, self.source, self.identifiers,
                       self.target_kind)


@dataclass(frozen=True)
class Table:
    """A file read as named columns: numeric columns as float64, others as text (``str``).

    ``kinds`` says how each column was written: ``"int"`` (whole numbers), ``"float"``
    (numbers with a decimal point or an exponent, or a float array) or ``"text"``.
    A CSV file's numeric columns are views of one column-major ``block`` (column
    ``block_index[name]``), which :func:`load_file` turns into the feature matrix in place.
    """

    columns: dict[str, np.ndarray]  # name -> (n,) float64 or str array
    source: str
    kind: str  # "csv", "npy" or "npz"
    kinds: dict[str, str] = field(default_factory=dict)
    features: tuple[str, ...] | None = None  # the columns that may be features (None: all)
    line_of: Callable[[int], int] | None = None  # CSV: the line number of row i
    block: np.ndarray | None = None
    block_index: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values())))

    def where(self, row: int) -> str:
        """Where row ``row`` (0-based) is in the file: ``line 12`` (CSV) or ``row 11``."""
        if self.line_of is not None:
            return f"line {self.line_of(row)}"
        return f"row {row}"


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None when unknown: Linux's
    ``MemAvailable``, lowered to what a cgroup (container) memory limit leaves."""
    limits = []
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as fh:
            text = fh.read().strip()
        if text != "max":
            with open("/sys/fs/cgroup/memory.current") as fh:
                limits.append(max(0, int(text) - int(fh.read().strip())))
    if not limits:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(limits) if limits else None


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def check_memory(nbytes: int, what: str) -> None:
    """Raise :class:`DataError` if ``what`` needs more than the available memory."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise DataError(f"{what} needs {_size(nbytes)} of memory, but only {_size(available)} "
                        "is available")


# --------------------------------------------------------------------------------------------
# The bundled data
# --------------------------------------------------------------------------------------------


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, 64 pixel features 0..16, 10
    classes), read from the copy that ships inside scikit-learn: no network needed."""
    from ._optional import import_module

    sk_datasets = import_module("sklearn.datasets", "the bundled digits", "sklearn")
    bunch = sk_datasets.load_digits()
    names = tuple(getattr(bunch, "feature_names", None)
                  or [f"pixel_{i // 8}_{i % 8}" for i in range(64)])
    return Dataset(np.asarray(bunch.data, dtype=np.float64), bunch.target.astype(np.int64),
                   names, "digit", DIGITS, target_kind="int")


# --------------------------------------------------------------------------------------------
# Reading files into tables
# --------------------------------------------------------------------------------------------


def read_table(path: str | os.PathLike, *, exclude: Iterable[str] = (),
               text: Iterable[str] = (), progress: ProgressCallback | None = None) -> Table:
    """Read a ``.csv``, ``.npy`` or ``.npz`` file into named columns (see the module doc).

    ``exclude`` names columns not to read at all (a CSV's are skipped by the parser);
    ``text`` names CSV columns to keep as their text even when they hold numbers (ids).
    A name in either that is not a column of the file is a :class:`DataError`.
    ``progress(done, total)`` is called as a CSV file's bytes are read.
    """
    return _read_table(os.fspath(path), tuple(exclude), tuple(text), progress)


def _read_table(path: str, exclude: tuple[str, ...], text: tuple[str, ...],
                progress: ProgressCallback | None,
                header: tuple[list[str], int] | None = None) -> Table:
    """:func:`read_table`; ``header`` is a CSV file's :func:`csv_header`, when the caller
    has read it already."""
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file", path)
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        table = _read_csv(path, exclude, text, progress, header or csv_header(path))
    elif ext == ".npy":
        table = _read_npy(path)
    elif ext == ".npz":
        table = _read_npz(path)
    else:
        raise DataError(f"{path}: unknown file type {ext or '(no extension)'!r}; expected .csv "
                        "(with a header line), .npy or .npz")
    if table.kind != "csv":  # (a CSV's names are checked against its header, before parsing)
        _check_columns(table.names, text, path)
    if table.kind != "csv" and exclude:
        _check_columns(table.names, exclude, path)
        columns = {n: c for n, c in table.columns.items() if n not in exclude}
        if not columns:
            raise DataError(f"{path}: no columns are left after leaving out "
                            f"{', '.join(map(repr, exclude))}")
        features = None if table.features is None else tuple(
            n for n in table.features if n not in exclude)
        table = Table(columns, table.source, table.kind,
                      {n: k for n, k in table.kinds.items() if n in columns}, features)
    return table


def _check_columns(names: list[str], wanted: Iterable[str], path: str) -> None:
    for name in wanted:
        if name not in names:
            known = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            raise DataError(f"column {name!r} is not in {path} (columns: {known})")


# -- CSV ------------------------------------------------------------------------------------


class _Retype(Exception):
    """A column turned out to need reading as text (bool-like, or numbers and text mixed)."""

    def __init__(self, names: set[str]) -> None:
        super().__init__(", ".join(sorted(names)))
        self.names = names


class _CountingReader:
    """A binary file whose ``read`` reports progress; what pandas reads from."""

    def __init__(self, fh: IO[bytes], total: int, progress: ProgressCallback | None) -> None:
        self.fh, self.total, self.progress, self.done = fh, total, progress, 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return data

    def __iter__(self):  # pandas' file-like check
        return iter(self.fh)


def csv_header(path: str) -> tuple[list[str], int]:
    """A CSV file's column names as written (stripped), and the number of lines up to and
    including the header (without reading the rest of the file)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, strict=True)
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    names = [name.strip() for name in row]
                    if names[0] == "" and len(names) > 1:
                        names[0] = "Unnamed: 0"  # the index pandas' to_csv writes, so named
                    return names, reader.line_num
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: is it really a CSV file?") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    raise DataError(f"{path} is empty: expected a header line and rows of data")


def _count_lines(path: str) -> int:
    """Line ends in the file, each ``\\n``, ``\\r\\n`` or lone ``\\r`` (old Mac files; both
    parsers take all three), +1 for a last line without one: at least the number of rows."""
    count, last = 0, b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(_COUNT_BLOCK_BYTES):
            # a \r\n split between two blocks counts once, with the \r
            count += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n") \
                - (last == b"\r" and block[:1] == b"\n")
            last = block[-1:]
    return count + (last not in (b"\n", b"\r"))


def _csv_rows(path: str):
    """``(line number, fields)`` of every non-blank record after the header, the way the
    parser sees them (for error messages; only read when something is wrong)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh, strict=True)
        header_seen = False
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if not header_seen:
                header_seen = True
                continue
            yield reader.line_num, row


def _malformed(path: str, width: int, upto: int | None = None) -> str | None:
    """The first structural problem of the CSV file (a line with the wrong number of fields,
    a broken quote), looking at rows ``0..upto`` (all when None), as a message; else None."""
    try:
        for i, (line, row) in enumerate(_csv_rows(path)):
            if len(row) != width:
                return (f"{path}: line {line} has {len(row)} fields, the header has {width}: "
                        "malformed CSV")
            if upto is not None and i >= upto:
                return None
    except csv.Error as exc:
        return f"{path}: malformed CSV: {exc}"
    return None


def _line_finder(path: str) -> Callable[[int], int]:
    def line_of(row: int) -> int:
        for i, (line, _) in enumerate(_csv_rows(path)):
            if i == row:
                return line
        return -1

    return line_of


def _read_csv(path: str, exclude: tuple[str, ...], text: tuple[str, ...],
              progress: ProgressCallback | None, csv_head: tuple[list[str], int]) -> Table:
    header, header_lines = csv_head
    if all(_is_number(name) for name in header):
        raise DataError(f"{path} has no header line: its first line holds numbers "
                        f"({','.join(header[:4])}{',...' if len(header) > 4 else ''}); add a "
                        "line naming the columns")
    if any(not name for name in header):
        raise DataError(f"{path}: the header line has an empty column name (column "
                        f"{header.index('') + 1})")
    dup = sorted({name for name in header if header.count(name) > 1})
    if dup:
        raise DataError(f"{path}: the header names column {dup[0]!r} more than once")
    _check_columns(header, exclude + text, path)
    keep = [name for name in header if name not in exclude]
    if not keep:
        raise DataError(f"{path}: no columns are left after leaving out "
                        f"{', '.join(map(repr, exclude))}")
    rows_at_most = max(0, _count_lines(path) - header_lines)
    check_memory(rows_at_most * len(keep) * 8, f"reading {path} ({rows_at_most} rows x "
                 f"{len(keep)} columns as float64)")

    as_text = {name for name in text if name in keep}
    while True:
        try:
            columns, kinds, block, index = _parse_csv(path, header, keep, as_text,
                                                      rows_at_most, progress)
            break
        except _Retype as retype:  # read those columns again, as their text
            as_text |= retype.names
    if len(block) == 0:  # as many rows as were read, numeric columns or not
        raise DataError(f"{path} has a header but no rows of data")
    return Table(columns, path, "csv", kinds, line_of=_line_finder(path), block=block,
                 block_index=index)


def _parse_csv(path: str, header: list[str], keep: list[str], as_text: set[str],
               rows_at_most: int, progress: ProgressCallback | None):
    """``(columns, kinds, block, block_index)``: the columns of ``keep`` (those in
    ``as_text`` as text), the numeric ones views of ``block``, column-major (n, numeric)."""
    from ._optional import import_module

    pd = import_module("pandas", "reading CSV files", "cli")
    # pandas 3 parses every number exactly; before it, only its round-trip parser does
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    size = os.path.getsize(path)
    chunk_rows = int(min(1 << 20, max(1024, _CSV_CHUNK_BYTES * rows_at_most // max(size, 1))))
    # every numeric column is a column of one Fortran-order block: filling and later using a
    # column touches only its own pages, and the features can become one matrix in place
    index = {name: j for j, name in enumerate(n for n in keep if n not in as_text)}
    block = np.empty((rows_at_most, len(index)), order="F")
    texts: dict[str, list[np.ndarray]] = {name: [] for name in keep if name in as_text}
    kinds = dict.fromkeys(keep, "text")
    for name in keep:
        if name not in as_text:
            kinds[name] = "int"
    rows = 0
    try:
        with open(path, "rb") as raw, warnings.catch_warnings():
            # pandas only warns when the first data line is longer than the header
            warnings.simplefilter("error", pd.errors.ParserWarning)
            reader = pd.read_csv(
                _CountingReader(raw, size, progress), encoding="utf-8-sig", header=0,
                names=header, usecols=keep, index_col=False, engine="c",
                dtype=dict.fromkeys(as_text, str) or None, keep_default_na=False,
                na_values=[], skip_blank_lines=True, on_bad_lines="error",
                chunksize=chunk_rows, **exact)
            with reader:
                for chunk in reader:
                    m = len(chunk)  # rows + m <= rows_at_most: every row ends a line
                    retype = set()
                    for name in keep:
                        values = chunk[name]
                        if name in as_text:
                            texts[name].append(values.str.strip().to_numpy(dtype=str))
                            continue
                        kind = values.dtype.kind
                        if kind not in "iuf":  # text, or True/False read as bool
                            retype.add(name)
                            continue
                        block[rows:rows + m, index[name]] = values.to_numpy(dtype=np.float64)
                        if kind == "f":
                            kinds[name] = "float"
                    if retype:
                        raise _Retype(retype)
                    rows += m
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: is it really a CSV file?") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, csv.Error, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        message = _malformed(path, len(header))
        raise DataError(message or f"{path}: malformed CSV: {_first_line(exc)}") from None
    if len(block) - rows > rows // 16 + 1024:  # many blank or multi-line rows: give it back
        block = np.asfortranarray(block[:rows])
    block = block[:rows]
    columns: dict[str, np.ndarray] = {}
    for name in keep:
        if name in as_text:
            parts = texts[name]
            columns[name] = np.concatenate(parts) if parts else np.array([], dtype=str)
        else:
            columns[name] = block[:, index[name]]
    # pandas fills the missing fields of a short line with empty cells: look for such a line
    # whenever there are empty cells (only then, as it costs a slower pass over the file)
    if any(name in as_text and np.any(columns[name] == "") for name in keep):
        message = _malformed(path, len(header))
        if message:
            raise DataError(message)
    return columns, kinds, block, index


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- NPY and NPZ ----------------------------------------------------------------------------


def _npy_header(fh: IO[bytes], what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header length)`` of the .npy stream ``fh``, without its data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:  # 3.0 (UTF-8 field names) has no public reader
            shape, _, dtype = fmt._read_array_header(fh, version)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, AttributeError) as exc:
        raise DataError(f"{what} is not a NumPy array file: {_first_line(exc)}") from None
    return tuple(shape), dtype, fh.tell()


def _check_array(what: str, shape: tuple[int, ...], dtype: np.dtype, stored: int | None,
                 pickled_hint: str) -> int:
    """Refuse what must not be loaded; returns the array's bytes."""
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects (pickled), which crossent does not load; "
                        f"{pickled_hint}")
    nbytes = math.prod(shape) * dtype.itemsize
    if stored is not None and nbytes > stored:
        raise DataError(f"{what} declares an array of shape {shape} ({_size(nbytes)}) but holds "
                        f"only {_size(stored)} of data: the file is truncated or corrupt")
    check_memory(nbytes, f"{what} (an array of shape {shape}, {dtype})")
    return nbytes


def load_npy(path: str) -> Any:
    """``np.load`` of an ``.npy`` file without pickle, with one-line errors; the header is
    checked (size, memory, dtype) before the array is allocated."""
    if not os.path.exists(path):  # worded as read_table and read_npz word it
        raise FileNotFoundError(2, "No such file", path)
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise DataError(f"{path} is not a NumPy file (no .npy header); save it with "
                            "numpy.save")
        fh.seek(0)
        shape, dtype, offset = _npy_header(fh, path)
    _check_array(path, shape, dtype, os.path.getsize(path) - offset,
                 "save plain numeric arrays")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a NumPy file: {_first_line(exc)}") from None


def read_npz(file: str | os.PathLike | IO[bytes], what: str | None = None
             ) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive (a path or a binary file object), without pickle.

    Each member's header is read first: object arrays, arrays that need more memory than is
    available (together) and arrays that claim more bytes than the member holds are refused
    before anything is allocated.  ``what`` names the file in errors (default: its path).
    A file that is not a zip archive raises :class:`NotAnArchive`, any other problem
    :class:`DataError`.
    """
    name = what or (os.fspath(file) if isinstance(file, (str, os.PathLike)) else "the file")
    if isinstance(file, (str, os.PathLike)) and not os.path.exists(file):
        raise FileNotFoundError(2, "No such file", os.fspath(file))
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise NotAnArchive(f"{name} is not a NumPy .npz archive (not a zip file)") from None
    arrays = {}
    with archive:
        total = 0
        infos = [i for i in archive.infolist() if not i.is_dir()]
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            member = f"{name}: array {key!r}"
            try:
                with archive.open(info) as fh:
                    shape, dtype, offset = _npy_header(fh, member)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError,
                    NotImplementedError) as exc:
                raise DataError(f"{member} cannot be read: {_first_line(exc)}") from None
            total += _check_array(member, shape, dtype, info.file_size - offset,
                                  "save plain numeric or string arrays")
        check_memory(total, f"{name} (all its arrays)")
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                with archive.open(info) as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
                raise DataError(f"{name}: array {key!r} cannot be read: "
                                f"{_first_line(exc)}") from None
    return arrays


def _kind_of(arr: np.ndarray) -> str:
    return {"b": "int", "i": "int", "u": "int", "f": "float"}.get(arr.dtype.kind, "text")


def _read_npy(path: str) -> Table:
    return npy_table(load_npy(path), path)


def npy_table(arr: Any, source: str) -> Table:
    """The table of an ``.npy`` file's array ``arr`` (read by :func:`load_npy` from
    ``source``): a non-empty 2-D numeric array, whose columns are named ``column 0``,
    ``column 1``, ..."""
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise DataError(f"{source}: expected a 2-D array (rows x columns), got shape "
                        f"{getattr(arr, 'shape', None)}")
    if arr.dtype.kind not in "biuf" or arr.shape[0] == 0:
        raise DataError(f"{source}: expected a non-empty numeric array, got {arr.dtype} "
                        f"of shape {arr.shape}")
    values = arr.astype(np.float64)
    names = [f"column {j}" for j in range(arr.shape[1])]
    return Table({n: values[:, j] for j, n in enumerate(names)}, source, "npy",
                 dict.fromkeys(names, _kind_of(arr)))


def _read_npz(path: str) -> Table:
    arrays = read_npz(path)
    if "X" not in arrays:
        raise DataError(f"{path}: expected an array named 'X' (the features), found "
                        f"{', '.join(sorted(arrays)) or 'no arrays'}")
    X = arrays.pop("X")
    if X.ndim != 2 or X.dtype.kind not in "biuf" or X.shape[0] == 0:
        raise DataError(f"{path}: 'X' must be a non-empty 2-D numeric array, got {X.dtype} of "
                        f"shape {X.shape}")
    kinds = dict.fromkeys((f"x{j}" for j in range(X.shape[1])), _kind_of(X))
    X = X.astype(np.float64)
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    for key, arr in arrays.items():
        if arr.ndim == 2 and arr.shape == (X.shape[0], 1):
            arr = arr[:, 0]
        if arr.ndim == 1 and len(arr) == X.shape[0] and arr.dtype.kind in "biufU":
            columns[key] = arr.astype(np.float64) if arr.dtype.kind in "biuf" else arr
            kinds[key] = _kind_of(arr)
    return Table(columns, path, "npz", kinds, features=tuple(f"x{j}" for j in range(X.shape[1])))


# --------------------------------------------------------------------------------------------
# Tables to datasets
# --------------------------------------------------------------------------------------------


def default_target(table: Table) -> str:
    """The label column when none is named: ``y`` in an .npz, else the last column."""
    if table.kind == "npz":
        return "y"
    return table.names[-1]


def resolve_target(table: Table, target: str | None) -> str:
    """The name of the column ``target`` means (a name, or for .npy a column index)."""
    if target is None:
        name = default_target(table)
    elif table.kind == "npy" and _INTEGER.match(str(target)):
        index = int(target)
        width = len(table.names)
        if not -width <= index < width:
            raise DataError(f"--target {target}: {table.source} has columns 0..{width - 1}")
        name = table.names[index]
    else:
        name = str(target)
    if name not in table.columns:
        known = ", ".join(repr(n) for n in table.names[:8])
        more = ", ..." if len(table.names) > 8 else ""
        hint = "a column index" if table.kind == "npy" else "a column name"
        raise DataError(f"target column {name!r} is not in {table.source} (expected {hint}; "
                        f"columns: {known}{more})")
    return name


_ID_NAME = re.compile(r"^(id|index|idx|unnamed: \d+)$|[_\s.-]id$", re.IGNORECASE)
_ID_CAMEL = re.compile(r"[a-z0-9](Id|ID)$")


def is_identifier_name(name: str) -> bool:
    """Whether a column called ``name`` identifies rows: ``id``, ``index``, ``Unnamed: 0``,
    ``customer_id``, ``PassengerId``, ``userID``, ...; never a ``prob_<class>`` column (a
    probability, as ``crossent predict`` writes, even of a class called ``id``)."""
    if name.startswith("prob_"):
        return False
    return bool(_ID_NAME.search(name) or _ID_CAMEL.search(name))


def id_columns(names: Iterable[str]) -> list[str]:
    """The columns of ``names`` (a header) that identify rows by their name, in order (see
    :func:`is_identifier_name`): where ``crossent predict`` and ``crossent score`` look for
    the column that matches rows."""
    return [name for name in names if is_identifier_name(name)]


def identifier_reason(table: Table, name: str) -> str | None:
    """Why column ``name`` looks like a row identifier rather than a feature (its name, see
    :func:`is_identifier_name`, or integers counting the rows), or None."""
    if is_identifier_name(name):
        return "its name marks an identifier"
    col = table.columns[name]
    if table.kinds.get(name) == "int" and col.dtype.kind == "f" and len(col) > 2:
        steps = np.diff(col)
        if np.all(steps == 1) and col[0] in (0.0, 1.0):
            return "it counts the rows"
    return None


def load_file(source: str | os.PathLike | Table, target: str | None = None, *,
              feature_names: tuple[str, ...] | None = None,
              require_target: bool = True, drop: Iterable[str] = (),
              progress: ProgressCallback | None = None, consume: bool = False) -> Dataset:
    """Load a data file (or a :class:`Table` already read) as a :class:`Dataset`.

    ``target`` names the label column; when it is None the default column is used (see
    :func:`default_target`), or, with ``require_target=False``, no column: the rows are
    unlabelled (for prediction).  With ``feature_names`` (a model's), those columns are the
    features, in that order, and other columns are ignored; if the file lacks some of them,
    every column but the target is a feature, by position.  Without ``feature_names``,
    every column but the target, the ``drop``-ped ones and identifier columns (see the
    module doc; listed in :attr:`Dataset.identifiers`) is a feature.

    A file read here becomes the feature matrix in place (a CSV file's numeric block is not
    copied); so does a :class:`Table` passed with ``consume=True``, whose numeric columns
    are then gone (its text columns stay).
    """
    drop = tuple(drop)
    owned = not isinstance(source, Table)
    if owned:
        path = os.fspath(source)
        # a CSV file's dropped columns are never parsed; the others' are dropped once read
        exclude = drop if path.lower().endswith(".csv") else ()
        header = None
        if exclude and (target is not None or require_target) and os.path.isfile(path):
            header = csv_header(path)  # (once: the reader takes it)
            wanted = str(target) if target is not None else header[0][-1]
            if wanted in drop:
                raise DataError(_cannot_drop(wanted, target is None))
        table = _read_table(path, exclude, (), progress, header)
        if not exclude:
            _check_columns(table.names, drop, table.source)
    else:
        table = source
        _check_columns(table.names, drop, table.source)
    if target is None and not require_target:
        target_name = None
    else:
        target_name = resolve_target(table, target)
        if target_name in drop:
            raise DataError(_cannot_drop(target_name, target is None))
    identifiers: tuple[str, ...] = ()
    if feature_names is not None and all(n in table.columns for n in feature_names):
        names = tuple(feature_names)
    else:
        names = tuple(n for n in (table.features or table.names)
                      if n != target_name and n not in drop)
        if feature_names is None:
            identifiers = tuple(n for n in names if identifier_reason(table, n))
            names = tuple(n for n in names if n not in identifiers)
        elif len(names) != len(feature_names):
            missing = [n for n in feature_names if n not in table.columns]
            raise DataError(
                f"{table.source} does not match the model: the model has "
                f"{len(feature_names)} features, the file has {len(names)} feature columns"
                + (f" and lacks {', '.join(repr(n) for n in missing[:3])}"
                   f"{', ...' if len(missing) > 3 else ''}" if missing else "")
            )
    if not names:
        left = f" besides the target {target_name!r}" if target_name else ""
        ids = (f" (left out as identifiers: {', '.join(map(repr, identifiers))})"
               if identifiers else "")
        raise DataError(f"{table.source} has no feature columns{left}{ids}")
    for name in names:  # a text feature is likelier the real target: say so first
        _check_numeric(table, name)
    y = None if target_name is None else label_column(table, target_name)
    X = _feature_matrix(table, names, consume=owned or consume)
    return Dataset(X, y, names, target_name, table.source, identifiers,
                   None if target_name is None else table.kinds.get(target_name))


def _cannot_drop(name: str, by_default: bool) -> str:
    return (f"the target column {name!r} cannot be left out"
            + ("; it is the target by default (the last column): name the target with --target"
               if by_default else ""))


def _feature_matrix(table: Table, names: tuple[str, ...], consume: bool) -> np.ndarray:
    """The (n, d) float64 matrix of the columns ``names``, checked column by column.

    With ``consume`` (the caller gives the table up) a CSV file's features become a view
    of its numeric block, moved into place there: no second copy of the data.  The block's
    columns are then taken out of ``table.columns`` (their views no longer hold what they
    name); its text columns stay.
    """
    positions = [table.block_index.get(name) for name in names]
    if consume and table.block is not None and None not in positions \
            and positions == sorted(set(positions)):
        block = table.block
        for j, source in enumerate(positions):  # ascending: never overwrites a column unread
            if source != j:
                block[:, j] = block[:, source]
        for name in table.block_index:
            table.columns.pop(name, None)
        return block[:, :len(names)]
    check_memory(table.n_rows * len(names) * 8, f"the feature matrix of {table.source}")
    X = np.empty((table.n_rows, len(names)), order="F")
    for j, name in enumerate(names):
        X[:, j] = table.columns[name]
    return X


def _cell_problem(table: Table, row: int) -> None:
    """A CSV's short or long line explains an odd cell better than the cell does."""
    if table.kind == "csv":
        message = _malformed(table.source, len(csv_header(table.source)[0]), upto=row)
        if message:
            raise DataError(message)


def _check_numeric(table: Table, name: str) -> None:
    col = table.columns[name]
    if col.dtype.kind != "f":
        parsed = None
        with contextlib.suppress(ValueError):
            parsed = col.astype(np.float64)  # 'nan', 'inf' written as text
        if parsed is None:
            i = next(i for i, cell in enumerate(col) if not _is_number(cell))
            _cell_problem(table, i)
            found = repr(str(col[i])) if col[i].strip() else "an empty cell"
            raise DataError(f"{table.source}: feature column {name!r} must hold numbers, got "
                            f"{found} on {table.where(i)} (is it the target? use "
                            f"--target {name})")
        col = parsed
    bad = ~np.isfinite(col)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{table.source}: feature column {name!r} holds {col[i]} on "
                        f"{table.where(i)}; features must be finite numbers (remove or fill "
                        "missing values)")


def label_column(table: Table, name: str) -> np.ndarray:
    """The class labels in column ``name``: int64 when numeric (they must be whole numbers),
    else the text, non-empty."""
    col = table.columns[name]
    if col.dtype.kind == "f":
        bad = ~np.isfinite(col) | (col != np.round(col))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            _cell_problem(table, i)
            hint = ("; it looks continuous (a regression target?), and crossent trains "
                    "classifiers" if np.isfinite(col[i]) else "")
            raise DataError(f"{table.source}: target column {name!r} must hold class labels "
                            f"(integers or text), got {col[i]} on {table.where(i)}{hint}")
        return col.astype(np.int64)
    empty = np.char.str_len(np.char.strip(col.astype(str))) == 0
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        _cell_problem(table, i)
        raise DataError(f"{table.source}: target column {name!r} has an empty label on "
                        f"{table.where(i)}")
    return col


def check_classes(dataset: Dataset) -> np.ndarray:
    """The sorted class labels of data to train on; raises :class:`DataError` when there are
    fewer than 2, or when numeric labels look continuous: more than 20 distinct values and
    more than 5% of the rows (written as decimals) or half the rows (whole numbers)."""
    if dataset.y is None:
        raise DataError(f"{dataset.source} has no labels")
    classes = np.unique(dataset.y)
    if len(classes) < 2:
        raise DataError(f"the target column {dataset.target_name!r} of {dataset.source} holds "
                        f"only one class ({classes[0]}); a classifier needs at least 2")
    n, kind = len(dataset.y), dataset.target_kind
    if kind in ("int", "float") and len(classes) > max(_FEW_CLASSES,
                                                        n / 20 if kind == "float" else n / 2):
        written = "numbers written as decimals" if kind == "float" else "whole numbers"
        examples = ", ".join((f"{v:.1f}" if kind == "float" else f"{v}")
                             for v in dataset.y[:3].tolist())
        raise DataError(f"the target column {dataset.target_name!r} of {dataset.source} looks "
                        f"continuous: {len(classes)} distinct {written} in {n} rows "
                        f"({examples}, ...); crossent trains classifiers, which need a few "
                        "classes (integers or text) with several rows each")
    return classes


def train_test_split(dataset: Dataset, test_size: float, seed: int
                     ) -> tuple[Dataset, Dataset | None]:
    """Shuffle and split as ``sklearn.model_selection.train_test_split(test_size, seed)``
    (so digits with 0.2 and seed 0 gives scikit-learn's 1437/360 split)."""
    if test_size == 0:
        return dataset, None
    from ._optional import import_module

    sk_split = import_module("sklearn.model_selection", "splitting the data",
                             "sklearn").train_test_split
    n = dataset.n_samples
    n_test = math.ceil(test_size * n)
    if n_test < 1 or n - n_test < 2:
        raise DataError(f"--test-size {test_size} leaves {n - n_test} training and {n_test} "
                        f"test rows of {n}; need at least 2 training rows and 1 test row")
    train_rows, test_rows = sk_split(np.arange(n), test_size=test_size, random_state=seed)
    return dataset.subset(train_rows), dataset.subset(test_rows)
