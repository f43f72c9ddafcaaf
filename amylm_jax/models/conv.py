"""Causal 1-D convolution primitives of the Mimi/Amy generator (docs/original.md §2.2, §4.4).

Everything here is channels-last (``[B, T, C]``). The two causal rules are:

* a convolution pads only on the left by ``P = (k - 1) * d + 1 - s`` samples (zeros, or the
  first frame repeated for ``pad_mode="replicate"``) and then runs a VALID convolution, so an
  input of ``T`` samples (a multiple of the stride) gives exactly ``T / s`` outputs;
* a transposed convolution computes the full output (``(T - 1) * s + k`` samples) and drops
  the last ``k - s`` samples, giving ``T * s`` outputs.

Kernels are stored in float32 whatever the compute ``dtype`` is, so a bf16 policy only changes
the arithmetic. The transposed convolution lives in one function
(:func:`conv_transpose1d`) with two interchangeable formulations, because XLA's input-dilated
convolution is slow on some GPUs while a polyphase (reshape) formulation is a plain
convolution followed by a reshape.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
_DIMS = ("NWC", "WIO", "NWC")


def torch_uniform_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv/Linear init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``kaiming_uniform_(a=sqrt(5))`` reduces to this bound for weights; biases use it directly.
    Used so that freshly initialised modules have the same scale as the original's.
    """
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def pad_for_conv1d(x: jax.Array, kernel: int, stride: int, padding_total: int = 0) -> jax.Array:
    """Right-pad ``x [B, N, ...]`` with zeros so the last window of a conv is complete.

    This is the padding applied to the raw audio before the encoder (``kernel = stride =
    frame_size``): ``N`` is rounded up to the next multiple of the frame size, so every
    12.5 Hz frame sees a whole window (docs/original.md §2.2). Axis 1 is the time axis.
    """
    length = x.shape[1]
    n_frames = (length - kernel + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel - padding_total)
    extra = max(ideal - length, 0)
    if extra == 0:
        return x
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, extra)
    return jnp.pad(x, pad)


def causal_pad(x: jax.Array, amount: int, pad_mode: str = "constant") -> jax.Array:
    """Left-pad ``x [B, T, C]`` by ``amount`` frames (zeros or repeated first frame)."""
    if amount <= 0:
        return x
    if pad_mode == "constant":
        return jnp.pad(x, ((0, 0), (amount, 0), (0, 0)))
    if pad_mode == "replicate":
        first = jnp.broadcast_to(x[:, :1], (x.shape[0], amount, x.shape[2]))
        return jnp.concatenate([first, x], axis=1)
    raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")


def causal_conv1d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    pad_mode: str = "constant",
) -> jax.Array:
    """Causal strided conv of ``x [B, T, I]`` with ``kernel [K, I/groups, O]`` (no bias).

    The output at step ``t`` depends only on inputs up to ``t * stride + stride - 1``.
    """
    k = kernel.shape[0]
    if x.shape[1] % stride != 0:
        raise ValueError(
            f"causal conv: input length {x.shape[1]} must be a multiple of the stride {stride}"
        )
    amount = (k - 1) * dilation + 1 - stride
    x = causal_pad(x, amount, pad_mode)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride,),
        padding="VALID",
        rhs_dilation=(dilation,),
        dimension_numbers=_DIMS,
        feature_group_count=groups,
    )


TransposeMethod = Literal["dilated", "polyphase"]


