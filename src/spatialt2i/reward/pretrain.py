"""World pretraining of the tiny Qwen2.5-VL reward backbone (``spatialt2i world pretrain-vlm``).

The paper fine-tunes a *pretrained* VLM into SpatialScore; the world's backbone gets its
pretraining here, on freshly rendered scenes, with dense objectives (all teacher-forced, one
forward pass per batch):

* **statements** -- the image, then a prompt-like list of 1-8 relation clauses worded exactly like
  the world's prompts (``world.text`` templates, "a small red circle" / "the red circle" mentions,
  the same joins and openers, sometimes after the reward instruction). Some clauses are false:
  a true relation flipped (left <-> right, corner to corner, ...) and checked false beyond doubt, or
  a mention that names a colour+shape the image does not have (text-side colour swaps, like the
  ``attribute`` perturbation). Targets:

  - *clause truth* at the clause's last token (a linear probe, training only);
  - *gather* at each object mention (its shape word): the named object's x cell, y cell (8 each),
    size and whether it is in the image at all -- from the middle layer and from the last layer.
    This supervises the step the earlier trials could not learn ("gather each named object's
    position into the text by content"); coordinates are only targets, never inputs;
  - language modelling of the whole text when every clause is true (a caption).

* **VQA** -- 1-4 chat turns "<clause> ?" -> "yes"/"no" on one image (LM loss on the answer, plus
  the clause-truth probe at the clause's last token).

Optional objectives (the shipped presets turn them on; all off by default):

* ``w_hint`` -- *attention hints* (``reward/attn_hints.py``): chosen heads are told where to look --
  a shape word at its colour word, then at its object's visual tokens; a clause's last token (and
  the token that predicts a VQA answer) at the shape words of the relation's objects and, evenly,
  at its relation words. This is the step the earlier trials never formed by themselves.
* ``w_cmp`` -- at the same query tokens, a relation-agnostic comparison: does the first object lie
  before, level with or after the second along x and along y.
* ``w_itm`` -- statements end with the ``<reward>`` token, where a probe predicts whether every
  clause is true (image-text matching at the position the reward model reads).
* ``w_occlusion`` -- in front of / behind (``reward/occlusion.py``): per visual token, which colours
  are partly hidden there and which hide them (at the language model's input), and per mention,
  whether the named object is hidden by / hides another (last layer). With ``stem_channels`` the
  visual tokens also get a convolutional pixel stem (``reward/posfeat.py``); ``new_lr_mult`` speeds
  up the stem and these probes, which start from scratch.

Which relations are asked: ``group_weights`` re-weights the relation groups (axis, diagonal,
placement, depth, size, between); in front of / behind exist only where objects overlap, so
``p_overlap`` draws that share of full-world scenes from layouts with an overlap. Depth between two
objects of one colour is never asked (the pixels cannot show it).

Curriculum: during the first ``curriculum`` share of the run, most samples are easy -- 2-3 objects,
left/right/above/below only, canonical wording -- then the full world distribution, with
``p_easy_end`` of easy samples kept. For the first ``canonical`` share, easy clauses say only
"left of" / "above" and false ones swap the two objects, so truth is the plain comparison before
the wording's direction has to be learned.

Vision: the tiny model needs centred, normalised visual tokens with absolute (row, col) features
(``reward/posfeat.py``), an optional part that the saved folder carries and the full-scale path
never uses. The probes are not part of the saved model.

Metrics on held-out scenes every ``eval_every`` minutes: VQA yes/no accuracy (LM argmax over
yes/no; full distribution, easy, and in front of / behind only), clause-truth probe accuracy, gather x/y accuracy, and the
zero-shot pair accuracy (``reward/zeroshot.py``) on a pair dataset's test split when one is given.
Training resumes from ``OUT/_train/state.pt`` after a kill (``--resume``). ``init_from`` continues a
saved backbone (a folder of this module's or ``asset:NAME``) under a new schedule: its weights and
position features, fresh probes and optimiser; its size wins over ``size`` / ``text_layers``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import posfeat
from .pretrain_batch import answer_ids, collate
from .pretrain_data import WorldSampler, group_weights_of
from .pretrain_eval import evaluate, make_eval_sets
from .pretrain_losses import Probes, forward_losses

STATE_DIR = "_train"


@dataclass
class PretrainConfig:
    size: str = "small"
    text_layers: int = 0             # > 0: override the size's number of text layers
    minutes: float = 45.0            # training time (evaluation excluded)
    steps: int = 0                   # > 0: a fixed number of steps (the schedule spans them; minutes only caps)
    batch: int = 24                  # sequences per step
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    p_list_start: float = 0.6        # share of object-list batches at the start (decays over the curriculum)
    p_list_end: float = 0.1          # ... and after it
    p_vqa: float = 0.4               # share of VQA batches among the rest (the others: statements)
    max_questions: int = 4
    max_clauses: int = 8
    p_false: float = 0.4             # chance that a clause is made false
    p_name_swap: float = 0.15        # chance that a sequence's text swaps two objects' colours
    p_instruction: float = 0.15      # statements preceded by the reward instruction
    colour_marks: bool = True        # gather targets on the colour word too, not only the shape word
    p_caption_lm: float = 1.0        # chance that a statements sequence with every clause true gets an LM loss
    curriculum: float = 0.25         # share of the run with mostly easy samples (decays to p_easy_end)
    coord_scale: float = 0.0         # fixed coordinate code on the visual tokens (reward/posfeat.py)
    canonical: float = 0.0           # share of the run over which easy clauses move from canonical wording to all
    p_easy_end: float = 0.0          # share of easy samples kept after the curriculum
    pool: int = 1500                 # layouts kept; each is re-used under flips/transposes/new names
    pool_refresh: int = 2            # new layouts per step
    w_truth: float = 1.0
    w_vqa: float = 1.0
    w_mention: float = 1.0
    w_mention_mid: float = 0.5
    w_lm: float = 0.1
    w_cmp: float = 0.0               # relation-agnostic comparison of a clause's first two objects
    w_itm: float = 0.0               # image-text matching at the <reward> token after statements
    w_hint: float = 0.0              # attention hints (reward/attn_hints.py); > 0 trains with eager attention
    hint_layers: list[int] = dataclasses.field(default_factory=list)  # (bind, ground, role); [] = attn_hints.default_layers
    eval_every: float = 5.0          # minutes of training between evaluations
    eval_questions: int = 400
    eval_pairs: int = 200            # zero-shot pairs (0: skip)
    checkpoint_every: float = 3.0    # minutes
    pairs_data: str = ""             # pair dataset for the zero-shot metric (test split)
    seed: int = 0
    threads: int = 1
    init_from: str = ""              # a pretrained backbone folder or asset:NAME to continue ("" = random init)
    group_weights: dict[str, float] = dataclasses.field(default_factory=dict)  # over pretrain_data.GROUP_WEIGHTS
    p_overlap: float = 0.0           # share of full-world scenes with overlapping objects (depth can be asked)
    w_occlusion: float = 0.0         # occlusion targets (reward/occlusion.py): per visual token and per mention
    stem_channels: int = 0           # > 0: add a convolutional pixel stem of this width (reward/posfeat.py)
    new_lr_mult: float = 1.0         # learning-rate factor of the pixel stem and the occlusion probes


def load_config(path_or_preset: str | None, **overrides: Any) -> PretrainConfig:
    from ..config import from_dict, load_yaml

    data = load_yaml(path_or_preset) if path_or_preset else {}
    where = str(path_or_preset or "config")
    cfg = from_dict(PretrainConfig, data, where)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    try:
        group_weights_of(cfg.group_weights)
    except ValueError as e:
        from ..errors import ConfigError
        raise ConfigError(f"{where}: {e}") from None
    if not 0.0 <= cfg.p_overlap <= 1.0:
        from ..errors import ConfigError
        raise ConfigError(f"{where}: p_overlap must lie in [0, 1], got {cfg.p_overlap}")
    if cfg.hint_layers and (len(cfg.hint_layers) != 3 or min(cfg.hint_layers) < 0):
        from ..errors import ConfigError
        raise ConfigError(f"{where}: hint_layers must be three layer indices (bind, ground, role), got {cfg.hint_layers}")
    return cfg


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------

def _lr_factor(step: int, progress: float, cfg: PretrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    cos = cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warm * cos


def save_backbone(model: nn.Module, tok: Any, ip: Any, out: Path, meta: dict | None = None) -> None:
    """``save_pretrained`` folder (+ posfeat files); written to a temp folder, then swapped in."""
    tmp = out.parent / (out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    posfeat.save(model, tmp)
    tok.save_pretrained(tmp)
    ip.save_pretrained(tmp)
    if meta is not None:
        (tmp / "pretrain.json").write_text(json.dumps(meta, indent=1))
    out.mkdir(parents=True, exist_ok=True)
    keep = {STATE_DIR, "metrics.jsonl", "train.log", "README.md", "best"}
    for p in out.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in tmp.iterdir():
        shutil.move(str(p), str(out / p.name))
    tmp.rmdir()


def resolve_backbone(path: str) -> Path:
    """``asset:NAME`` -> the package's ``assets/NAME``; checks the folder is a saved backbone."""
    from .train_config import resolve_asset

    p = Path(resolve_asset(path))
    if not (p / "config.json").is_file():
        from ..errors import ConfigError
        raise ConfigError(f"init_from {path!r}: {p} is not a saved backbone folder (no config.json)")
    return p


