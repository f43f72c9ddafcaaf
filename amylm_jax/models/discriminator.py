"""Multi-scale STFT discriminator (audiocraft ``MultiScaleSTFTDiscriminator``, docs/original.md §5).

Each sub-discriminator takes the complex STFT of the waveform (float32, ``center=False``,
periodic Hann, window normalisation), stacks ``[real, imag]`` as two channels of an image
``[B, M frames, F bins, 2]`` (channels-last; height = time, width = frequency) and runs five
2-D convolutions with LeakyReLU(0.3) plus a post convolution giving the logits.

Weight norm (docs/original.md §4.5) is reproduced as in PyTorch: the first conv is a plain conv; the
others store ``kernel_v`` (HWIO ``[kh, kw, in, out]``) and ``kernel_g`` (``[out]``) and use
``W = g * v / ||v||`` with the norm per output channel over ``(kh, kw, in)``; ``g`` is
initialised to ``||v||`` so ``W = v`` at init. The PyTorch key map lives in
``amylm_jax.export.disc_layout``.

``dtype`` is the compute dtype of the convolutions (bf16 policy); the STFT is always
float32 and logits / feature maps are returned as float32. The conv call is the single
function :func:`conv2d`; ``conv_method`` picks its formulation per backend:

- ``"lax"``: one ``lax.conv_general_dilated`` with the frequency stride in ``window_strides``.
  Its input gradient is an input-dilated convolution, which XLA:CPU runs on a slow generic
  path (4-5x the forward for the ``(3, 9)``, stride ``(1, 2)`` layer; benchmarks/RESULTS.md).
- ``"s2d"`` (space-to-depth): the frequency axis is folded by the stride into the channels,
  ``[B, M, F, C] -> [B, M, F / s, s C]``, and the kernel's frequency taps are regrouped the same
  way (zero taps pad ``k_w`` to a multiple of ``s``), giving a stride-1 convolution whose
  input gradient is a plain convolution. Used for the input gradient only (a ``custom_vjp``):
  the forward and the kernel gradient stay the strided conv's, which XLA:CPU runs faster.
  The same numbers (sums of the same products); on CPU the c1 layer's backward runs ~2.8x
  faster, the whole discriminator's forward + backward ~1.5x (benchmarks/RESULTS.md).
- ``"s2d_full"``: the space-to-depth form for the forward and both gradients. On the TPU
  compiler the strided conv's kernel gradient is a per-tap tensor padded from a few channels
  to 128 lanes; the stride-1 form's is not (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from amylm_jax.losses.spectral import stft
from amylm_jax.models.conv import torch_uniform_init

Dtype = Any

# (kernel (t, f), stride (t, f), dilation (t, f), weight norm) for c0..c4 and post
# (docs/original.md §5.1).
LAYERS: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int], bool], ...] = (
    ((3, 9), (1, 1), (1, 1), False),
    ((3, 9), (1, 2), (1, 1), True),
    ((3, 9), (1, 2), (2, 1), True),
    ((3, 9), (1, 2), (4, 1), True),
    ((3, 3), (1, 1), (1, 1), True),
)
_POST = ((3, 3), (1, 1), (1, 1), True)


def conv2d(
    x_BxHxWxC: jax.Array,
    kernel_HWIO: jax.Array,
    bias: jax.Array,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: tuple[int, int],
    dtype: Dtype,
) -> jax.Array:
    """``nn.Conv2d`` with symmetric zero padding, channels-last, computed in ``dtype``."""
    y = jax.lax.conv_general_dilated(
        x_BxHxWxC.astype(dtype),
        kernel_HWIO.astype(dtype),
        window_strides=stride,
        padding=[(padding[0], padding[0]), (padding[1], padding[1])],
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + bias.astype(dtype)


def _space_to_depth_conv(
    x_BxHxWxC: jax.Array,
    kernel_HWIO: jax.Array,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: tuple[int, int],
    dtype: Dtype,
) -> jax.Array:
    """The width-strided conv as a stride-1 conv over ``[B, H, W / s, s C]`` (no bias)."""
    s = stride[1]
    kh, kw, c_in, c_out = kernel_HWIO.shape
    b, h, w, _ = x_BxHxWxC.shape
    pw = padding[1]
    w_out = (w + 2 * pw - kw) // s + 1
    kw_s = -(-kw // s)  # taps per phase
    width = s * (w_out - 1 + kw_s)  # padded input positions the output reads (a multiple of s)
    x = jnp.pad(x_BxHxWxC.astype(dtype), ((0, 0), (0, 0), (pw, max(0, width - w - pw)), (0, 0)))
    x = x[:, :, :width].reshape(b, h, width // s, s * c_in)
    k = jnp.pad(kernel_HWIO.astype(dtype), ((0, 0), (0, s * kw_s - kw), (0, 0), (0, 0)))
    k = k.reshape(kh, kw_s, s * c_in, c_out)
    zero = jnp.zeros((), dtype)
    return conv2d(x, k, zero, (stride[0], 1), (dilation[0], 1), (padding[0], 0), dtype)


def _strided_conv(x, kernel, stride, dilation, padding, dtype):
    zero = jnp.zeros((), dtype)
    return conv2d(x, kernel, zero, stride, dilation, padding, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _s2d_conv(x, kernel, stride, dilation, padding, dtype):
    return _strided_conv(x, kernel, stride, dilation, padding, dtype)


def _s2d_conv_fwd(x, kernel, stride, dilation, padding, dtype):
    return _strided_conv(x, kernel, stride, dilation, padding, dtype), (x, kernel)


def _s2d_conv_bwd(stride, dilation, padding, dtype, residuals, g):
    x, kernel = residuals
    # Input gradient through the space-to-depth form: plain stride-1 convolutions instead of
    # the input-dilated one XLA:CPU runs slowly. Kernel gradient of the strided conv: the
    # same values as the space-to-depth form's, about 15 % faster there.
    (dx,) = jax.vjp(
        lambda x_: _space_to_depth_conv(x_, kernel, stride, dilation, padding, dtype), x
    )[1](g)
    (dk,) = jax.vjp(lambda k_: _strided_conv(x, k_, stride, dilation, padding, dtype), kernel)[1](g)
    return dx, dk


_s2d_conv.defvjp(_s2d_conv_fwd, _s2d_conv_bwd)


def _width_strided(conv, x, kernel, bias, stride, dilation, padding, dtype):
    """``conv`` (a space-to-depth form, no bias) for a frequency-strided layer plus the bias;
    the plain :func:`conv2d` for a layer without frequency stride."""
    if stride[1] == 1:
        return conv2d(x, kernel, bias, stride, dilation, padding, dtype)
    if dilation[1] != 1:
        raise ValueError(f"space-to-depth needs frequency dilation 1, got {dilation[1]}")
    y = conv(x, kernel, tuple(stride), tuple(dilation), tuple(padding), dtype)
    return y + bias.astype(dtype)


def conv2d_s2d(
    x_BxHxWxC: jax.Array,
    kernel_HWIO: jax.Array,
    bias: jax.Array,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: tuple[int, int],
    dtype: Dtype,
) -> jax.Array:
    """:func:`conv2d` whose input gradient uses space-to-depth (see the module docstring).

    The forward and the kernel gradient are those of the strided conv (fastest on XLA:CPU);
    only the input gradient takes the space-to-depth form. Requires ``dilation[1] == 1``; the
    height (time) stride and dilation stay in the conv. Reverse-mode only (``custom_vjp``).
    """
    return _width_strided(_s2d_conv, x_BxHxWxC, kernel_HWIO, bias, stride, dilation, padding, dtype)


def conv2d_s2d_full(
    x_BxHxWxC: jax.Array,
    kernel_HWIO: jax.Array,
    bias: jax.Array,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    padding: tuple[int, int],
    dtype: Dtype,
) -> jax.Array:
    """:func:`conv2d` computed entirely in the space-to-depth form: forward, input gradient and
    kernel gradient (plain automatic differentiation of a stride-1 conv).

    For the TPU compiler: the kernel gradient of the frequency-strided conv becomes, there, a
    per-tap tensor whose minor dimension is the layer's few channels, padded to 128 lanes
    (110 MiB of temp for one 1 s example at 8 filters, and sliced prefetches), while the
    stride-1 form needs no temp at all (benchmarks/RESULTS.md). Requires ``dilation[1] == 1``.
    """
    return _width_strided(
        _space_to_depth_conv, x_BxHxWxC, kernel_HWIO, bias, stride, dilation, padding, dtype
    )


#: ``conv_method`` values and their functions.
CONV_FUNCTIONS = {"lax": "conv2d", "s2d": "conv2d_s2d", "s2d_full": "conv2d_s2d_full"}
CONV_METHODS = tuple(CONV_FUNCTIONS)


def weight_norm_kernel(v_HWIO: jax.Array, g_O: jax.Array) -> jax.Array:
    """Effective kernel ``g * v / ||v||``, norm per output channel over ``(kh, kw, in)``.

    Same as ``torch._weight_norm(v, g, dim=0)`` (no epsilon), in float32.
    """
    v = v_HWIO.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(v * v, axis=(0, 1, 2)))
    return v * (g_O.astype(jnp.float32) / norm)


class STFTConv(nn.Module):
    """One 2-D conv of a sub-discriminator, optionally weight-normed, PyTorch default init."""

    features: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    weight_norm: bool = True
    dtype: Dtype = jnp.float32
    conv_method: str = "lax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.conv_method not in CONV_METHODS:
            raise ValueError(f"conv_method must be one of {CONV_METHODS}")
        kh, kw = self.kernel_size
        c_in = x.shape[-1]
        init = torch_uniform_init(c_in * kh * kw)
        shape = (kh, kw, c_in, self.features)
        if self.weight_norm:
            v = self.param("kernel_v", init, shape)
            g = self.param(
                "kernel_g", lambda _, v: jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2))), v
            )
            kernel = weight_norm_kernel(v, g)
        else:
            kernel = self.param("kernel", init, shape)
        bias = self.param("bias", init, (self.features,))
        padding = tuple(
            ((k - 1) * d) // 2 for k, d in zip(self.kernel_size, self.dilation, strict=True)
        )
        # Looked up at call time so a benchmark can swap the module-level functions.
        conv = globals()[CONV_FUNCTIONS[self.conv_method]]
        return conv(x, kernel, bias, self.stride, self.dilation, padding, self.dtype)


class DiscriminatorSTFT(nn.Module):
    """One STFT sub-discriminator: ``[B, N] -> (logits [B, M, F', 1], 5 fmaps [B, M, F_l, C])``."""

    filters: int = 32
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    negative_slope: float = 0.3
    normalized: bool = True
    dtype: Dtype = jnp.float32
    conv_method: str = "lax"
    # The conv stack before ``conv_post`` (the original's; a benchmark compiles prefixes of it).
    layers: tuple = LAYERS

    @nn.compact
    def __call__(self, audio_BxN: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        spec = stft(audio_BxN, self.n_fft, self.hop_length, self.win_length, self.normalized)
        z = jnp.stack([jnp.real(spec), jnp.imag(spec)], axis=-1)  # [B, M, F, 2]
        fmaps = []
        for i, (kernel, stride, dilation, wn) in enumerate(self.layers):
            z = STFTConv(
                self.filters,
                kernel,
                stride,
                dilation,
                wn,
                self.dtype,
                self.conv_method,
                name=f"convs_{i}",
            )(z)
            z = nn.leaky_relu(z, self.negative_slope)
            fmaps.append(z.astype(jnp.float32))
        kernel, stride, dilation, wn = _POST
        logits = STFTConv(
            1, kernel, stride, dilation, wn, self.dtype, self.conv_method, name="conv_post"
        )(z)
        return logits.astype(jnp.float32), fmaps


class MultiScaleSTFTDiscriminator(nn.Module):
    """Five STFT sub-discriminators ``discs_{k}`` in ``n_ffts`` order (docs/original.md §5.2).

    Returns ``(logits, fmaps)``: ``logits[k]`` is ``[B, M_k, F'_k, 1]`` and ``fmaps[k]`` a list
    of five ``[B, M_k, F_{k,l}, filters]`` arrays, all float32.
    """

    filters: int = 32
    n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128)
    hop_lengths: Sequence[int] = (256, 512, 128, 64, 32)
    win_lengths: Sequence[int] = (1024, 2048, 512, 256, 128)
    negative_slope: float = 0.3
    dtype: Dtype = jnp.float32
    conv_method: str = "lax"

    @nn.compact
    def __call__(self, audio_BxN: jax.Array) -> tuple[list[jax.Array], list[list[jax.Array]]]:
        if not len(self.n_ffts) == len(self.hop_lengths) == len(self.win_lengths):
            raise ValueError("n_ffts, hop_lengths and win_lengths must have the same length")
        logits, fmaps = [], []
        for k, (n_fft, hop, win) in enumerate(
            zip(self.n_ffts, self.hop_lengths, self.win_lengths, strict=True)
        ):
            lg, fm = DiscriminatorSTFT(
                self.filters,
                n_fft,
                hop,
                win,
                self.negative_slope,
                dtype=self.dtype,
                conv_method=self.conv_method,
                name=f"discs_{k}",
            )(audio_BxN)
            logits.append(lg)
            fmaps.append(fm)
        return logits, fmaps
