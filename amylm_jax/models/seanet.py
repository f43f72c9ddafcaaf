"""SEANet convolutional encoder and decoder of Mimi (docs/original.md §2.3-2.4), channels-last.

Submodules are named ``model_{i}`` after their index in the original ``nn.Sequential`` (ELUs
take indices too but hold no parameters), and a residual block's two convolutions are
``block_1`` and ``block_3``, so the PyTorch key map is a rename, not a table.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from amylm_jax.config import SEANetConfig
from amylm_jax.models.conv import CausalConv1d, CausalConvTranspose1d, TransposeMethod

Dtype = Any


def elu(x: jax.Array) -> jax.Array:
    """ELU with alpha 1, the only activation of the generator."""
    return nn.elu(x, alpha=1.0)


class SEANetResnetBlock(nn.Module):
    """``y = x + conv1x1(ELU(conv_k(ELU(x))))`` with an identity shortcut (true skip).

    ``conv_k`` (``block_1``) maps ``C -> C / compress`` with kernel ``kernel_size`` and
    ``dilation``; ``conv1x1`` (``block_3``) maps back to ``C``.
    """

    dim: int
    kernel_size: int
    dilation: int
    compress: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, C] -> [B, T, C]``."""
        hidden = self.dim // self.compress
        h = CausalConv1d(
            hidden, self.kernel_size, dilation=self.dilation, dtype=self.dtype, name="block_1"
        )(elu(x))
        h = CausalConv1d(self.dim, 1, dtype=self.dtype, name="block_3")(elu(h))
        return x.astype(h.dtype) + h


class SEANetEncoder(nn.Module):
    """Audio ``[B, N, channels]`` -> latent ``[B, N / hop, dimension]`` at the encoder rate.

    ``N`` must be a multiple of ``config.hop_length`` (the codec pads the audio to whole
    12.5 Hz frames first). Ratios are applied in reverse (4, 5, 6, 8 for Mimi).
    """

    config: SEANetConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Encode; see the class docstring for shapes."""
        cfg = self.config
        if x.shape[1] % cfg.hop_length != 0:
            raise ValueError(
                f"SEANet encoder: {x.shape[1]} samples is not a multiple of the hop "
                f"{cfg.hop_length}; pad with pad_for_conv1d first"
            )
        idx = 0
        mult = 1
        x = CausalConv1d(
            mult * cfg.n_filters, cfg.kernel_size, dtype=self.dtype, name=f"model_{idx}"
        )(x)
        idx += 1
        for ratio in reversed(cfg.ratios):
            for j in range(cfg.n_residual_layers):
                x = SEANetResnetBlock(
                    mult * cfg.n_filters,
                    cfg.residual_kernel_size,
                    cfg.dilation_base**j,
                    cfg.compress,
                    dtype=self.dtype,
                    name=f"model_{idx}",
                )(x)
                idx += 1
            x = elu(x)
            idx += 1
            x = CausalConv1d(
                mult * cfg.n_filters * 2,
                ratio * 2,
                stride=ratio,
                dtype=self.dtype,
                name=f"model_{idx}",
            )(x)
            idx += 1
            mult *= 2
        x = elu(x)
        idx += 1
        return CausalConv1d(
            cfg.dimension, cfg.last_kernel_size, dtype=self.dtype, name=f"model_{idx}"
        )(x)


class SEANetDecoder(nn.Module):
    """Latent ``[B, T, dimension]`` -> audio ``[B, T * hop, channels]``, no final activation.

    ``transpose_method`` selects the transposed-conv formulation (see ``conv_transpose1d``).
    """

    config: SEANetConfig
    dtype: Dtype = jnp.float32
    transpose_method: TransposeMethod = "dilated"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Decode; see the class docstring for shapes."""
        cfg = self.config
        idx = 0
        mult = 2 ** len(cfg.ratios)
        x = CausalConv1d(
            mult * cfg.n_filters, cfg.kernel_size, dtype=self.dtype, name=f"model_{idx}"
        )(x)
        idx += 1
        for ratio in cfg.ratios:
            x = elu(x)
            idx += 1
            x = CausalConvTranspose1d(
                mult * cfg.n_filters // 2,
                ratio * 2,
                ratio,
                method=self.transpose_method,
                dtype=self.dtype,
                name=f"model_{idx}",
            )(x)
            idx += 1
            for j in range(cfg.n_residual_layers):
                x = SEANetResnetBlock(
                    mult * cfg.n_filters // 2,
                    cfg.residual_kernel_size,
                    cfg.dilation_base**j,
                    cfg.compress,
                    dtype=self.dtype,
                    name=f"model_{idx}",
                )(x)
                idx += 1
            mult //= 2
        x = elu(x)
        idx += 1
        return CausalConv1d(
            cfg.channels, cfg.last_kernel_size, dtype=self.dtype, name=f"model_{idx}"
        )(x)
