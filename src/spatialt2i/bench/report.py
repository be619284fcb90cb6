"""A self-contained HTML report (figures inlined as data URIs) and the same figures as PNG files.

The report is assembled from plain data: tables (lists of row dicts), figures (PNG paths) and
metric curves (JSONL rows), so every stage can contribute what it measured.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Table:
    title: str
    rows: list[dict[str, Any]]
    columns: list[str] | None = None
    note: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if v is None:
        return "–"
    return html.escape(str(v))


def _table_html(t: Table) -> str:
    cols = t.columns or list(dict.fromkeys(k for r in t.rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in t.rows)
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _img_html(p: Path) -> str:
    data = base64.b64encode(Path(p).read_bytes()).decode()
    return f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(p.stem)}</figcaption></figure>"


CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.5rem}
img{max-width:100%;image-rendering:pixelated}.note{color:#666;font-size:.9em}h2{border-bottom:2px solid #4C72B0}"""


def write_report(path: str | Path, title: str, sections: Sequence[Section]) -> Path:
    path = Path(path)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        parts += [_table_html(t) for t in s.tables]
        parts += [_img_html(f) for f in s.figures if Path(f).exists()]
        parts.append("</section>")
    parts.append("</body></html>")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(parts))
    tmp.replace(path)
    return path


def plot_curves(rows: list[dict[str, Any]], keys: Sequence[str], out: Path, x: str = "step",
                title: str = "") -> Path | None:
    """Line plots of ``keys`` against ``x`` from metric rows (keys missing from the rows are skipped)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), dpi=100, squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r[x], r[k]) for r in rows if k in r and x in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
