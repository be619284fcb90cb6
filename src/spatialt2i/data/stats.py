"""Statistics of a pair dataset, its histogram figures (like the paper's Figure 3) and its card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .schema import SPLITS, check_dataset, iter_rows

STAT_COLUMNS = ["prompt", "n_relations", "n_objects", "n_perturbations", "perturbation_kind",
                "relation_kinds", "verified"]


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "max": int(a.max()), "mean": round(float(a.mean()), 2),
            "median": float(np.median(a))}


def compute_stats(root: str | Path, failures: dict[str, int] | None = None) -> dict[str, Any]:
    """One JSON-able dict: counts per split and histograms of the card's quantities."""
    root = Path(root)
    check_dataset(root)
    rel, words, objs, npert = [], [], [], []
    kinds, rkinds, verified, splits = Counter(), Counter(), Counter(), Counter()
    for split in SPLITS:
        for row in iter_rows(root, split, columns=STAT_COLUMNS):
            splits[split] += 1
            rel.append(row["n_relations"])
            words.append(len(row["prompt"].split()))
            objs.append(row["n_objects"])
            npert.append(row["n_perturbations"])
            kinds[row["perturbation_kind"]] += 1
            rkinds.update(row["relation_kinds"] or [])
            verified[str(row["verified"]).lower()] += 1
    n = sum(splits.values())
    if failures is None:
        failures = {}
        for f in (root / ".build").glob("*.json"):
            for k, v in json.loads(f.read_text()).get("failures", {}).items():
                failures[k] = failures.get(k, 0) + v
    hist = lambda xs: {str(k): v for k, v in sorted(Counter(xs).items())}  # noqa: E731
    return {
        "pairs": n,
        "splits": dict(splits),
        "relations_per_prompt": {**_summary(rel), "hist": hist(rel)},
        "words_per_prompt": {**_summary(words), "hist": hist([10 * (w // 10) for w in words])},
        "objects_per_prompt": {**_summary(objs), "hist": hist(objs)},
        "perturbations_per_pair": {**_summary(npert), "hist": hist(npert)},
        "single_perturbation_share": round(sum(1 for x in npert if x == 1) / n, 4) if n else 0.0,
        "perturbation_kinds": dict(sorted(kinds.items())),
        "relation_kinds": dict(sorted(rkinds.items())),
        "verified": dict(verified),
        "rejected_candidates": dict(sorted(failures.items())),
    }


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first call: about half a second)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_figures(stats: dict[str, Any], out_dir: Path) -> list[str]:
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = [
        ("relations_per_prompt", "Relations per prompt", stats["relations_per_prompt"]["hist"]),
        ("words_per_prompt", "Words per prompt (bins of 10)", stats["words_per_prompt"]["hist"]),
        ("objects_per_prompt", "Objects per prompt", stats["objects_per_prompt"]["hist"]),
        ("perturbation_kinds", "Perturbation kinds", stats["perturbation_kinds"]),
        ("perturbations_per_pair", "Perturbations per pair", stats["perturbations_per_pair"]["hist"]),
        ("relation_kinds", "Relation kinds", stats["relation_kinds"]),
    ]
    names = []
    for key, title, hist in panels:
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        labels, values = list(hist.keys()), list(hist.values())
        ax.bar(range(len(values)), values, color="#4C72B0")
        ax.set_xticks(range(len(values)), labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("pairs" if key != "relation_kinds" else "relations")
        fig.tight_layout()
        fig.savefig(out_dir / f"{key}.png")
        plt.close(fig)
        names.append(f"{key}.png")
    return names


CARD_HEADER = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
task_categories:
- text-to-image
tags:
- spatial-reasoning
- preference
- reward-model
---
"""


def write_card(root: str | Path, failures: dict[str, int] | None = None, meta: dict | None = None) -> dict[str, Any]:
    root = Path(root)
    stats = compute_stats(root, failures)
    figs = write_figures(stats, root / "figures")
    (root / "stats.json").write_text(json.dumps(stats, indent=2))
    r = stats["relations_per_prompt"]
    w = stats["words_per_prompt"]
    lines = [CARD_HEADER, "# Spatial preference pairs", "",
             "Each row pairs a prompt with many spatial relations with two images: `chosen` satisfies every "
             "relation, `rejected` was drawn from a perturbed prompt (`perturbed_prompt`) that changes 1-3 of them. "
             "Built with [spatialt2i](https://pypi.org/project/spatialt2i/) "
             f"(`{json.dumps({k: v for k, v in (meta or {}).items() if k != 'config'})}`).", "",
             "| | |", "|---|---|",
             f"| pairs | {stats['pairs']} ({', '.join(f'{k} {v}' for k, v in stats['splits'].items())}) |",
             f"| relations per prompt | {r.get('min')}-{r.get('max')}, median {r.get('median')}, mean {r.get('mean')} |",
             f"| words per prompt | {w.get('min')}-{w.get('max')}, median {w.get('median')} |",
             f"| single-perturbation pairs | {100 * stats['single_perturbation_share']:.1f} % |",
             f"| perturbation kinds | {', '.join(f'{k} {v}' for k, v in stats['perturbation_kinds'].items())} |",
             f"| candidates rejected by checks | {sum(stats['rejected_candidates'].values())} "
             f"({', '.join(f'{k} {v}' for k, v in stats['rejected_candidates'].items()) or 'none'}) |",
             "", "## Figures", ""]
    lines += [f"![{f[:-4]}](figures/{f})" for f in figs]
    lines += ["", "## Columns", "",
              "`id`, `prompt`, `perturbed_prompt`, `chosen`, `rejected` (images), `perturbations` (list of "
              "{type, before, after}), `perturbation_kind`, `n_perturbations`, `n_objects`, `n_relations`, "
              "`relation_kinds`, `scene` / `perturbed_scene` (JSON scene specs, world only), `seed`, `source`, "
              "`verified` (null until reviewed).", "",
              "Load with `datasets.load_dataset(\"parquet\", data_dir=\"<this folder>/data\")`.", ""]
    (root / "README.md").write_text("\n".join(lines))
    return stats
