"""The Flux transformer's forward pass as the generator runs it, with two savings over diffusers' own.

:func:`transformer_velocity` is ``FluxTransformer2DModel.forward`` (no ControlNet / IP-adapter
inputs) block by block, with the rotary embedding passed in (the generator caches it per shape) and
the last single block computed for the image tokens only (:func:`image_tokens_single_block`): the
model drops that block's text-token outputs.
"""

from __future__ import annotations

import torch


def transformer_velocity(tr: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, g: torch.Tensor | None,
                         pool: torch.Tensor, enc: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The output of ``tr`` (a ``FluxTransformer2DModel`` with single blocks) for packed latents ``x`` at
    timesteps ``t`` (sigmas), guidance ``g`` (or None), pooled ``pool`` and sequence ``enc`` text embeddings."""
    h = tr.x_embedder(x)
    t = t.to(h.dtype) * 1000
    temb = (tr.time_text_embed(t, pool) if g is None
            else tr.time_text_embed(t, g.to(h.dtype) * 1000, pool))
    e = tr.context_embedder(enc)
    for block in tr.transformer_blocks:
        e, h = block(hidden_states=h, encoder_hidden_states=e, temb=temb, image_rotary_emb=rope)
    *first, last = tr.single_transformer_blocks
    for block in first:
        e, h = block(hidden_states=h, encoder_hidden_states=e, temb=temb, image_rotary_emb=rope)
    h = image_tokens_single_block(last, h, e, temb, rope)
    return tr.proj_out(tr.norm_out(h, temb))


def image_tokens_single_block(block: torch.nn.Module, hidden: torch.Tensor, enc: torch.Tensor,
                              temb: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``block(hidden, enc, temb, rope)[1]`` of a ``FluxSingleTransformerBlock``, image tokens only.

    Used for the last single block, whose text-token outputs the model discards: the text tokens
    enter as keys and values only, so their queries, attention rows, MLP and output projection
    (two thirds of the block at 128 text + 64 image tokens) are skipped. Same values as the full
    block up to float rounding; blocks with a non-default attention processor run in full.
    """
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    attn = block.attn
    if type(attn.processor) is not FluxAttnProcessor:
        return block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rope)[1]
    n_txt = enc.shape[1]
    norm, gate = block.norm(torch.cat([enc, hidden], dim=1), emb=temb)
    img = norm[:, n_txt:]
    q = attn.norm_q(attn.to_q(img).unflatten(-1, (-1, attn.head_dim)))
    k = attn.norm_k(attn.to_k(norm).unflatten(-1, (-1, attn.head_dim)))
    v = attn.to_v(norm).unflatten(-1, (-1, attn.head_dim))
    q = apply_rotary_emb(q, tuple(r[n_txt:] for r in rope), sequence_dim=1)
    k = apply_rotary_emb(k, rope, sequence_dim=1)
    o = dispatch_attention_fn(q, k, v, backend=attn.processor._attention_backend,
                              parallel_config=attn.processor._parallel_config)
    o = o.flatten(2, 3).to(q.dtype)
    out = hidden + gate.unsqueeze(1) * block.proj_out(torch.cat([o, block.act_mlp(block.proj_mlp(img))], dim=2))
    return out.clip(-65504, 65504) if out.dtype == torch.float16 else out
