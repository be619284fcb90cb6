"""The pair-dataset builder: plans shards, fills them in parallel, resumes, writes the card.

Shard by shard: each worker makes one shard's rows (``make_rows(task) -> (rows, failures)``),
writes them atomically, and only a shard whose parquet file exists counts as done -- so an
interrupted build re-run with ``resume`` redoes nothing finished, and yields the same dataset as an
uninterrupted one (every row's randomness depends only on the seed and the row's index).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from ..errors import DatasetError
from .schema import shard_name, write_shard

MakeRows = Callable[["ShardTask"], "tuple[list[dict], dict[str, int]]"]


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    total: int
    n_rows: int
    seed: int
    first_id: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.total)


def plan_shards(pairs: int, seed: int, test_fraction: float = 0.1, shard_size: int = 1000) -> list[ShardTask]:
    if pairs < 1:
        raise DatasetError(f"--pairs must be >= 1, got {pairs}")
    n_test = int(round(pairs * test_fraction))
    if test_fraction > 0 and pairs >= 2:
        n_test = max(1, n_test)
    counts = {"train": pairs - n_test, "test": n_test}
    tasks = []
    for split, n in counts.items():
        total = -(-n // shard_size)
        for i in range(total):
            first = i * shard_size
            tasks.append(ShardTask(split, i, total, min(shard_size, n - first), seed, first))
    return tasks


@dataclass
class BuildReport:
    out: Path
    pairs: int
    shards_built: int
    shards_skipped: int
    failures: dict[str, int]
    seconds: float


def _run_task(args: tuple[ShardTask, MakeRows, str]) -> tuple[ShardTask, int, dict[str, int]]:
    task, make_rows, out = args
    rows, failures = make_rows(task)
    root = Path(out)
    (root / ".build").mkdir(exist_ok=True)
    (root / ".build" / f"{task.name}.json").write_text(json.dumps({"rows": len(rows), "failures": failures}))
    write_shard(rows, root / "data" / task.name)
    return task, len(rows), failures


def _preload_plotting() -> threading.Thread:
    """Import the card's plotting stack in the background while the workers build (it would
    otherwise be imported after the last shard, with every worker idle)."""
    from .stats import pyplot

    thread = threading.Thread(target=pyplot, name="preload-pyplot", daemon=True)
    thread.start()
    return thread


def _prepare(out: Path, meta: dict[str, Any], overwrite: bool, resume: bool) -> None:
    manifest = out / "build.json"
    if out.exists() and any(out.iterdir()):
        if resume:
            if not manifest.exists():
                raise DatasetError(f"{out}: cannot resume, no build.json (not a dataset built by spatialt2i)")
            old = json.loads(manifest.read_text())
            if old != meta:
                diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta) if old.get(k) != meta.get(k)}
                raise DatasetError(f"{out}: cannot resume, the build settings differ: {diff}")
            return
        if not overwrite:
            raise DatasetError(f"{out}: already exists and is not empty; pass --resume to finish an "
                               "interrupted build or --overwrite to replace it")
        if not manifest.exists():
            raise DatasetError(f"{out}: refusing to overwrite a folder that is not a spatialt2i dataset")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(meta, indent=2, sort_keys=True))


@contextlib.contextmanager
def exit_on_sigterm():
    """Turn SIGTERM into ``SystemExit`` for the block, so that ``with Pool`` terminates its workers:
    by default SIGTERM ends the parent at once and leaves busy workers running on as orphans,
    racing a resumed build for the same shards. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_build(out: str | Path, tasks: list[ShardTask], make_rows: MakeRows, meta: dict[str, Any], *,
              workers: int = 1, overwrite: bool = False, resume: bool = False, distributed: bool = False,
              progress: bool = True) -> BuildReport:
    """Build every pending shard of ``tasks`` into ``out`` and write the dataset card."""
    out = Path(out)
    t0 = time.time()
    state = None
    if distributed:
        from accelerate import PartialState
        state = PartialState()
    if state is None or state.is_main_process:
        _prepare(out, meta, overwrite, resume)
    if state is not None:
        state.wait_for_everyone()
    pending = [t for t in tasks if not (out / "data" / t.name).exists()]
    skipped = len(tasks) - len(pending)
    mine = pending[state.process_index::state.num_processes] if state is not None else pending
    total_rows = sum(t.n_rows for t in mine)
    bar = tqdm(total=total_rows, unit="pair", disable=not progress or (state is not None and not state.is_main_process),
               file=sys.stderr, desc=f"building {out.name}")
    jobs = [(t, make_rows, str(out)) for t in mine]
    writes_card = state is None or state.is_main_process
    if workers > 1 and len(jobs) > 1:
        # Largest shards first, so the small ones fill in at the end and no worker finishes long
        # before the others (the shards' contents do not depend on the order).
        jobs.sort(key=lambda job: -job[0].n_rows)
        preload = _preload_plotting() if writes_card else None
        with exit_on_sigterm(), mp.get_context("spawn").Pool(workers) as pool:
            for task, n, _ in pool.imap_unordered(_run_task, jobs):
                bar.update(n)
        if preload is not None:
            preload.join()
    else:
        for job in jobs:
            task, n, _ = _run_task(job)
            bar.update(n)
    bar.close()
    if state is not None:
        state.wait_for_everyone()
    failures: dict[str, int] = {}
    for t in tasks:
        f = out / ".build" / f"{t.name}.json"
        if f.exists():
            for k, v in json.loads(f.read_text())["failures"].items():
                failures[k] = failures.get(k, 0) + v
    if writes_card:
        from .stats import write_card
        write_card(out, failures=failures, meta=meta)
    return BuildReport(out, sum(t.n_rows for t in tasks), len(pending), skipped, failures, time.time() - t0)


def build_world(out: str | Path, pairs: int, seed: int = 0, cfg=None, *, workers: int = 1,
                overwrite: bool = False, resume: bool = False, progress: bool = True) -> BuildReport:
    """``spatialt2i data build`` for the built-in world."""
    from functools import partial

    from .world_source import WorldDataConfig, make_world_rows

    cfg = cfg or WorldDataConfig()
    tasks = plan_shards(pairs, seed, cfg.test_fraction, cfg.shard_size)
    meta = {"source": "world", "pairs": pairs, "seed": seed, "config": asdict(cfg)}
    meta = json.loads(json.dumps(meta))  # normalise keys/tuples as JSON would
    return run_build(out, tasks, partial(make_world_rows, cfg=cfg), meta, workers=workers,
                     overwrite=overwrite, resume=resume, progress=progress)
