"""Result tables of the public benchmarks: the per-dimension columns of the paper's Table 2, beside
the published FLUX.1-dev numbers (``bench/suites/reference_numbers.json``, each with its source).

A column's score is the mean over images of the share of that column's questions the image passed
(``Suite.per_question`` columns: passed / asked over all images, as UniGenBench++ and DPG-Bench's
categories count). Failed judgements count as not passed and are reported in ``failures``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .suites import PACKAGED, Suite

REFERENCE_FILE = PACKAGED / "reference_numbers.json"
REFERENCE_ROWS = ("FLUX.1-dev", "FLUX.1-dev + SpatialScore RL")


@lru_cache(maxsize=1)
def reference_numbers() -> dict[str, Any]:
    return json.loads(REFERENCE_FILE.read_text())


def column_scores(suite: Suite, records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per column of ``suite``: the score over ``records`` (None when no record has the column)."""
    out: dict[str, float | None] = {}
    for col in suite.columns:
        parts = [r["dims"][col] for r in records if col in r.get("dims", {})]
        if not parts:
            out[col] = None
        elif col in suite.per_question:
            out[col] = sum(p for p, _ in parts) / sum(n for _, n in parts)
        else:
            out[col] = sum(p / n for p, n in parts) / len(parts)
    return out


def build_table(suite: Suite, records: Sequence[dict[str, Any]], label: str = "this run",
                expected: int | None = None) -> dict[str, Any]:
    """The table as data: ``columns``, ``rows`` (this run, then the reference rows), counts, sources."""
    ref = reference_numbers().get(suite.name, {})
    scores = column_scores(suite, records)
    failures = [r for r in records if r.get("failure")]
    rows = [{"model": label, **scores}]
    for name in REFERENCE_ROWS:
        vals = {c: ref.get(c, {}).get(name) for c in suite.columns}
        if any(v is not None for v in vals.values()):
            rows.append({"model": f"{name} (published)", **vals})
    return {
        "suite": suite.name, "columns": list(suite.columns), "rows": rows,
        "images": len(records), "expected_images": expected, "failures": len(failures),
        "failure_reasons": sorted({r["failure"] for r in failures}),
        "prompts": len({r["id"] for r in records}),
        "sources": {c: ref[c]["source"] for c in suite.columns if c in ref},
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    lines = [f"### {table['suite']}", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in table["rows"]:
        lines.append(f"| {row['model']} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    exp = table.get("expected_images")
    lines += ["", f"images scored: {table['images']}" + (f" of {exp}" if exp is not None else "")
              + f" ({table['prompts']} prompts); judge failures: {table['failures']}"
              + (f" ({'; '.join(table['failure_reasons'][:3])})" if table["failures"] else "")]
    for c, src in table.get("sources", {}).items():
        lines.append(f"- {c}: {src}")
    return "\n".join(lines) + "\n"


def write_table(table: dict[str, Any], out: Path) -> Path:
    """``table.json`` and ``table.md`` in ``out``; returns the markdown path."""
    (out / "table.json").write_text(json.dumps(table, indent=2))
    md = out / "table.md"
    md.write_text(format_markdown(table))
    return md
