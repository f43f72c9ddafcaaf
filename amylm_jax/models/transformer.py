"""Causal pre-norm transformer of Mimi's encoder/decoder (docs/original.md §2.5), channels-last.

``[B, T, D] -> [B, T, D]``; Mimi's ``ProjectedTransformer`` has identity input/output
projections (``input_dimension == d_model``), so this is the whole module. Parameter names
mirror the PyTorch tree (``layers_{l}/self_attn/in_proj``, ``norm1``, ``linear1``,
``layer_scale_1/scale`` ...). RoPE angles and the softmax run in float32 even under a bf16
compute dtype, as in the original.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from amylm_jax.config import TransformerConfig
from amylm_jax.models.conv import torch_uniform_init

Dtype = Any


def rope_interleaved(x: jax.Array, max_period: float) -> jax.Array:
    """Rotate interleaved pairs ``(2i, 2i+1)`` of ``x [B, T, H, Dh]`` by ``t * w_i``.

    ``w_i = max_period ** (-2 i / Dh)`` computed as ``exp(i * -2 log(max_period) / Dh)`` in
    float32, exactly like the original, so angles at t ~ 300 agree to the last bit that
    matters. Positions start at 0 (no streaming offset).
    """
    _, length, _, dh = x.shape
    half = dh // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * (-math.log(max_period) * 2 / dh))
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs[None, :]  # [T, Dh/2]
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], half, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def context_mask(length: int, context: int | None) -> jax.Array:
    """Boolean ``[T, T]`` mask: query ``i`` may attend key ``j`` iff ``0 <= i - j < context``."""
    delta = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    mask = delta >= 0
    if context is not None:
        mask = mask & (delta < context)
    return mask


class TorchDense(nn.Module):
    """Bias-free Linear with kernel ``[in, out]`` (PyTorch ``[out, in]`` transposed)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., in] -> [..., features]``."""
        kernel = self.param(
            "kernel", torch_uniform_init(x.shape[-1]), (x.shape[-1], self.features), jnp.float32
        )
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class LayerScale(nn.Module):
    """Per-channel residual scale (``layer_scale_{1,2}.scale``), init ``init``."""

    init: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Scale the last axis channel-wise."""
        scale = self.param("scale", nn.initializers.constant(self.init), (x.shape[-1],))
        return x * scale.astype(self.dtype)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with a fused ``[q; k; v]`` projection and RoPE."""

    config: TransformerConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, D] -> [B, T, D]``."""
        cfg = self.config
        batch, length, dim = x.shape
        heads = cfg.num_heads
        dh = dim // heads
        qkv = TorchDense(3 * dim, dtype=self.dtype, name="in_proj")(x)
        # Output channels are ordered (p, h, d): [q heads..., k heads..., v heads...].
        qkv = qkv.reshape(batch, length, 3, heads, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = rope_interleaved(q, cfg.max_period)
        k = rope_interleaved(k, cfg.max_period)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / math.sqrt(dh)
        mask = context_mask(length, cfg.context)
        logits = jnp.where(mask[None, None], logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim)
        return TorchDense(dim, dtype=self.dtype, name="out_proj")(out)


class TransformerLayer(nn.Module):
    """Pre-norm block: ``x + ls1 * attn(LN1(x))`` then ``x + ls2 * FFN(LN2(x))``."""

    config: TransformerConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, D] -> [B, T, D]``."""
        cfg = self.config
        dim = x.shape[-1]

        def norm(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(
                epsilon=cfg.norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name=name
            )

        h = SelfAttention(cfg, dtype=self.dtype, name="self_attn")(norm("norm1")(x))
        x = x + LayerScale(cfg.layer_scale, dtype=self.dtype, name="layer_scale_1")(h)
        h = TorchDense(cfg.dim_feedforward, dtype=self.dtype, name="linear1")(norm("norm2")(x))
        h = nn.gelu(h, approximate=False)
        h = TorchDense(dim, dtype=self.dtype, name="linear2")(h)
        return x + LayerScale(cfg.layer_scale, dtype=self.dtype, name="layer_scale_2")(h)


class Transformer(nn.Module):
    """Stack of ``config.num_layers`` causal layers named ``layers_{l}``; no final norm."""

    config: TransformerConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, D] -> [B, T, D]``; each output frame sees at most ``context`` frames."""
        if x.shape[-1] != self.config.d_model:
            raise ValueError(f"transformer expects d_model={self.config.d_model}, got {x.shape}")
        x = x.astype(self.dtype)
        for layer in range(self.config.num_layers):
            x = TransformerLayer(self.config, dtype=self.dtype, name=f"layers_{layer}")(x)
        return x
