"""MkDocs hook: benchmark tables rendered from the CSV files the benchmark scripts write.

A page writes a fenced block in the language ``csv-table`` whose body is YAML::

    ```csv-table
    source: benchmarks/results/bench_numpy.csv   # relative to the repository root
    where: {mode: fwd+bwd}                       # optional: keep rows with these values
    labels: {provider: {numpy: plain NumPy}}     # optional: show a value under another name
    bold: {provider: [crossent]}                 # optional: rows to set in bold
    columns:                                     # header -> Python format string over a row
      N x C: "{N} x {C}"
      median ms: "{median_ms:.1f}"
    caption: "Measured on {cpu}, {date:.10}."    # optional: formatted with the first row
    ```

and the hook replaces it, before Markdown is rendered, with a Markdown table of the CSV's
rows.  So the published numbers are always those of the committed results file (which the
benchmark scripts write together with the command, machine and date), and a renamed or
missing column fails the build instead of leaving a stale table.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

FENCE = re.compile(r"^```csv-table[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)")
_NUMERIC_CELL = re.compile(r"^\**[-+]?[\d.,]+(x|%| MiB| ms| s)?\**$")


def _value(text: str) -> Any:
    """A CSV cell as int, float or str ('' stays '')."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _format(template: str, row: dict[str, Any], where: str) -> str:
    fields = _FIELD.findall(template)
    missing = [f for f in fields if f not in row]
    if missing:
        raise PluginError(f"{where}: the CSV has no column {missing[0]!r} "
                          f"(it has: {', '.join(row)})")
    if any(row[f] == "" for f in fields):
        return "–"  # a measurement that was not taken (empty cell)
    # format_map would read "{N} x {C}" fine, but column names may hold '-'
    safe = {re.sub(r"\W", "_", k): v for k, v in row.items()}
    return re.sub(r"\{([^}:!]+)", lambda m: "{" + re.sub(r"\W", "_", m.group(1)),
                  template).format_map(safe)


def render(spec: dict[str, Any], root: Path, where: str) -> str:
    if not isinstance(spec, dict) or "source" not in spec or "columns" not in spec:
        raise PluginError(f"{where}: a csv-table needs 'source' and 'columns'")
    path = root / spec["source"]
    if not path.is_file():
        raise PluginError(f"{where}: {spec['source']} does not exist")
    rows = read_rows(path)
    for column, wanted in (spec.get("where") or {}).items():
        wanted = wanted if isinstance(wanted, list) else [wanted]
        rows = [r for r in rows if r.get(column) in wanted]
    if not rows:
        raise PluginError(f"{where}: no row of {spec['source']} matches {spec.get('where')}")
    labels = spec.get("labels") or {}
    bold = spec.get("bold") or {}
    headers = list(spec["columns"])
    body = []
    for row in rows:
        shown = {k: labels.get(k, {}).get(v, v) for k, v in row.items()}
        cells = [_format(str(spec["columns"][h]), shown, where) for h in headers]
        if any(row.get(col) in (vals if isinstance(vals, list) else [vals])
               for col, vals in bold.items()):
            cells = [f"**{c}**" if c not in ("", "–") else c for c in cells]
        body.append(cells)
    align = ["--:" if all(_NUMERIC_CELL.match(r[i]) or r[i] == "–" for r in body) else "---"
             for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    if spec.get("caption"):
        lines += ["", _format(str(spec["caption"]), rows[0], where)]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    root = Path(config.config_file_path).resolve().parent

    def replace(match: re.Match) -> str:
        where = f"{page.file.src_uri}: csv-table"
        try:
            spec = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            raise PluginError(f"{where}: not valid YAML: {exc}") from exc
        return render(spec, root, where)

    return FENCE.sub(replace, markdown)
