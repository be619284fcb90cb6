"""``spatialt2i reward train``: SpatialScore training with accelerate (one process, DDP, FSDP, DeepSpeed).

Determinism and scaling
    The pairs of optimizer step ``s`` are positions ``[s*B, (s+1)*B)`` of an endless stream made of
    seeded per-epoch permutations of the train split (``B`` = global ``batch_size``). The step's pairs
    are ordered longest prompt first (less padding per micro batch) and cut into ``B/mb`` micro batches
    of ``micro_batch_size`` = ``mb``, dealt round-robin: process ``r`` of ``W`` runs chunks ``r, r+W, ...``,
    ``A = B/(mb*W)`` of them (``A`` = gradient accumulation). Each micro batch's loss is the *sum* of its
    pair losses divided by the nominal micro size; accelerate divides by ``A`` and DDP averages over
    ``W``, so the gradient is the mean over the ``B`` pairs however they are spread. One process with
    ``A = 2`` and two processes with ``A = 1`` therefore run the same micro batches and train the same
    model (up to float summation order). The order is a pure function of (seed, step), so a resumed
    run continues exactly where the checkpoint left off.

Bad rows
    A row whose prompt or image is unusable (or that review rejected) is skipped by
    :func:`~spatialt2i.reward.collate.collate_pairs`, logged with its id, and listed in
    ``OUT/skipped.jsonl``; the step goes on with the remaining pairs.

Output folder::

    OUT/train_config.json           the resolved config (checked on --resume)
    OUT/checkpoints/step-000050/    trainable.safetensors + state.pt (optimizer, scheduler, RNG, step)
    OUT/tb/                         TensorBoard: train/loss, train/acc, train/lr, eval/acc, eval/acc_1, ...
    OUT/metrics.jsonl               the same scalars as JSON lines
    OUT/skipped.jsonl               {"id", "reason"} of every skipped row
    OUT/model/                      the final SpatialScore checkpoint (``SpatialScore.from_pretrained``)
    OUT/result.json                 steps, wall time, final evaluation

Checkpoints (``reward/checkpoints.py``) are written to a temporary folder and renamed, so a kill leaves either a whole
checkpoint or none. Under FSDP/DeepSpeed the optimizer/model state goes through
``accelerator.save_state`` (sharded) instead of ``state.pt`` (not exercised by the CPU tests).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..data.schema import shard_files
from ..errors import ConfigError
from ..metrics_log import MetricsLog
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .collate import collate_pairs
from .pair_table import PairTable, StepOrder
from .losses import gaussian_bt_loss, pairwise_correct
from .train_config import RewardTrainConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data

def blank_pair() -> tuple[list[str], list[Image.Image]]:
    """A placeholder forward (loss x 0) for a micro batch whose rows were all skipped, so that every
    process still joins the gradient all-reduce."""
    img = Image.new("RGB", (32, 32), (255, 255, 255))
    return ["empty"] * 2, [img, img]


def pair_losses(out: dict[str, torch.Tensor], n: int, cfg: RewardTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-pair losses, per-pair correctness) for a forward over chosen + rejected halves."""
    mu, ls = out["mu"], out["log_sigma"]
    mc, mr, lc, lr = mu[:n], mu[n:], ls[:n], ls[n:]
    if cfg.loss == "bt":
        from .losses import bt_loss
        total = bt_loss(mc, mr) * n
    else:
        total = gaussian_bt_loss(mc, lc, mr, lr, method=cfg.gaussian_method) * n
    return total, pairwise_correct(mc.detach(), mr.detach())


# ---------------------------------------------------------------------------------------------- results

@dataclass
class TrainResult:
    out: str
    steps: int
    resumed_from: int
    seconds: float
    pairs_seen: int
    skipped: int
    eval: dict[str, float]


