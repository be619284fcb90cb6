"""The demo's report: dataset statistics, reward accuracy beside baselines, RL curves, before/after
images and the in-domain table, from the files the demo's stages wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .indomain import describe_change
from .report import Section, Table, plot_curves, read_jsonl, write_report


def _reward_rows(ev: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    main, kinds = [], []
    for name, t in ev["systems"].items():
        main.append({"system": name, "overall": t["overall"]["acc"], "1-pert": t["1-pert"]["acc"],
                     "2-3-pert": t["2-3-pert"]["acc"], "pairs": t["overall"]["n"],
                     "mean μ gap": t.get("mu_gap")})
        kinds.append({"system": name, **{k: v["acc"] for k, v in t["by_kind"].items()}})
    return main, kinds


def build_demo_report(out: str | Path) -> Path:
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    sections = []

    stats = json.loads((out / "dataset" / "stats.json").read_text())
    r = stats["relations_per_prompt"]
    sections.append(Section(
        "1. Pair dataset",
        f"{stats['pairs']} oracle-verified pairs ({stats['splits']}); relations per prompt {r['min']}-{r['max']} "
        f"(median {r['median']}); {100 * stats['single_perturbation_share']:.0f} % single-perturbation pairs.",
        tables=[Table("Perturbation kinds", [stats["perturbation_kinds"]])],
        figures=sorted((out / "dataset" / "figures").glob("*.png")) + [figs / "pairs.png"]))

    ev = json.loads((out / "reward" / "eval.json").read_text())
    main, kinds = _reward_rows(ev)
    curve = plot_curves(read_jsonl(out / "reward" / "metrics.jsonl"), ["loss", "eval/acc", "eval/acc_1"],
                        figs / "reward_curves.png")
    sections.append(Section(
        "2. SpatialScore (reward model)",
        f"Pairwise accuracy on {ev['pairs']} held-out test pairs: SpatialScore beside a random judge and the "
        "world oracle (the upper bound). Paper (Table 1): SpatialScore 95.8 % overall.",
        tables=[Table("Accuracy (paper's Table 1 split)", main), Table("Accuracy per perturbation kind", kinds)],
        figures=[curve] if curve else []))

    rows = read_jsonl(out / "rl" / "metrics.jsonl")
    x = "iteration" if rows and "iteration" in rows[0] else "step"
    curve = plot_curves(rows, ["reward_mean", "reward_std", "kept_reward_mean", "clip_frac", "approx_kl"],
                        figs / "rl_curves.png", x=x)
    evals = read_jsonl(out / "rl" / "eval.jsonl")
    ecurve = plot_curves(evals, ["all_correct", "presence", "mean_reward"], figs / "rl_eval_curves.png",
                         x="iteration" if evals and "iteration" in evals[0] else "step")
    sections.append(Section("3. GRPO with top-k filtering", "Training curves (SpatialScore reward; kept = top-k "
                            "and bottom-k of each group).", figures=[p for p in (curve, ecurve) if p]))

    ind = json.loads((out / "eval" / "indomain.json").read_text())
    table = [{"generator": "base" if k == "base" else "after RL", "mean SpatialScore": v["mean_reward"],
              "oracle all-correct": v["all_correct"], "relation accuracy": v["relation_accuracy"],
              "object presence": v["presence"], "prompts": v["n_prompts"]} for k, v in ind.items() if k != "change"]
    change = ind.get("change")
    prompts = (out / "eval" / "grid_prompts.txt").read_text().splitlines() if (out / "eval" / "grid_prompts.txt").exists() else []
    sections.append(Section(
        "4. In-domain benchmark (held-out prompts, 2-4 objects, 1-3 relations)",
        "Same prompts and seeds before and after RL (grid: top row base, bottom row after RL). "
        + (f"Oracle {describe_change(change)}. " if change else "")
        + "Prompts, left to right: " + " | ".join(f"{i + 1}. {p}" for i, p in enumerate(prompts)),
        tables=[Table("Before → after (paper's Table 2, first column)", table)],
        figures=[out / "eval" / "grid.png"]))

    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    if timings:
        sections.append(Section("Wall time per stage", tables=[Table("Seconds", [
            {"stage": k, "seconds": v.get("seconds")} for k, v in timings.items()])]))
    return write_report(out / "report.html", "spatialt2i — end-to-end world run", sections)
