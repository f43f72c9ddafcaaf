"""Learnt frame-rate conversion between the encoder rate (25 Hz) and the codec rate (12.5 Hz).

docs/original.md §2.6: a causal strided conv (kernel ``2 * stride``, no bias, *replicate* left
padding)
downsamples; a causal transposed conv (kernel ``2 * stride``, no bias, depthwise as in
Kyutai's released checkpoint) upsamples. The kernel is a direct parameter of each module
(``downsample/kernel``, ``upsample/kernel``) to match the variable-tree contract.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from amylm_jax.models.conv import (
    TransposeMethod,
    causal_conv1d,
    conv_transpose1d,
    torch_uniform_init,
)

Dtype = Any


class ConvDownsample1d(nn.Module):
    """``[B, T, C] -> [B, T / stride, C]``; kernel ``[2 * stride, C, C]``."""

    stride: int
    dimension: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Downsample; ``T`` must be a multiple of ``stride``."""
        k = 2 * self.stride
        kernel = self.param(
            "kernel",
            torch_uniform_init(self.dimension * k),
            (k, self.dimension, self.dimension),
            jnp.float32,
        )
        return causal_conv1d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            stride=self.stride,
            pad_mode="replicate",
        )


class ConvTrUpsample1d(nn.Module):
    """``[B, T, C] -> [B, T * stride, C]``; kernel ``[2 * stride, 1, C]`` when depthwise.

    ``depthwise=False`` gives a full ``[2 * stride, C, C]`` kernel (Kyutai's intended but
    unreleased variant).
    """

    stride: int
    dimension: int
    depthwise: bool = True
    method: TransposeMethod = "dilated"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Upsample along time."""
        k = 2 * self.stride
        if self.depthwise:
            shape, groups, fan_in = (k, 1, self.dimension), self.dimension, k
        else:
            shape, groups, fan_in = (k, self.dimension, self.dimension), 1, self.dimension * k
        kernel = self.param("kernel", torch_uniform_init(fan_in), shape, jnp.float32)
        return conv_transpose1d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            self.stride,
            groups=groups,
            method=self.method,
        )