def lr_lambda(cfg: RewardTrainConfig, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


# ---------------------------------------------------------------------------------------------- trainer

class RewardTrainer:
    """Train SpatialScore on a pair dataset; see the module docstring for the guarantees."""

    def __init__(self, cfg: RewardTrainConfig, data: str | os.PathLike, out: str | os.PathLike,
                 resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.data, self.out = cfg, Path(data), Path(out)
        self.resume, self.progress = resume, progress
        self._ckpt_dir = self.out / "checkpoints"

    # ---- setup ------------------------------------------------------------------------------------
    def _accelerator(self) -> Any:
        from accelerate import Accelerator, PartialState
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import GradientAccumulationPlugin

        if not torch.distributed.is_initialized():
            # accelerate keeps process-wide singletons; a second run in one process (tests, notebooks)
            # must not inherit the first one's gradient accumulation settings.
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
        state = PartialState(cpu=use_cpu())
        accum = self.cfg.grad_accum(state.num_processes)
        plugin = GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False, adjust_scheduler=False)
        # The backbone's own dtype carries bf16 (head and <reward> row stay fp32); no autocast.
        return Accelerator(cpu=use_cpu(), mixed_precision="no", gradient_accumulation_plugin=plugin)

    def _model_dtype(self, device: torch.device) -> torch.dtype:
        mp = self.cfg.mixed_precision
        if mp == "bf16" or (mp == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return torch.float32

    def _check_out(self) -> bool:
        """Refuse a used --out without --resume, or a resume with another config; True if the run is new."""
        cfg_file = self.out / "train_config.json"
        mine = asdict(self.cfg)
        if cfg_file.is_file():
            if not self.resume:
                raise ConfigError(f"--out {self.out}: already holds a training run; pass --resume to continue it "
                                  "or choose another folder")
            old = json.loads(cfg_file.read_text())
            diff = sorted(k for k in set(old) | set(mine) if k != "max_minutes" and old.get(k) != mine.get(k))
            if diff:
                raise ConfigError(f"--resume {self.out}: config differs from the run's train_config.json in {diff}")
            return False
        return True

    def _optimizer(self, model: Any) -> torch.optim.Optimizer:
        lora, head, row = [], [], []
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (row if n == "reward_embedding" else head if n.startswith("head.") else lora).append(p)
        head_lr = self.cfg.head_lr or self.cfg.lr
        groups = [{"params": lora, "lr": self.cfg.lr, "weight_decay": self.cfg.weight_decay},
                  {"params": head, "lr": head_lr, "weight_decay": self.cfg.weight_decay},
                  {"params": row, "lr": head_lr, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98), eps=1e-8)

    def _save_model(self, acc: Any, model: Any) -> None:
        """Write ``OUT/model``. Under FSDP the parameters are sharded, so the full state dict is gathered
        (a collective) and its trainable entries are loaded into a CPU copy that saves the checkpoint."""
        from accelerate.utils import DistributedType

        if acc.distributed_type != DistributedType.FSDP:
            if acc.is_main_process:
                acc.unwrap_model(model).save_pretrained(self.out / "model")
            return
        from .model import SpatialScore

        full = acc.get_state_dict(model)
        if acc.is_main_process:
            cfg = self.cfg
            cpu = SpatialScore.from_backbone(cfg.resolved_base_model(), lora=cfg.lora.settings() if cfg.lora else None,
                                             head_hidden=cfg.head_hidden, device="cpu", seed=cfg.seed)
            names = {n for n, p in cpu.named_parameters() if p.requires_grad}
            missing = names - set(full)
            if missing:
                raise RuntimeError(f"FSDP state dict lacks trainable parameter(s) {sorted(missing)[:5]}")
            cpu.load_state_dict({k: v for k, v in full.items() if k in names}, strict=False)
            cpu.save_pretrained(self.out / "model")

    # ---- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, acc: Any, model: Any, table: PairTable | None, limit: int = 0) -> dict[str, float]:
        """Accuracy overall / 1-perturbation / 2-3-perturbation and the mean mu gap, over all ranks."""
        if table is None:
            return {}
        n = len(table) if limit <= 0 else min(limit, len(table))
        mine = table.by_length([i for i in range(n) if i % acc.num_processes == acc.process_index])
        sums = torch.zeros(7, dtype=torch.float64)  # correct, n, correct_1, n_1, correct_23, n_23, gap
        was = model.training
        model.eval()
        mb = self.cfg.micro_batch_size
        rounds = math.ceil(math.ceil(n / acc.num_processes) / mb)  # same forward count on every rank
        for k in range(rounds):
            batch = collate_pairs(table.rows(mine[k * mb:(k + 1) * mb]))
            if not len(batch):
                model(*blank_pair())
                continue
            out = model(*batch.model_inputs())
            m = len(batch)
            mc, mr = out["mu"][:m].float().cpu(), out["mu"][m:].float().cpu()
            cr = pairwise_correct(mc, mr).double()
            npert = torch.tensor([p or 1 for p in batch.n_perturbations])
            one = npert == 1
            sums += torch.stack([cr.sum(), torch.tensor(float(m)), cr[one].sum(), one.sum().double(),
                                 cr[~one].sum(), (~one).sum().double(), (mc - mr).double().sum()])
        model.train(was)
        tot = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
        res = {"acc": float(tot[0] / tot[1]) if tot[1] else float("nan"),
               "acc_1": float(tot[2] / tot[3]) if tot[3] else float("nan"),
               "acc_23": float(tot[4] / tot[5]) if tot[5] else float("nan"),
               "mu_gap": float(tot[6] / tot[1]) if tot[1] else float("nan"), "pairs": float(tot[1])}
        return res

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from .model import SpatialScore

        cfg = self.cfg
        acc = self._accelerator()
        new = self._check_out()
        acc.wait_for_everyone()  # every rank checked before the main one writes
        if new and acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        train = PairTable(self.data, "train")
        evalt = PairTable(self.data, cfg.eval_split) if shard_files(self.data, cfg.eval_split) else None
        if evalt is None and acc.is_main_process:
            log.warning("%s: no '%s' split; periodic evaluation is off", self.data, cfg.eval_split)
        order = StepOrder(len(train), cfg.batch_size, cfg.seed)
        total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * len(train) / cfg.batch_size)
        W, r, A = acc.num_processes, acc.process_index, acc.gradient_accumulation_steps
        mb = cfg.micro_batch_size

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        model = SpatialScore.from_backbone(
            cfg.resolved_base_model(), lora=cfg.lora.settings() if cfg.lora else None, head_hidden=cfg.head_hidden,
            device=acc.device, dtype=self._model_dtype(acc.device), seed=cfg.seed)
        if cfg.gradient_checkpointing and acc.device.type == "cuda":
            model.enable_gradient_checkpointing()
        opt = self._optimizer(model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
        model, opt = acc.prepare(model, opt)

        start, elapsed, pairs_seen = 0, 0.0, 0
        ckpt = latest_checkpoint(self._ckpt_dir) if self.resume else None
        if ckpt is not None:
            st = load_checkpoint(ckpt, acc, model, opt, sched)
            start, elapsed, pairs_seen = int(st["step"]), float(st.get("elapsed", 0.0)), int(st.get("pairs_seen", 0))
            if acc.is_main_process:
                log.info("resuming from %s (step %d of %d)", ckpt, start, total)
        elif self.resume and acc.is_main_process:
            log.warning("--resume: no checkpoint in %s; starting from step 0", self._ckpt_dir)

        writer = MetricsLog(self.out, active=acc.is_main_process)
        skipped: dict[str, str] = {}

        def on_skip(rid: str, reason: str) -> None:
            skipped.setdefault(rid, reason)

        bar = _progress(total, start, acc.is_main_process and self.progress)
        model.train()
        t_start = time.monotonic() - elapsed
        last_eval: dict[str, float] = {}
        step = start
        while step < total:
            t0 = time.monotonic()
            chunks = micro_batches(train.by_length(order.step(step)), mb, W, r)
            stats = torch.zeros(3, dtype=torch.float64)  # loss sum, pairs, correct
            for k in range(A):
                with acc.accumulate(model):
                    batch = collate_pairs(train.rows(chunks[k]), on_skip)
                    if len(batch):
                        out = model(*batch.model_inputs())
                        loss_sum, correct = pair_losses(out, len(batch), cfg)
                        stats += torch.tensor([loss_sum.item(), len(batch), float(correct.sum())], dtype=torch.float64)
                    else:
                        out = model(*blank_pair())
                        loss_sum = 0.0 * (out["mu"].sum() + out["log_sigma"].sum())
                    acc.backward(loss_sum / mb)
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            tot = acc.reduce(stats.to(acc.device), reduction="sum").cpu()
            pairs_seen += int(tot[1])
            dt = time.monotonic() - t0
            loss, acc_b = float(tot[0] / max(tot[1], 1)), float(tot[2] / max(tot[1], 1))
            if acc.is_main_process and (step % max(1, cfg.log_every) == 0 or step == total):
                _write(writer, step, {"train/loss": loss, "train/acc": acc_b, "train/lr": sched.get_last_lr()[0],
                                      "train/pairs_per_s": float(tot[1]) / max(dt, 1e-9),
                                      "train/skipped_rows": float(len(skipped))})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc_b:.2f}")
            out_of_time = cfg.max_minutes > 0 and (time.monotonic() - t_start) > cfg.max_minutes * 60
            if acc.num_processes > 1:  # every rank must agree to stop
                flag = acc.reduce(torch.tensor([float(out_of_time)], device=acc.device), reduction="sum")
                out_of_time = bool(flag.item() > 0)
            done = step == total or out_of_time
            if cfg.eval_every and step % cfg.eval_every == 0 and not done:
                last_eval = self.evaluate(acc, model, evalt, cfg.eval_pairs)
                if acc.is_main_process and last_eval:
                    _write(writer, step, {f"eval/{k}": v for k, v in last_eval.items()})
            if (cfg.save_every and step % cfg.save_every == 0) or done:
                save_checkpoint(self._ckpt_dir, self.cfg.keep_checkpoints, acc, model, opt, sched, step, {
                    "elapsed": time.monotonic() - t_start, "pairs_seen": pairs_seen})
            if out_of_time:
                if acc.is_main_process:
                    log.warning("max_minutes=%s reached at step %d of %d; stopping", cfg.max_minutes, step, total)
                break
        bar.close()
        seconds = time.monotonic() - t_start
        final_eval = self.evaluate(acc, model, evalt, 0)
        all_skipped = _gather_skips(acc, skipped)
        self._save_model(acc, model)
        if acc.is_main_process:
            if final_eval:
                _write(writer, step, {f"eval_final/{k}": v for k, v in final_eval.items()})
            with open(self.out / "skipped.jsonl", "w") as f:
                for rid, reason in sorted(all_skipped.items()):
                    f.write(json.dumps({"id": rid, "reason": reason}) + "\n")
        result = TrainResult(str(self.out), step, start, seconds, pairs_seen, len(all_skipped), final_eval)
        if acc.is_main_process:
            (self.out / "result.json").write_text(json.dumps(asdict(result), indent=2))
        writer.close()
        acc.wait_for_everyone()
        return result


# ---------------------------------------------------------------------------------------------- helpers

def load_scorer(path: str | os.PathLike, device: str | None = None) -> Any:
    """``SpatialScore.from_pretrained(path)`` on ``device`` (default: cuda if available)."""
    from .model import SpatialScore

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return SpatialScore.from_pretrained(path, device=dev)


def micro_batches(rows: np.ndarray, mb: int, world: int, rank: int) -> list[np.ndarray]:
    """This rank's micro-batches of one step: ``rows`` (ordered longest prompt first) cut into chunks of
    ``mb``, dealt round-robin to the ranks -- so every rank gets long and short chunks, and a run on
    ``world`` ranks forms exactly the micro-batches of a one-process run with the same global batch."""
    chunks = [rows[c:c + mb] for c in range(0, len(rows), mb)]
    return chunks[rank::world]


def use_cpu() -> bool:
    """CPU when asked (``accelerate launch --cpu`` sets ACCELERATE_USE_CPU) or when there is no GPU; accelerate
    only forms a multi-process CPU (gloo) group under torchrun when told ``cpu=True``."""
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()


def _gather_skips(acc: Any, skipped: dict[str, str]) -> dict[str, str]:
    if acc.num_processes == 1:
        return dict(skipped)
    from accelerate.utils import gather_object

    merged: dict[str, str] = {}
    for part in gather_object([skipped]):
        merged.update(part)
    return merged


def _write(metrics: MetricsLog, step: int, scalars: dict[str, float]) -> None:
    metrics.scalars(step, scalars)
    metrics.append("metrics.jsonl", {"step": step, **scalars})


def _progress(total: int, start: int, active: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not active, desc="reward train", unit="step", dynamic_ncols=True)


def train_reward(cfg: RewardTrainConfig, data: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
                 progress: bool = True) -> TrainResult:
    """Run :class:`RewardTrainer` (in whatever process group accelerate set up)."""
    return RewardTrainer(cfg, data, out, resume=resume, progress=progress).run()