def conv_transpose1d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    groups: int = 1,
    method: TransposeMethod = "dilated",
) -> jax.Array:
    """Causal transposed conv of ``x [B, T, I]``: full output with the last ``K - S`` dropped.

    ``kernel`` is in *scatter* form, i.e. not flipped: input frame ``t`` adds
    ``x[t] @ kernel[k]`` to output sample ``t * stride + k``. With ``groups == 1`` it is
    ``[K, I, O]`` (PyTorch's ``ConvTranspose1d`` weight ``[I, O, K]`` transposed); depthwise
    (``groups == I == O``) it is ``[K, 1, C]`` (PyTorch's ``[C, 1, K]`` reversed), the lax
    grouped-kernel layout. Those two cases are all Mimi needs.

    ``method="dilated"`` is XLA's input-dilated convolution with the flipped kernel;
    ``method="polyphase"`` splits the kernel into ``stride`` phases, runs one ordinary causal
    conv with ``stride * O`` outputs and interleaves the phases by a reshape. Both give
    ``[B, T * stride, O]``.
    """
    k, _, out_per_group = kernel.shape  # out_per_group: all outputs for a depthwise kernel
    if k < stride:
        raise ValueError(f"transposed conv needs kernel_size >= stride, got {k} < {stride}")
    batch, length, channels = x.shape
    if method == "dilated":
        # Padding (K-1, S-1) keeps exactly the first T*S samples of the full output.
        return jax.lax.conv_general_dilated(
            x,
            jnp.flip(kernel, axis=0),
            window_strides=(1,),
            padding=[(k - 1, stride - 1)],
            lhs_dilation=(stride,),
            dimension_numbers=_DIMS,
            feature_group_count=groups,
        )
    if method != "polyphase":
        raise ValueError(f"method must be 'dilated' or 'polyphase', got {method!r}")
    taps = -(-k // stride)  # ceil(K / S)
    if taps * stride != k:
        kernel = jnp.pad(kernel, ((0, taps * stride - k), (0, 0), (0, 0)))
    # y[t*S + r] = sum_j x[t - j] @ kernel[j*S + r]; window position w sees x[t - (taps-1) + w].
    phases = kernel.reshape(taps, stride, kernel.shape[1], out_per_group)[::-1]
    if groups == 1:
        # [taps, I, S, O] -> [taps, I, S*O]: output channel r*O + o.
        rhs = jnp.transpose(phases, (0, 2, 1, 3)).reshape(taps, kernel.shape[1], -1)
        y = causal_conv1d(x, rhs)
        return y.reshape(batch, length * stride, out_per_group)
    if groups != channels or kernel.shape[1] != 1 or out_per_group != channels:
        raise ValueError("polyphase transposed conv supports groups == 1 or depthwise only")
    # Depthwise: [taps, S, 1, C] -> [taps, 1, C*S]: output channel c*S + r (grouped by c).
    rhs = jnp.transpose(phases, (0, 2, 3, 1)).reshape(taps, 1, channels * stride)
    y = causal_conv1d(x, rhs, groups=channels)
    y = y.reshape(batch, length, channels, stride).transpose(0, 1, 3, 2)
    return y.reshape(batch, length * stride, channels)


class CausalConv1d(nn.Module):
    """Causal Conv1d (``StreamingConv1d`` in non-streaming use), channels-last.

    Params: ``kernel [K, I/groups, O]`` (PyTorch ``[O, I/groups, K]`` transposed, not flipped)
    and ``bias [O]``; both float32. ``dtype`` is the compute dtype.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    use_bias: bool = True
    pad_mode: str = "constant"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, I] -> [B, T / stride, features]``; ``T`` must be a multiple of the stride."""
        in_per_group = x.shape[-1] // self.groups
        fan_in = in_per_group * self.kernel_size
        kernel = self.param(
            "kernel",
            torch_uniform_init(fan_in),
            (self.kernel_size, in_per_group, self.features),
            jnp.float32,
        )
        y = causal_conv1d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            pad_mode=self.pad_mode,
        )
        if self.use_bias:
            bias = self.param("bias", torch_uniform_init(fan_in), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class CausalConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d (``StreamingConvTranspose1d``), channels-last.

    Params: ``kernel [K, I, O]`` (or ``[K, 1, C]`` when ``depthwise``) in scatter form, i.e.
    PyTorch's ``[I, O, K]`` weight transposed without a flip (see :func:`conv_transpose1d`),
    and ``bias [O]``. ``method`` picks the formulation; both are numerically equivalent.
    """

    features: int
    kernel_size: int
    stride: int
    use_bias: bool = True
    depthwise: bool = False
    method: TransposeMethod = "dilated"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, I] -> [B, T * stride, features]``."""
        channels = x.shape[-1]
        if self.depthwise:
            if self.features != channels:
                raise ValueError(f"depthwise convT needs features == {channels}")
            shape, groups = (self.kernel_size, 1, channels), channels
            fan_in = self.kernel_size
        else:
            shape, groups = (self.kernel_size, channels, self.features), 1
            # PyTorch computes a ConvTranspose fan-in from its weight dim 1 (= out channels).
            fan_in = self.features * self.kernel_size
        kernel = self.param("kernel", torch_uniform_init(fan_in), shape, jnp.float32)
        y = conv_transpose1d(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            self.stride,
            groups=groups,
            method=self.method,
        )
        if self.use_bias:
            bias = self.param("bias", torch_uniform_init(fan_in), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
