"""The model file: what ``crossent train --out`` and :func:`crossent.classifier.save_model`
write, and its reader.  NumPy only, so that a file that is not a model is refused before
scikit-learn is even imported.

A model file is an ``.npz`` archive of plain arrays (no pickle):

``coef`` (float, ``(C, d)``, or ``(1, d)`` for two classes), ``intercept`` (float, ``(C,)``
or ``(1,)``), ``classes`` (1-D, numbers or strings, distinct and sorted), ``meta`` (one JSON
string: ``format``, the estimator's ``params``, ``n_iter``, and whatever metadata the writer
added), optionally ``feature_names`` (``d`` distinct strings) and, for a model trained on
standardised features, ``feature_mean`` and ``feature_scale`` (``d`` finite numbers, the
scale positive).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

MODEL_FORMAT = "crossent.SoftmaxRegression/2"
# /1 had no standardisation; /2 may carry feature_mean and feature_scale (and is refused by
# readers of /1, which would otherwise ignore them and predict from unscaled features)
READABLE_FORMATS = ("crossent.SoftmaxRegression/1", MODEL_FORMAT)


class ModelFileError(ValueError):
    """A file that is not a crossent model, described in one line that names it."""


def read_model_file(file: Any) -> tuple[dict[str, np.ndarray], dict]:
    """The checked arrays and metadata of a model file (a path or a binary file object).

    ``meta`` gets ``file`` (the name used in messages), ``feature_names`` (a list or None)
    and ``standardize`` (whether ``feature_mean`` and ``feature_scale`` are there).  Raises
    :class:`ModelFileError` naming the file and the first thing wrong with it.
    """
    from .datasets import DataError, NotAnArchive, read_npz

    name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else "model file"
    if isinstance(file, (str, os.PathLike)) and not os.path.exists(file):
        raise FileNotFoundError(2, "No such file", name)

    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{name} is not a valid crossent model: {what}")

    try:
        arrays = read_npz(file, what=name)
    except NotAnArchive:
        raise ModelFileError(f"{name} is not a crossent model: it is not an .npz archive "
                             "(models are saved by crossent train --out or "
                             "crossent.classifier.save_model)") from None
    except DataError as exc:
        raise bad(str(exc).removeprefix(name + ": ")) from None
    missing = [k for k in ("coef", "intercept", "classes", "meta") if k not in arrays]
    if missing:
        raise ModelFileError(f"{name} is not a crossent model: it lacks "
                             f"{', '.join(missing)}")
    raw_meta = arrays["meta"]
    try:
        if raw_meta.shape != () or raw_meta.dtype.kind != "U":
            raise ValueError
        meta = json.loads(str(raw_meta))
    except ValueError:
        raise ModelFileError(f"{name} is not a crossent model: its metadata is not a JSON "
                             "string") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise ModelFileError(f"{name} is not a crossent model: format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {' or '.join(map(repr, READABLE_FORMATS))}")
    if not isinstance(meta.get("params", {}), dict):
        raise bad("its parameters are not a JSON object")
    coef, intercept, classes = arrays["coef"], arrays["intercept"], arrays["classes"]
    for key, arr in (("coef", coef), ("intercept", intercept)):
        if arr.dtype.kind != "f":
            raise bad(f"{key} must hold floating-point numbers, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise bad(f"{key} holds values that are not finite (NaN or infinity)")
    if classes.ndim != 1 or classes.dtype.kind not in "biufU":
        raise bad(f"classes must be a 1-D array of numbers or strings, got {classes.dtype} of "
                  f"shape {classes.shape}")
    if classes.dtype.kind == "f" and not np.all(np.isfinite(classes)):
        raise bad("classes holds values that are not finite")
    k = len(classes)
    if k < 2 or len(np.unique(classes)) != k or np.any(np.sort(classes) != classes):
        raise bad(f"classes must be at least 2 distinct labels in sorted order, got "
                  f"{classes[:5].tolist()}")
    rows = 1 if k == 2 else k
    if coef.ndim != 2 or coef.shape[0] != rows or coef.shape[1] < 1 \
            or intercept.shape != (rows,):
        raise bad(f"coef {coef.shape} and intercept {intercept.shape} do not fit {k} classes "
                  f"(expected ({rows}, n_features) and ({rows},))")
    d = coef.shape[1]
    names = arrays.get("feature_names")
    if names is not None:
        if names.shape != (d,) or names.dtype.kind != "U":
            raise bad(f"feature_names must be {d} strings, got {names.dtype} of shape "
                      f"{names.shape}")
        if len(set(names.tolist())) != d:
            raise bad("feature_names names a feature twice")
    has_mean, has_scale = "feature_mean" in arrays, "feature_scale" in arrays
    if has_mean != has_scale:
        raise bad("it has one of feature_mean and feature_scale but not the other")
    if has_mean:
        for key in ("feature_mean", "feature_scale"):
            arr = arrays[key]
            if arr.shape != (d,) or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                raise bad(f"{key} must be {d} finite numbers, got {arr.dtype} of shape "
                          f"{arr.shape}")
        if np.any(arrays["feature_scale"] <= 0):
            raise bad("feature_scale must be positive")
    meta.update(file=name, feature_names=None if names is None else names.tolist(),
                standardize=has_mean)
    return arrays, meta
