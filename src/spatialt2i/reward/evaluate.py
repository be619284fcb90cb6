"""``spatialt2i reward eval``: pairwise accuracy of SpatialScore and the baselines, in one table.

For every system (the model and each baseline of :mod:`~spatialt2i.reward.judges`) on the same pairs:
overall accuracy; the paper's Table 1 split into 1-perturbation and 2-3-perturbation pairs; accuracy per
perturbation kind (swap / flip / attribute / multi) and per relation-count bucket of the prompt; for
the model also the mean reward gap ``mu_chosen - mu_rejected``; for judges the failed pairs. A pair
counts 1 when the chosen image scores higher, 0.5 on a tie, 0 otherwise (and 0 when a judge failed).

Rows that cannot be used (corrupt image, empty prompt, rejected by review) are skipped and listed
with their id in the report's ``skipped``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence


from ..data.schema import check_dataset, iter_rows, shard_files
from ..errors import ConfigError, DatasetError
from .collate import NEEDED, collate_pairs
from .judges import PairJudge
from .losses import pairwise_correct

log = logging.getLogger(__name__)

META_COLUMNS = ["n_perturbations", "perturbation_kind", "n_relations", "verified"]
RELATION_BUCKETS = ((1, 3, "1-3"), (4, 6, "4-6"), (7, 9, "7-9"), (10, 10 ** 6, "10+"))
MODEL_NAME = "SpatialScore"


def relation_bucket(n: int | None) -> str:
    if n is None:
        return "unknown"
    for lo, hi, name in RELATION_BUCKETS:
        if lo <= n <= hi:
            return name
    return "0"


def _acc(credit: Sequence[float], mask: Sequence[bool]) -> dict[str, float | int]:
    sel = [c for c, m in zip(credit, mask) if m]
    return {"acc": sum(sel) / len(sel) if sel else float("nan"), "n": len(sel)}


def accuracy_table(credit: Sequence[float], n_perturbations: Sequence[int | None], kinds: Sequence[str | None],
                   n_relations: Sequence[int | None]) -> dict[str, Any]:
    """Overall / 1-pert / 2-3-pert accuracy, per kind and per relation bucket, from per-pair credits."""
    if not credit:
        raise DatasetError("evaluation: no usable pairs")
    npert = [p or 1 for p in n_perturbations]
    table: dict[str, Any] = {
        "overall": _acc(credit, [True] * len(credit)),
        "1-pert": _acc(credit, [p == 1 for p in npert]),
        "2-3-pert": _acc(credit, [p >= 2 for p in npert]),
        "by_kind": {k: _acc(credit, [x == k for x in kinds]) for k in sorted({str(k) for k in kinds})},
        "by_relations": {},
    }
    buckets = [relation_bucket(n) for n in n_relations]
    order = [b for _, _, b in RELATION_BUCKETS] + ["0", "unknown"]
    for b in sorted(set(buckets), key=order.index):
        table["by_relations"][b] = _acc(credit, [x == b for x in buckets])
    return table


def _check(data: str | os.PathLike, split: str, baselines: Sequence[PairJudge]) -> list[str]:
    import pyarrow.parquet as pq

    check_dataset(data, NEEDED)
    files = shard_files(data, split)
    if not files:
        raise DatasetError(f"{data}: no '{split}' split (no data/{split}-*.parquet)")
    names = set(pq.read_schema(files[0]).names)
    for b in baselines:
        missing = [c for c in b.needs if c not in names]
        if missing:
            raise DatasetError(f"{files[0]}: the {b.name} baseline needs column(s) {missing}")
    extra = [c for c in META_COLUMNS if c in names] + sorted({c for b in baselines for c in b.needs})
    return list(NEEDED) + extra


def evaluate_dataset(model: str | os.PathLike | Any | None, data: str | os.PathLike, split: str = "test",
                     batch_size: int = 16, limit: int = 0, baselines: Sequence[PairJudge] = (),
                     progress: bool = False, device: str | None = None, keep_credit: bool = False) -> dict[str, Any]:
    """The evaluation report (a JSON-ready dict); ``model`` is a checkpoint folder, a loaded SpatialScore,
    or None for baselines only. ``keep_credit`` adds ``ids`` and ``credit`` (per system, per pair in the
    order of ``ids``) for paired comparisons (:func:`paired_test`)."""
    from .model import SpatialScore

    if model is None and not baselines:
        raise ConfigError("reward eval: nothing to evaluate; give --model and/or --baselines")
    columns = _check(data, split, baselines)
    scorer = None
    if model is not None:
        from .trainer import load_scorer

        scorer = model if isinstance(model, SpatialScore) else load_scorer(model, device)
    names = ([MODEL_NAME] if scorer is not None else []) + [b.name for b in baselines]
    credits: dict[str, list[float]] = {n: [] for n in names}
    failures = {b.name: 0 for b in baselines}
    npert: list[int | None] = []
    kinds: list[str | None] = []
    nrel: list[int | None] = []
    gaps: list[float] = []
    ids: list[str] = []
    skipped: list[dict[str, str]] = []

    def on_skip(rid: str, reason: str) -> None:
        skipped.append({"id": rid, "reason": reason})

    rows_iter = iter_rows(data, split, columns=columns, batch_size=max(64, batch_size))
    bar = _bar(progress)
    seen, chunk = 0, []
    for row in rows_iter:
        if limit and seen >= limit:
            break
        seen += 1
        chunk.append(row)
        if len(chunk) == batch_size:
            _score_chunk(chunk, scorer, baselines, credits, failures, npert, kinds, nrel, gaps, ids, on_skip, batch_size)
            bar.update(len(chunk))
            chunk = []
    if chunk:
        _score_chunk(chunk, scorer, baselines, credits, failures, npert, kinds, nrel, gaps, ids, on_skip, batch_size)
        bar.update(len(chunk))
    bar.close()
    if not npert:
        raise DatasetError(f"{data}: no usable pairs in split '{split}' ({len(skipped)} skipped)")
    systems: dict[str, Any] = {}
    for name in names:
        t = accuracy_table(credits[name], npert, kinds, nrel)
        if name == MODEL_NAME:
            t["mu_gap"] = sum(gaps) / len(gaps)
        else:
            t["failures"] = failures[name]
        systems[name] = t
    model_name = None if model is None else "<in memory>" if isinstance(model, SpatialScore) else str(model)
    report = {"data": str(data), "split": split, "model": model_name, "pairs": len(npert), "skipped": skipped,
              "systems": systems}
    if keep_credit:
        report.update(ids=ids, credit=credits)
    return report


def paired_test(report_a: dict[str, Any], report_b: dict[str, Any], system: str = MODEL_NAME) -> dict[str, Any]:
    """Exact two-sided McNemar test (:func:`spatialt2i.stats.mcnemar_exact`) of ``system`` in two reports
    made with ``keep_credit`` on the same pairs. Only discordant pairs count (one right, the other wrong;
    ties are half right and count as neither). Returns ``only_a``, ``only_b`` and ``p``."""
    from spatialt2i.stats import paired_outcomes

    for name, rep in (("first", report_a), ("second", report_b)):
        if "credit" not in rep or system not in rep["credit"]:
            raise ConfigError(f"paired_test: the {name} report has no per-pair credit for {system!r} "
                              f"(evaluate with keep_credit=True)")
    if report_a["ids"] != report_b["ids"]:
        raise ConfigError("paired_test: the two reports are not on the same pairs (ids differ)")
    return paired_outcomes(report_a["credit"][system], report_b["credit"][system])


def _score_chunk(rows: list[dict[str, Any]], scorer: Any, baselines: Sequence[PairJudge], credits: dict[str, list[float]],
                 failures: dict[str, int], npert: list, kinds: list, nrel: list, gaps: list, ids: list,
                 on_skip: Any, batch_size: int) -> None:
    batch = collate_pairs(rows, on_skip)
    if not len(batch):
        return
    good = set(batch.ids)
    scenes = [r.get("scene") for r in rows if str(r.get("id") or "<no id>") in good]
    if scorer is not None:
        prompts, images = batch.model_inputs()
        s = scorer.score(prompts, images, batch_size=2 * batch_size)
        n = len(batch)
        mc, mr = s["mu"][:n], s["mu"][n:]
        credits[MODEL_NAME].extend(pairwise_correct(mc, mr).tolist())
        gaps.extend((mc - mr).tolist())
    for b in baselines:
        c, f = b.credit(batch, scenes)
        credits[b.name].extend(c)
        failures[b.name] += f
    ids.extend(batch.ids)
    npert.extend(batch.n_perturbations)
    kinds.extend(batch.perturbation_kinds)
    nrel.extend(batch.n_relations)


def _bar(active: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(disable=not active, desc="reward eval", unit="pair", dynamic_ncols=True)


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table: one row per system, one column per subset."""
    systems = report["systems"]
    first = next(iter(systems.values()))
    cols = ["overall", "1-pert", "2-3-pert"] + [f"kind:{k}" for k in first["by_kind"]] + \
        [f"rel:{b}" for b in first["by_relations"]]

    def cell(t: dict[str, Any], col: str) -> dict[str, Any]:
        if col.startswith("kind:"):
            return t["by_kind"][col[5:]]
        if col.startswith("rel:"):
            return t["by_relations"][col[4:]]
        return t[col]

    width = max(14, max(len(n) for n in systems) + 2)
    lines = [f"{report['data']} [{report['split']}]: {report['pairs']} pairs, {len(report['skipped'])} skipped",
             "system".ljust(width) + "".join(c.rjust(15) for c in cols) + "   extra"]
    lines.append(" " * width + "".join(f"n={cell(first, c)['n']}".rjust(15) for c in cols))
    for name, t in systems.items():
        row = name.ljust(width) + "".join(f"{100 * cell(t, c)['acc']:.1f}%".rjust(15) if cell(t, c)["n"] else
                                          "-".rjust(15) for c in cols)
        extra = f"   mu_gap={t['mu_gap']:.3f}" if "mu_gap" in t else f"   failures={t.get('failures', 0)}"
        lines.append(row + extra)
    for s in report["skipped"][:20]:
        lines.append(f"skipped {s['id']}: {s['reason']}")
    return "\n".join(lines)


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    import json

    return json.loads(Path(path).read_text())
