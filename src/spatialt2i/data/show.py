"""Draw a grid of pairs (chosen | rejected) with their prompts, for a person to look at."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .schema import decode_image, iter_rows


def show_pairs(root: str | Path, out: str | Path, n: int = 16, split: str | None = None, cols: int = 2) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for row in iter_rows(root, split, columns=["id", "prompt", "perturbed_prompt", "chosen", "rejected",
                                                "perturbation_kind", "perturbations"]):
        rows.append(row)
        if len(rows) >= n:
            break
    nrows = -(-len(rows) // cols)
    fig = plt.figure(figsize=(7.5 * cols, 3.6 * nrows), dpi=90)
    for k, row in enumerate(rows):
        r, c = divmod(k, cols)
        for side, key in enumerate(("chosen", "rejected")):
            ax = fig.add_axes([(c * 3 + side) / (3 * cols) + 0.005, 1 - (r + 1) / nrows + 0.02,
                               1 / (3 * cols) - 0.01, 1 / nrows - 0.06])
            ax.imshow(decode_image(row[key], f"{row['id']}.{key}"), interpolation="nearest")
            ax.set_title(f"{key}" + (f" ({row['perturbation_kind']})" if side else f"  {row['id']}"), fontsize=8)
            ax.axis("off")
        tx = fig.add_axes([(c * 3 + 2) / (3 * cols), 1 - (r + 1) / nrows + 0.02, 1 / (3 * cols), 1 / nrows - 0.04])
        tx.axis("off")
        changed = "; ".join(f"{p['before']} -> {p['after']}" for p in row["perturbations"])
        body = textwrap.fill(row["prompt"], 46) + "\n\nchanged: " + textwrap.fill(changed, 46)
        tx.text(0, 1, body, fontsize=6.5, va="top", family="DejaVu Sans")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
