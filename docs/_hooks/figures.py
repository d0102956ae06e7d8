"""MkDocs hook: the explanatory figures, drawn by crossent's own plotting code at build time.

Each ``figures/<name>.png`` of the site is made while the site is built by the function of
:mod:`crossent.plots` that ``crossent plot <name>`` uses, so a figure always shows what the
library computes.  Pages link to them as ordinary images (``../figures/bce.png``); the strict
build fails if a page names a figure that is not made here.

(The learning curves, ``compare.png`` and ``linear_ce_memory.png`` take a training run or a
benchmark to make; they are committed under ``docs/`` with the command that made them.)
"""

from __future__ import annotations

import io
import warnings

from mkdocs.structure.files import File, Files

#: site path -> name of the crossent.plots function that draws it
FIGURES = {
    "figures/bce.png": "binary_cross_entropy_figure",
    "figures/softmax.png": "softmax_figure",
    "figures/losses.png": "loss_gradient_figure",
}

_cache: dict[str, bytes] = {}


def draw(function_name: str) -> bytes:
    """PNG bytes of one figure (cached across rebuilds of ``mkdocs serve``)."""
    if function_name not in _cache:
        from crossent import plots

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # matplotlib's font-cache notices
            fig = getattr(plots, function_name)()
        buffer = io.BytesIO()
        plots.save_png(fig, buffer)
        _cache[function_name] = buffer.getvalue()
    return _cache[function_name]


def on_files(files: Files, config, **kwargs) -> Files:
    for path, function_name in FIGURES.items():
        files.append(File.generated(config, path, content=draw(function_name)))
    return files