def copy_backbone(path: str, dest: Path) -> None:
    """Copy a saved backbone's model, tokenizer, processor and position-feature files into ``dest``."""
    src = resolve_backbone(path)
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".safetensors", ".jinja") and f.name != "pretrain.json":
            shutil.copy2(f, dest / f.name)


def load_backbone(path: str | os.PathLike) -> tuple[nn.Module, Any, Any]:
    from .backbone import load_image_processor, load_tokenizer

    model = posfeat.load_vlm(str(path))
    return model, load_tokenizer(str(path)), load_image_processor(str(path))


def pretrain(out_dir: str | os.PathLike, cfg: PretrainConfig, resume: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    from .backbone import load_image_processor, load_tokenizer
    from .tiny import init_tiny

    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    state_dir = out / STATE_DIR
    state_file = state_dir / "state.pt"
    init_dir = state_dir / "init"
    if resume and state_file.is_file():
        log(f"resuming from {state_file}")
    else:
        if state_file.is_file() and not resume:
            raise FileExistsError(f"--out {out}: a run is already there (use --resume, or a new folder)")
        resume = False
        if cfg.init_from:
            copy_backbone(cfg.init_from, init_dir)
        else:
            init_tiny(init_dir, size=cfg.size, seed=cfg.seed, layers=cfg.text_layers)
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(init_dir), dtype=torch.float32, attn_implementation="eager" if cfg.w_hint > 0 else None)
    n_layers = model.config.text_config.num_hidden_layers
    if cfg.w_hint > 0 and cfg.hint_layers and max(cfg.hint_layers) >= n_layers:
        from ..errors import ConfigError
        raise ConfigError(f"pretrain-vlm: hint_layers {cfg.hint_layers} name a layer the {n_layers}-layer backbone lacks")
    pf = posfeat.attach_if_present(model, init_dir) or posfeat.new(model, seed=cfg.seed, coord_scale=cfg.coord_scale)
    pf.merge = model.config.vision_config.spatial_merge_size
    if cfg.stem_channels and pf.stem is None:
        vc = model.config.vision_config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            pf.add_stem(cfg.stem_channels, vc.patch_size, vc.temporal_patch_size)
    tok, ip = load_tokenizer(str(init_dir)), load_image_processor(str(init_dir))
    probes = Probes(model.config.text_config.hidden_size)
    params = list(model.parameters()) + list(pf.parameters()) + list(probes.parameters())
    fast = {id(p) for p in (pf.stem.parameters() if pf.stem is not None else ())}
    fast |= {id(p) for p in (*probes.occ_cell.parameters(), *probes.occ_mention.parameters())}
    groups = []
    for is_fast, mult in ((False, 1.0), (True, cfg.new_lr_mult)) if cfg.new_lr_mult != 1.0 else ((None, 1.0),):
        sel = [p for p in params if is_fast is None or (id(p) in fast) == is_fast]
        groups += [{"params": [p for p in sel if p.ndim >= 2], "weight_decay": cfg.weight_decay, "mult": mult},
                   {"params": [p for p in sel if p.ndim < 2], "weight_decay": 0.0, "mult": mult}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98))
    yes_no = answer_ids(tok)
    sampler = WorldSampler(tok, cfg.seed, cfg.pool, cfg.pool_refresh, cfg.colour_marks, cfg.group_weights, cfg.p_overlap,
                           occlusion=cfg.w_occlusion > 0)
    step, train_s, history, best = 0, 0.0, [], -1.0
    if resume:
        st = torch.load(state_file, weights_only=False)
        model.load_state_dict(st["model"])
        pf.load_state_dict(st["posfeat"])
        probes.load_state_dict(st["probes"])
        opt.load_state_dict(st["opt"])
        step, train_s, history, best = st["step"], st["train_s"], st["history"], st["best"]
        sampler.rng.bit_generator.state = st["rng"]
        sampler.layouts.load(st["pool"])
        torch.set_rng_state(st["torch_rng"])
    t0 = time.time()
    sampler.layouts.fill()
    log(f"pool of {len(sampler.layouts.pool)} layouts in {time.time() - t0:.0f} s; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params (+{sum(p.numel() for p in pf.parameters())} posfeat)")
    eval_sets = make_eval_sets(tok, cfg, cfg.eval_questions)
    pairs_eval = None

    def do_eval() -> dict[str, Any]:
        nonlocal pairs_eval
        te = time.time()
        m = evaluate(model, probes, tok, ip, eval_sets, yes_no, cfg)
        if pairs_eval is None and cfg.pairs_data and cfg.eval_pairs > 0:
            from .zeroshot import load_pairs
            try:  # the dataset may still be building: retried at the next evaluation
                pairs_eval = load_pairs(cfg.pairs_data, "test", cfg.eval_pairs)
            except Exception as e:  # noqa: BLE001
                log(f"zero-shot pairs not available yet ({e})")
        if pairs_eval is not None:
            from .zeroshot import pair_accuracy
            model.eval()
            m.update({f"zs_{k}": v for k, v in pair_accuracy(model, tok, ip, pairs_eval, mode="yesno").items()})
            model.train()
        m.update(step=step, train_s=round(train_s, 1), eval_s=round(time.time() - te, 1))
        return m

    total = cfg.minutes * 60

    def more() -> bool:
        return train_s < total and (cfg.steps <= 0 or step < cfg.steps)

    last_eval, last_ckpt = train_s, train_s
    run_logs: list[dict] = []
    model.train()
    while more():
        ts = time.time()
        progress = step / cfg.steps if cfg.steps > 0 else train_s / total
        p_easy = max(0.0, 1.0 - progress / cfg.curriculum) * 0.9 if cfg.curriculum > 0 else 0.0
        p_easy = max(p_easy, cfg.p_easy_end)
        sampler.p_canonical = max(0.0, 1.0 - progress / cfg.canonical) if cfg.canonical > 0 else 0.0
        # one kind per batch (less padding): object lists (early), VQA or statements
        left = max(0.0, 1 - progress / cfg.curriculum) if cfg.curriculum > 0 else 0.0
        p_list = cfg.p_list_end + (cfg.p_list_start - cfg.p_list_end) * left
        if sampler.rng.random() < p_list:
            samples = [sampler.object_list(sampler.rng.random() < p_easy, cfg) for _ in range(cfg.batch)]
        else:
            vqa_batch = sampler.rng.random() < cfg.p_vqa
            samples = [sampler.sample(sampler.rng.random() < p_easy, vqa_batch, cfg) for _ in range(cfg.batch)]
        sampler.layouts.step()
        b = collate(samples, tok, ip, yes_no)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * g.get("mult", 1.0) * _lr_factor(step, progress, cfg)
        loss, logs = forward_losses(model, probes, b, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        train_s += time.time() - ts
        run_logs.append(logs)
        if step % 10 == 0:
            avg = {k: float(np.nanmean([d[k] for d in run_logs if k in d])) for k in run_logs[-1]}
            log(f"step {step} t {train_s:.0f}s p_easy {p_easy:.2f} " + " ".join(f"{k} {v:.3f}" for k, v in avg.items()))
            run_logs = []
        final = not more()
        if train_s - last_eval >= cfg.eval_every * 60 or final:
            m = do_eval()
            history.append(m)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
            log("eval " + json.dumps(m))
            last_eval = train_s
            score = m.get("vqa_acc", 0.0)
            if score >= best:
                best = score
                save_backbone(model, tok, ip, out / "best", {"config": dataclasses.asdict(cfg), "metrics": m})
        if train_s - last_ckpt >= cfg.checkpoint_every * 60 or final:
            state_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "posfeat": pf.state_dict(), "probes": probes.state_dict(),
                        "opt": opt.state_dict(), "step": step, "train_s": train_s, "history": history,
                        "best": best, "rng": sampler.rng.bit_generator.state, "pool": sampler.layouts.pool,
                        "torch_rng": torch.get_rng_state()}, state_dir / "state.tmp")
            os.replace(state_dir / "state.tmp", state_file)
            last_ckpt = train_s
    meta = {"config": dataclasses.asdict(cfg), "steps": step, "train_s": round(train_s, 1), "history": history}
    save_backbone(model, tok, ip, out, meta)
    log(f"saved {out} after {step} steps / {train_s / 60:.1f} min")
    return meta
