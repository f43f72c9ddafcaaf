"""Distillation heads: projections of the 512-d quantizer latent onto teacher features.

The original trainer projects ``[B, T, 512]`` latents to the WavLM (1024) and LLM (2048)
feature spaces before a cosine loss (docs/original.md §6.4). Its experiments swapped the projection
architecture (docs/original.md §10), so one module with a ``kind`` switch covers all of them:

* ``"linear"`` (REF): ``Linear(in, out)`` with bias;
* ``"mlp"`` (§10.1): ``Linear(in, 2 in) -> ReLU -> Linear(2 in, out)``;
* ``"mlp_v2"`` (§10.3): ``Linear(in, in) -> GELU -> LayerNorm(in) -> Linear(in, out)``;
* ``"conv"`` (§10.2): ``Conv1d(in, 2 out, k=5, pad=2) -> GELU -> Conv1d(2 out, out, k=1)``
  (symmetric padding, i.e. it looks two frames into the future).

Submodules are named ``layers_{i}`` with ``i`` the index in the PyTorch ``nn.Sequential``, so
the key map to a PyTorch module called ``<prefix>`` (``wavlm_proj``, ``llm_proj``) is:

==========  ===========================================  =========================================
kind        Flax params                                  PyTorch keys
==========  ===========================================  =========================================
linear      ``layers_0/{kernel [in,out], bias}``         ``<prefix>.{weight [out,in], bias}``
mlp         ``layers_0``, ``layers_2`` (Dense)           ``<prefix>.0.*``, ``<prefix>.2.*``
mlp_v2      ``layers_0``, ``layers_3`` (Dense),          ``<prefix>.0.*``, ``<prefix>.3.*``,
            ``layers_2/{scale, bias}`` (LayerNorm)       ``<prefix>.2.{weight, bias}``
conv        ``layers_0``, ``layers_2``                   ``<prefix>.0.*``, ``<prefix>.2.*``
            ``kernel [k, in, out]``                      ``weight [out, in, k]``
==========  ===========================================  =========================================

:func:`head_to_torch` / :func:`head_from_torch` implement that map. All layers use PyTorch's
default initialisation (weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, LayerNorm
ones/zeros) so a fresh head starts at the original's scale.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from amylm_jax.models.conv import torch_uniform_init

Dtype = Any
HeadKind = Literal["linear", "mlp", "mlp_v2", "conv"]
HEAD_KINDS: tuple[str, ...] = ("linear", "mlp", "mlp_v2", "conv")


class TorchDense(nn.Module):
    """``nn.Linear`` with PyTorch init; params float32, arithmetic in ``dtype``."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        init = torch_uniform_init(fan_in)
        kernel = self.param("kernel", init, (fan_in, self.features))
        bias = self.param("bias", init, (self.features,))
        y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class TorchConv1d(nn.Module):
    """``nn.Conv1d`` (stride 1, symmetric zero padding) on channels-last ``[B, T, C]``."""

    features: int
    kernel_size: int
    padding: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * self.kernel_size
        init = torch_uniform_init(fan_in)
        kernel = self.param("kernel", init, (self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", init, (self.features,))
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(1,),
            padding=[(self.padding, self.padding)],
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + bias.astype(self.dtype)


class DistillHead(nn.Module):
    """Projection ``[B, T, in] -> [B, T, out_dim]`` (float32 output) for a distillation loss.

    ``dtype`` is the compute dtype; parameters stay float32 and the output is float32 because
    the cosine loss is computed in float32.
    """

    out_dim: int
    kind: HeadKind = "linear"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        d_in = x_BxTxD.shape[-1]
        x = x_BxTxD.astype(self.dtype)
        if self.kind == "linear":
            y = TorchDense(self.out_dim, self.dtype, name="layers_0")(x)
        elif self.kind == "mlp":
            h = nn.relu(TorchDense(2 * d_in, self.dtype, name="layers_0")(x))
            y = TorchDense(self.out_dim, self.dtype, name="layers_2")(h)
        elif self.kind == "mlp_v2":
            h = nn.gelu(TorchDense(d_in, self.dtype, name="layers_0")(x), approximate=False)
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="layers_2")(h)
            y = TorchDense(self.out_dim, self.dtype, name="layers_3")(h)
        elif self.kind == "conv":
            h = TorchConv1d(2 * self.out_dim, 5, padding=2, dtype=self.dtype, name="layers_0")(x)
            h = nn.gelu(h, approximate=False)
            y = TorchConv1d(self.out_dim, 1, dtype=self.dtype, name="layers_2")(h)
        else:
            raise ValueError(f"unknown head kind {self.kind!r}; expected one of {HEAD_KINDS}")
        return y.astype(jnp.float32)


def _torch_index(kind: str, flax_name: str) -> str:
    return "" if kind == "linear" else flax_name.split("_")[1] + "."


def head_to_torch(params: dict, kind: str, prefix: str) -> dict[str, np.ndarray]:
    """PyTorch state-dict entries of a head (``params`` = its ``params`` collection subtree)."""
    out: dict[str, np.ndarray] = {}
    for name, leaf in params.items():
        key = f"{prefix}.{_torch_index(kind, name)}"
        if "kernel" in leaf:
            k = _to_numpy(leaf["kernel"])
            w = k.T if k.ndim == 2 else np.transpose(k, (2, 1, 0))
        else:  # LayerNorm
            w = _to_numpy(leaf["scale"])
        out[key + "weight"] = np.array(w, order="C")  # writable, contiguous copies
        out[key + "bias"] = np.array(_to_numpy(leaf["bias"]))
    return out


def head_from_torch(state: dict, kind: str, prefix: str) -> dict:
    """Inverse of :func:`head_to_torch`: Flax params of a head from PyTorch state-dict entries."""
    names = {
        "linear": ("layers_0",),
        "mlp": ("layers_0", "layers_2"),
        "mlp_v2": ("layers_0", "layers_2", "layers_3"),
        "conv": ("layers_0", "layers_2"),
    }[kind]
    params: dict = {}
    for name in names:
        key = f"{prefix}.{_torch_index(kind, name)}"
        w = _to_numpy(state[key + "weight"])
        b = _to_numpy(state[key + "bias"])
        if kind == "mlp_v2" and name == "layers_2":
            params[name] = {"scale": w, "bias": b}
        else:
            params[name] = {"kernel": w.T if w.ndim == 2 else np.transpose(w, (2, 1, 0)), "bias": b}
    return params


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)
