"""Run a public benchmark: generate N images per prompt with fixed seeds, judge them, tabulate.

Layout of ``out``::

    run.json                       settings; a rerun must use the same ones (else an error)
    images/<prompt id>/<k>.png     image k of a prompt, seed ``seeds[k]`` (written atomically)
    scores/rank<i>.jsonl           one judged image a line, appended as soon as it is judged
    results.jsonl, table.md/.json  merged by the main process at the end

Resumable: an image already on disk is not generated again, an image already judged is not judged
again (so a killed run loses at most the batch in flight). Sharded: with several processes
(``accelerate launch``), process i takes prompts i, i + n, ... and writes its own score file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ConfigError
from .geneval import Detector
from .judges_public import score_item
from .suites import BenchItem, Suite, load_suite
from .tables import build_table, format_markdown, write_table

log = logging.getLogger(__name__)


def load_generator(path: str | os.PathLike, lora: str | os.PathLike | None, resolution: int,
                   device: Any = None) -> Any:
    """A :class:`~spatialt2i.gen.flux.FluxGenerator` (bf16 on CUDA), with ``lora`` loaded if given."""
    import torch

    from ..gen.flux import FluxGenerator

    cuda = device is not None and str(device).startswith("cuda")
    gen = FluxGenerator.from_pretrained(path, torch_dtype=torch.bfloat16 if cuda else torch.float32,
                                        device=device, height=resolution, width=resolution)
    if lora is not None:
        from ..rl.lora import load_lora_pipeline

        load_lora_pipeline(gen.pipe, lora)
    return gen


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ConfigError(f"--out {out} holds a run with other settings "
                              f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                              f"use another --out or the same settings")
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2))
    os.replace(tmp, path)


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every judged image in ``out/scores/*.jsonl`` (a torn last line from a kill is ignored)."""
    recs = []
    for f in sorted((out / "scores").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: ignoring a torn line (a killed run); it will be judged again", f)
    return recs


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    img.save(tmp)
    os.replace(tmp, path)


def run_suite(
    suite: Suite | str,
    generator_dir: str | os.PathLike | Any,
    lora: str | os.PathLike | None = None,
    judge: Any = None,
    out: str | os.PathLike = "bench-out",
    n_images: int = 4,
    seeds: Sequence[int] | None = None,
    max_prompts: int | None = None,
    *,
    steps: int = 28,
    guidance: float = 3.5,
    resolution: int = 1024,
    batch_size: int = 4,
    detector: Detector | None = None,
    retries: int = 2,
    workers: int = 4,
    tiif_path: str | os.PathLike | None = None,
    dpg_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Generate, judge and tabulate ``suite``; returns the table (None on non-main processes).

    ``generator_dir``: a Flux pipeline folder or hub id (loaded only if an image is missing), or an
    already loaded generator with ``sample``. ``seeds``: one per image index (default 0..N-1).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    if judge is None:
        raise ConfigError("run_suite: no judge given")
    if isinstance(suite, str):
        suite = load_suite(suite, tiif_path=tiif_path, dpg_csv=dpg_csv)
    seeds = list(range(n_images)) if seeds is None else [int(s) for s in seeds]
    if n_images < 1 or len(seeds) != n_images:
        raise ConfigError(f"--n-images {n_images} with {len(seeds)} seed(s): need n_images >= 1 and one seed per image")
    if max_prompts is not None and max_prompts < 1:
        raise ConfigError(f"--max-prompts must be >= 1, got {max_prompts}")
    items = suite.items[:max_prompts]
    if hasattr(judge, "yes_no"):  # a local model: one request at a time
        workers = 1
    state = PartialState()
    out = Path(out)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    loaded = not isinstance(generator_dir, (str, os.PathLike))
    settings = {"suite": suite.name, "source": suite.source,
                "generator": getattr(generator_dir, "name_or_path", "<in-memory>") if loaded else str(generator_dir),
                "lora": None if lora is None else str(lora), "seeds": seeds, "steps": steps,
                "guidance": guidance, "resolution": resolution, "judge": getattr(judge, "name", type(judge).__name__),
                "detector": getattr(detector, "name", None)}
    if state.is_main_process:
        _check_settings(out, settings)
    state.wait_for_everyone()
    if not state.is_main_process:
        _check_settings(out, settings)

    done = {(r["id"], r["k"]) for r in read_records(out)}
    mine = items[state.process_index::state.num_processes]
    todo = [(it, k) for it in mine for k in range(n_images) if (it.id, k) not in done]
    gen = generator_dir if loaded else None
    score_file = out / "scores" / f"rank{state.process_index}.jsonl"
    bar = tqdm(total=len(todo), desc=f"{suite.name} [{state.process_index}]", disable=not progress)
    with score_file.open("a", encoding="utf-8") as sink:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            paths = [out / "images" / it.id / f"{k}.png" for it, k in chunk]
            missing = [i for i, p in enumerate(paths) if not p.is_file()]
            if missing:
                if gen is None:
                    gen = load_generator(generator_dir, lora, resolution, state.device)
                traj = gen.sample([chunk[i][0].prompt for i in missing], [seeds[chunk[i][1]] for i in missing],
                                  steps, dynamics="ode", guidance=guidance, output_type="pil")
                for i, img in zip(missing, traj.images):
                    _save(img, paths[i])

            def judge_one(job: tuple[BenchItem, int, Path]) -> dict[str, Any]:
                it, k, path = job
                with Image.open(path) as im:
                    rec = score_item(suite, it, im.convert("RGB"), judge, detector=detector, retries=retries)
                return {"id": it.id, "k": k, "seed": seeds[k], "prompt": it.prompt, **rec}

            jobs = [(it, k, p) for (it, k), p in zip(chunk, paths)]
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
                for rec in pool.map(judge_one, jobs):
                    sink.write(json.dumps(rec) + "\n")
                    sink.flush()
                    bar.update(1)
    bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return finish(suite, out, items, n_images, settings, progress)


def finish(suite: Suite, out: Path, items: Sequence[BenchItem], n_images: int, settings: dict[str, Any],
           show: bool = True) -> dict[str, Any]:
    """Merge the score files into ``results.jsonl`` and write the table."""
    wanted = {it.id for it in items}
    by_key = {(r["id"], r["k"]): r for r in read_records(out) if r["id"] in wanted and r["k"] < n_images}
    order = {it.id: i for i, it in enumerate(items)}
    records = sorted(by_key.values(), key=lambda r: (order[r["id"]], r["k"]))
    with (out / "results.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    label = Path(settings["generator"]).name + (f" + {Path(settings['lora']).name}" if settings["lora"] else "")
    table = build_table(suite, records, label=label, expected=len(items) * n_images)
    write_table(table, out)
    if show:
        print(format_markdown(table))
    return table
