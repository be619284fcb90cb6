"""Batches of the generator's flow-matching stage: fresh world scenes made ready for one step.

A batch is everything one step needs that does not depend on the model: the images as pixels,
the prompts as T5 and CLIP token ids, the per-token loss weights (``object_weight``) and, when
the grounding loss is on, its targets. :func:`make_fm_batch` builds one from a
:class:`~spatialt2i.gen.scene_stream.SceneStream`; :class:`FMBatches` calls it in the training
process (``data_workers: 0``) or in ``torch.utils.data.DataLoader`` worker processes, each with
its own scene stream: on a GPU, rendering and tokenising on one CPU core cannot keep up with the
tiny transformer. :func:`encode_ids` turns the ids into what ``FluxPipeline.encode_prompt``
returns for the same prompts (test), so tokenising can happen away from the model.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from spatialt2i.gen.grounding import GroundingTargets, grounding_targets, object_tokens
from spatialt2i.gen.scene_stream import SceneStream


def _map_tensors(obj: Any, fn: Any) -> Any:
    """``obj`` (a tensor, an array, None, or a dataclass of those) with ``fn`` applied to every tensor/array."""
    if obj is None or isinstance(obj, (str, list, tuple)):
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return fn(obj)
    return dataclasses.replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})


def to_device(obj: Any, device: torch.device | str) -> Any:
    """A copy of a dataclass of tensors (or None / nested dataclasses) on ``device``."""
    return _map_tensors(obj, lambda t: t.to(device))


def tokenize_prompts(pipe: Any, prompts: Sequence[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 ids (B, max_sequence_length), CLIP ids (B, 77)) padded and truncated as
    ``FluxPipeline.encode_prompt`` does. ``pipe`` needs only ``tokenizer``, ``tokenizer_2`` and
    ``tokenizer_max_length``."""
    t5 = pipe.tokenizer_2(list(prompts), padding="max_length", max_length=max_sequence_length, truncation=True,
                          return_tensors="pt").input_ids
    clip = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer_max_length,
                          truncation=True, return_tensors="pt").input_ids
    return t5, clip


def encode_ids(pipe: Any, t5_ids: torch.Tensor, clip_ids: torch.Tensor,
               attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """T5 token states, CLIP pooled vector and, when asked, the first T5 layer's attention
    probabilities (the T5 then switches to eager attention: sdpa returns none)."""
    if attentions and pipe.text_encoder_2.config._attn_implementation != "eager":
        pipe.text_encoder_2.set_attn_implementation("eager")
    dev = pipe.text_encoder_2.device
    out = pipe.text_encoder_2(t5_ids.to(dev), output_attentions=attentions)
    pooled = pipe.text_encoder(clip_ids.to(pipe.text_encoder.device), output_hidden_states=False).pooler_output
    return out.last_hidden_state, pooled, out.attentions[0] if attentions else None


@dataclass
class FMBatch:
    images: torch.Tensor                  # (B, H, W, 3) uint8 (to_pixels on the model's device: 4x less to move)
    t5_ids: torch.Tensor                  # (B, max_sequence_length)
    clip_ids: torch.Tensor                # (B, 77)
    token_weight: torch.Tensor | None     # (B, N_img) loss weights, mean 1 per sample (object_weight > 1)
    grounding: GroundingTargets | None    # grounding_weight > 0

    def __len__(self) -> int:
        return int(self.images.shape[0])


def make_fm_batch(stream: SceneStream, cfg: Any, tokenizers: Any, cell: int, easy: bool = False) -> FMBatch:
    """One batch of ``cfg.batch`` fresh scenes (``easy``: the curriculum's prompt mix)."""
    scenes, imgs, prompts = stream.batch(cfg.batch, easy=easy)
    if cfg.text_dropout > 0:
        drop = stream.rng.random(len(prompts)) < cfg.text_dropout
        prompts = ["" if d else q for d, q in zip(drop.tolist(), prompts)]
    t5, clip = tokenize_prompts(tokenizers, prompts, cfg.max_sequence_length)
    weight = None
    if cfg.object_weight != 1.0:
        w = 1.0 + (cfg.object_weight - 1.0) * object_tokens(scenes, cfg.image_size, cell)
        weight = w / w.mean(1, keepdim=True)
    ground = None
    if cfg.grounding_weight > 0:
        ground = grounding_targets(scenes, prompts, tokenizers.tokenizer_2, cfg.max_sequence_length,
                                   cfg.image_size, cell)
    return FMBatch(torch.from_numpy(imgs), t5, clip, weight, ground)


@dataclass
class _Tokenizers:
    """The picklable part of a pipeline that :func:`make_fm_batch` needs."""
    tokenizer: Any
    tokenizer_2: Any
    tokenizer_max_length: int


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless batches from one scene stream per DataLoader worker, seeded ``(seed, worker id)``."""

    def __init__(self, cfg: Any, seed: Sequence[int], tokenizers: _Tokenizers, cell: int, easy: Any) -> None:
        super().__init__()
        self.cfg, self.seed, self.tokenizers, self.cell, self.easy = cfg, list(seed), tokenizers, cell, easy

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        stream = SceneStream(self.cfg, [*self.seed, info.id if info is not None else 0])
        while True:
            batch = make_fm_batch(stream, self.cfg, self.tokenizers, self.cell, easy=bool(self.easy.value))
            # as arrays: they travel pickled through the worker's pipe, not as shared-memory tensors
            # (a container's small /dev/shm fills up with a few queued batches)
            yield _map_tensors(batch, lambda t: t.numpy())


class FMBatches:
    """Flow-matching batches: from ``stream`` in this process (``workers`` 0), or from ``workers``
    DataLoader processes with their own streams seeded from ``seed`` (pass a different one on
    resume: their batches depend on the seed and the worker count, not on the main stream)."""

    def __init__(self, stream: SceneStream, cfg: Any, pipe: Any, cell: int, workers: int = 0,
                 seed: Sequence[int] = (0,)) -> None:
        if workers < 0:
            raise ValueError(f"data_workers must be >= 0, got {workers}")
        self.stream, self.cfg, self.cell, self.workers = stream, cfg, cell, workers
        self.tokenizers = _Tokenizers(pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_max_length)
        self._it = None
        if workers:
            ctx = multiprocessing.get_context("fork")
            self._easy = ctx.Value("b", 0)
            ds = _WorkerBatches(cfg, seed, self.tokenizers, cell, self._easy)
            self._loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4,
                                                       multiprocessing_context=ctx, persistent_workers=False)

    def next(self, easy: bool = False) -> FMBatch:
        if not self.workers:
            return make_fm_batch(self.stream, self.cfg, self.tokenizers, self.cell, easy=easy)
        self._easy.value = int(easy)     # batches already queued keep the mix they were made with
        if self._it is None:
            self._it = iter(self._loader)
        return _map_tensors(next(self._it), torch.from_numpy)

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        self._it = None     # the DataLoader iterator shuts its workers down when it goes


def worker_seed(cfg_seed: int, step: int) -> list[int]:
    """Seed of the worker streams for a flow-matching stage (re)started at ``step``."""
    return [int(cfg_seed), 0x5EED, int(step)]


__all__ = ["FMBatch", "FMBatches", "encode_ids", "make_fm_batch", "to_device", "tokenize_prompts", "worker_seed"]
