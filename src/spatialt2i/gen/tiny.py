"""A tiny FluxPipeline built fully offline from random components.

Same classes as FLUX.1-dev (``CLIPTextModel`` + ``CLIPTokenizer``, ``T5EncoderModel`` +
``T5Tokenizer``, ``AutoencoderKL``, ``FluxTransformer2DModel``,
``FlowMatchEulerDiscreteScheduler`` with FLUX.1-dev's dynamic shift), only small. The tokenizers
are trained on the spot with ``tokenizers`` on a corpus of world words (shapes, colours, sizes,
relation phrases, canvas regions) plus any extra sentences given.

Shape rules the components must obey (diffusers' FluxPipeline assumes them):

- ``transformer.in_channels == 4 * vae.latent_channels`` (2x2 latent packing);
- ``sum(axes_dims_rope) == head_dim`` with even entries;
- ``pooled_projection_dim == CLIP hidden size`` (the pipeline uses CLIP's ``pooler_output``);
- ``joint_attention_dim == T5 d_model``;
- ``vae.config.shift_factor`` is not None;
- ``vae_scale_factor = 2 ** (vae_blocks - 1)``: 64x64 px with 3 blocks gives 8x8 packed = 64 tokens.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from spatialt2i.world.vocab import COLOURS, REGIONS, SHAPES, SIZES

LATENT_CHANNELS = 16
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

# FLUX.1-dev's scheduler config (scheduler/scheduler_config.json on the hub).
FLUX_DEV_SCHEDULER: dict = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

RELATION_PHRASES: tuple[str, ...] = (
    "to the left of", "to the right of", "above", "below", "on top of", "under",
    "above and to the left of", "above and to the right of",
    "below and to the left of", "below and to the right of",
    "in front of", "behind", "between", "bigger than", "smaller than", "next to", "near",
)
FILLER: tuple[str, ...] = (
    "a", "an", "the", "and", "is", "are", "of", "in", "on", "at", "with", "there", "it", "one",
    "two", "three", "four", "object", "objects", "shape", "shapes", "picture", "image", "scene",
    "white", "background", "canvas", "corner", "edge", "center", "top", "bottom", "left", "right",
    "sits", "placed", "located", "while", "which", "that", "both", ".", ",",
)


def _rotated(vals: Sequence[str], i: int) -> str:
    return vals[i % len(vals)]


def world_corpus(n: int = 600, seed: int = 0, extra: Iterable[str] | None = None) -> list[str]:
    """Sentences covering every world word (shape, colour, size, region, relation phrase).

    Deterministic for a given ``seed``; ``extra`` sentences are appended as they are.
    """
    rnd = random.Random(seed)
    shapes, colours, sizes = list(SHAPES), list(COLOURS), list(SIZES)
    regions, rels = list(REGIONS), list(RELATION_PHRASES)
    out: list[str] = []
    # one pass that names every word at least once, then random sentences
    for i in range(max(len(shapes), len(colours), len(sizes), len(regions), len(rels))):
        a = f"{_rotated(sizes, i)} {_rotated(colours, i)} {_rotated(shapes, i)}"
        b = f"{_rotated(colours, i + 3)} {_rotated(shapes, i + 2)}"
        out.append(f"a {a} {_rotated(rels, i)} the {b}, in the {_rotated(regions, i)}.")
    for _ in range(n):
        objs = [f"{rnd.choice(sizes)} {rnd.choice(colours)} {rnd.choice(shapes)}" for _ in range(3)]
        rel = rnd.choice(rels)
        if rel == "between":
            s = f"a {objs[0]} is between the {objs[1]} and the {objs[2]}."
        else:
            s = f"a {objs[0]} {rel} a {objs[1]}."
        if rnd.random() < 0.4:
            s += f" the {objs[2]} is in the {rnd.choice(regions)}."
        if rnd.random() < 0.2:
            s = "An image of " + s
        out.append(s)
    out.append(" ".join(FILLER))
    if extra is not None:
        out.extend(str(s) for s in extra)
    return out


def build_clip_tokenizer(corpus: Sequence[str], vocab_size: int = 400,
                         model_max_length: int = CLIP_MAX_LENGTH):
    """A ``CLIPTokenizer`` whose BPE vocab/merges are trained offline on ``corpus``.

    Trained with the normalizer, pre-tokenizer and ``</w>`` suffix that ``CLIPTokenizer``
    rebuilds itself, so the wrapped tokenizer splits text the same way.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>",
                               continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(
            Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
            behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    model = json.loads(tok.to_str())["model"]
    # tokenizers >= 0.23 wants merges as tuples
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)


