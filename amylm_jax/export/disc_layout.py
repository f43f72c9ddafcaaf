"""PyTorch key map of the MS-STFT discriminator (audiocraft naming, docs/original.md §4.5, §5).

The original's discriminator is audiocraft's ``MultiScaleSTFTDiscriminator`` whose
``NormConv2d`` wraps an ``nn.Conv2d`` in ``.conv`` and applies the legacy
``torch.nn.utils.weight_norm``. Its state dict therefore maps to the Flax ``params`` collection as:

* ``discriminators.{k}.convs.0.conv.weight`` ``[O, I, kh, kw]`` ->
  ``discs_{k}/convs_0/kernel`` (HWIO); ``...convs.0.conv.bias`` -> ``discs_{k}/convs_0/bias``
  (the first conv is plain);
* ``discriminators.{k}.convs.{i}.conv.weight_g`` ``[O, 1, 1, 1]`` ->
  ``discs_{k}/convs_{i}/kernel_g`` ``[O]`` (i = 1..4);
* ``discriminators.{k}.convs.{i}.conv.weight_v`` ``[O, I, kh, kw]`` ->
  ``discs_{k}/convs_{i}/kernel_v`` (HWIO); ``...conv.bias`` -> ``.../bias``;
* ``discriminators.{k}.conv_post.conv.{weight_g, weight_v, bias}`` ->
  ``discs_{k}/conv_post/{kernel_g, kernel_v, bias}``.

HWIO ``[kh, kw, in, out]`` = PyTorch ``[out, in, kh, kw]`` transposed by ``(2, 3, 1, 0)``.
:func:`disc_from_torch` also accepts the newer ``torch.nn.utils.parametrizations.weight_norm``
names (``parametrizations.weight.original0`` = g, ``original1`` = v).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

PREFIX = "discriminators"
_PARAMETRIZED = {"original0": "weight_g", "original1": "weight_v"}


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _torch_weight(kernel_HWIO: np.ndarray) -> np.ndarray:
    return np.array(np.transpose(kernel_HWIO, (3, 2, 0, 1)), order="C")


def _flax_kernel(weight_OIHW: np.ndarray) -> np.ndarray:
    return np.array(np.transpose(weight_OIHW, (2, 3, 1, 0)), order="C")


def _layer_key(k: int, layer: str) -> str:
    if layer == "conv_post":
        return f"{PREFIX}.{k}.conv_post.conv"
    return f"{PREFIX}.{k}.convs.{layer.split('_')[1]}.conv"


def disc_to_torch(params: dict) -> dict[str, np.ndarray]:
    """PyTorch state dict (numpy values) of discriminator params.

    ``params`` is either the variables dict ``{"params": ...}`` or its ``params`` subtree.
    """
    if set(params) == {"params"}:
        params = params["params"]
    out: dict[str, np.ndarray] = {}
    for disc_name, disc in params.items():
        k = int(disc_name.split("_")[1])
        for layer, leaf in disc.items():
            key = _layer_key(k, layer)
            if "kernel" in leaf:
                out[f"{key}.weight"] = _torch_weight(_to_numpy(leaf["kernel"]))
            else:
                g = _to_numpy(leaf["kernel_g"])
                out[f"{key}.weight_g"] = g.reshape(-1, 1, 1, 1).copy()
                out[f"{key}.weight_v"] = _torch_weight(_to_numpy(leaf["kernel_v"]))
            out[f"{key}.bias"] = _to_numpy(leaf["bias"]).copy()
    return out


_KEY = re.compile(
    rf"^{PREFIX}\.(\d+)\.(?:convs\.(\d+)|(conv_post))\.conv\."
    r"(weight|bias|weight_g|weight_v|parametrizations\.weight\.(original0|original1))$"
)


def disc_from_torch(state: dict[str, Any]) -> dict:
    """Flax ``params`` subtree from a PyTorch discriminator state dict (inverse of the above).

    Keys outside ``discriminators.*`` are ignored, so a whole trainer checkpoint can be passed;
    unrecognised keys under that prefix raise.
    """
    params: dict = {}
    for key, value in state.items():
        if not key.startswith(PREFIX + "."):
            continue
        m = _KEY.match(key)
        if m is None:
            raise KeyError(f"unexpected discriminator key {key!r}")
        k, conv_idx, post, name, param_name = m.groups()
        layer = "conv_post" if post else f"convs_{conv_idx}"
        if param_name is not None:
            name = _PARAMETRIZED[param_name]
        arr = _to_numpy(value)
        leaf = params.setdefault(f"discs_{k}", {}).setdefault(layer, {})
        if name == "weight":
            leaf["kernel"] = _flax_kernel(arr)
        elif name == "weight_g":
            leaf["kernel_g"] = arr.reshape(-1).copy()
        elif name == "weight_v":
            leaf["kernel_v"] = _flax_kernel(arr)
        else:
            leaf["bias"] = arr.copy()
    if not params:
        raise KeyError(f"no '{PREFIX}.*' keys in the state dict")
    return params