def build_t5_tokenizer(corpus: Sequence[str], vocab_size: int = 300,
                       model_max_length: int = T5_MAX_LENGTH):
    """A ``T5Tokenizer`` (Unigram) built offline from ``corpus``; ids 0/1/2 are pad/eos/unk.

    ``tokenizers``' Unigram trainer prunes a tiny, repetitive corpus down to sub-word scraps
    ("red" -> "r" "ed"), so the vocab is: every corpus word as one piece scored by its
    log-frequency (trailing punctuation split off), then the trainer's pieces as a fallback for
    unseen words, scored lower so that Viterbi prefers whole words.
    """
    import math
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]
    corpus = list(corpus)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    sub = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    if [v[0] for v in sub[:3]] != specials:
        raise RuntimeError(f"T5 tokenizer training put {sub[:3]} first, expected {specials}")

    counts: Counter[str] = Counter()
    for sentence in corpus:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(sentence):
            core = word.rstrip(".,;:!?")
            if len(core) > 1:
                counts[core] += 1
            counts.update(word[len(core):])
    total = sum(counts.values())
    vocab: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    vocab += [(w, math.log(c / total)) for w, c in counts.most_common()]
    seen = {w for w, _ in vocab}
    vocab += [(w, score - 10.0) for w, score in sub[3:] if w not in seen]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split ``head_dim`` into three even RoPE axes (index, row, column), like Flux's (16, 56, 56)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6, got {head_dim}")
    half = head_dim // 2
    side = (half * 3 // 8)  # in units of 2 channels; Flux: 64 -> 28 per spatial axis
    side = max(side, 1)
    first = half - 2 * side
    if first < 1:
        side = (half - 1) // 2
        first = half - 2 * side
    return (2 * first, 2 * side, 2 * side)


def build_tiny_flux_pipeline(
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    vae_blocks: int = 3,
    num_layers: int = 2,
    num_single_layers: int = 2,
    heads: int = 4,
    head_dim: int = 32,
    joint_dim: int = 64,
    pooled_dim: int = 32,
    guidance_embeds: bool = True,
    corpus: Iterable[str] | None = None,
    latent_channels: int = LATENT_CHANNELS,
):
    """Build a random-init tiny ``FluxPipeline`` offline (and save it to ``out_dir`` if given).

    Defaults are the issue's benchmark setting: 64x64 px images with VAE scale factor 4 (64
    image tokens), transformer with 2 double + 2 single blocks of 4 heads x 32, joint dim 64,
    pooled dim 32, guidance embedding; CLIP hidden 32 and T5 d_model 64, 2 layers each.
    ``corpus``: extra sentences for tokenizer training, on top of the world corpus.
    ``latent_channels``: the VAE's (FLUX.1-dev: 16); the transformer takes 4x as many (2x2 packing).
    The result reloads with ``FluxPipeline.from_pretrained(out_dir)``.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if vae_blocks < 1:
        raise ValueError(f"vae_blocks must be >= 1, got {vae_blocks}")
    if joint_dim % 16:
        raise ValueError(f"joint_dim (T5 d_model) must be a multiple of 16, got {joint_dim}")
    if pooled_dim % 2:
        raise ValueError(f"pooled_dim (CLIP hidden size) must be even, got {pooled_dim}")
    axes = _rope_axes(head_dim)

    text = world_corpus(seed=seed, extra=corpus)
    tok_clip = build_clip_tokenizer(text)
    tok_t5 = build_t5_tokenizer(text)

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok_clip), hidden_size=pooled_dim, intermediate_size=2 * pooled_dim,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=pooled_dim, bos_token_id=tok_clip.bos_token_id,
        eos_token_id=tok_clip.eos_token_id, pad_token_id=tok_clip.pad_token_id)).eval()
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tok_t5), d_model=joint_dim, d_kv=16, d_ff=2 * joint_dim, num_layers=2,
        num_heads=joint_dim // 16, relative_attention_num_buckets=8, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks,
        block_out_channels=(32,) * vae_blocks, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=64,
        scaling_factor=0.3611, shift_factor=0.1159,  # FLUX.1-dev's; shift must not be None
        use_quant_conv=False, use_post_quant_conv=False).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=num_layers,
        num_single_layers=num_single_layers, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=joint_dim,
        pooled_projection_dim=pooled_dim, guidance_embeds=guidance_embeds,
        axes_dims_rope=axes).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok_clip,
                        text_encoder_2=t5, tokenizer_2=tok_t5, transformer=transformer)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(out_dir))
    return pipe


def build_world_pipeline(cfg: Any):
    """The world generator's starting pipeline for a pretraining config (``gen.pretrain_config``):
    random-init tiny parts of ``cfg.model``'s sizes (tokenizers built offline) with a fully
    convolutional VAE of ``cfg.model.vae_channels`` (or the one in ``cfg.init_vae``), or the whole
    pipeline saved in ``cfg.init_from`` (fp32)."""
    from diffusers import AutoencoderKL, FluxPipeline

    from spatialt2i.gen.loading import load_flux_pipeline
    from spatialt2i.gen.vae_stage import load_vae

    if cfg.init_from:
        return load_flux_pipeline(cfg.init_from)
    m = cfg.model
    base = build_tiny_flux_pipeline(
        seed=cfg.seed, vae_blocks=len(m.vae_channels), num_layers=m.num_layers,
        num_single_layers=m.num_single_layers, heads=m.heads, head_dim=m.head_dim,
        joint_dim=m.joint_dim, pooled_dim=m.pooled_dim, guidance_embeds=m.guidance_embeds,
        latent_channels=m.latent_channels)
    torch.manual_seed(cfg.seed + 1)
    groups = math.gcd(*m.vae_channels) if len(m.vae_channels) > 1 else m.vae_channels[0]
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(m.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(m.vae_channels),
        block_out_channels=tuple(m.vae_channels), layers_per_block=1,
        latent_channels=m.latent_channels, norm_num_groups=min(8, groups), sample_size=cfg.image_size,
        mid_block_add_attention=False,  # fully convolutional: trains on crops
        scaling_factor=1.0, shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False)
    if cfg.init_vae:
        vae = load_vae(cfg.init_vae, m.latent_channels)
    pipe = FluxPipeline(scheduler=base.scheduler, vae=vae, text_encoder=base.text_encoder,
                        tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2,
                        tokenizer_2=base.tokenizer_2, transformer=base.transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
