"""Import PyTorch Mimi/Amy weights into the Flax variable tree, and export them back.

docs/original.md §4: a Kyutai Mimi file has 32 codebook slots (318 tensors); Amy has 33 (321
tensors),
the extra one being ``rvq_first`` layer 1 (prosody). Loading a Kyutai file into Amy leaves
exactly that slot's three buffers missing; they get the fresh-codebook defaults and are
k-means initialised by the first training step. The original silently turned a missing
path into a Hugging Face download (docs/defects.md, D8); here a missing path is an error.

The variable tree is ``{"params": {...}, "codebooks": {...}}`` as in docs/CONTRACTS.md; every
array is a numpy array (float32, ``countdown`` int32) so callers choose device placement.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from safetensors.numpy import load_file

from amylm_jax import paths
from amylm_jax.config import CodecConfig
from amylm_jax.export.torch_layout import (
    TensorRule,
    is_prosody_key,
    key_rules,
    legacy_rename,
    to_flax,
    to_torch,
)

Variables = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """PyTorch keys the config expects but the file lacks, and file keys nobody uses."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    def __str__(self) -> str:
        return f"missing={list(self.missing)} unexpected={list(self.unexpected)}"


def load_torch_state(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file or a PyTorch/Lightning checkpoint into numpy arrays.

    Floating tensors come back as float32 (bf16 files included; the original also casts on
    copy). ``.ckpt``/``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``
    unless ``allow_pickle`` (only for checkpoints you trust, e.g. a Lightning file whose
    hyper-parameters hold custom objects); their ``state_dict`` (Lightning) or ``model``
    (moshi) entry is used when present. Never downloads anything: a path that does not
    exist raises ``FileNotFoundError``.
    """
    path = os.fspath(path)
    if paths.is_url(path):  # object storage: one download into a temporary local copy
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, os.path.basename(path))
            try:
                data = paths.read_bytes(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"weights file not found: {path}") from None
            with open(local, "wb") as f:
                f.write(data)
            return load_torch_state(local, allow_pickle)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith((".safetensors", ".sft", ".sfts")):
        try:
            return {k: _upcast(v) for k, v in load_file(path).items()}
        except TypeError:  # bfloat16 without ml_dtypes registered: go through torch
            from safetensors.torch import load_file as load_torch_file

            return _tensors_to_numpy(load_torch_file(path, device="cpu"))
    import pickle  # only for its error type

    import torch  # heavy (PyTorch): only when this path runs

    try:
        blob = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: not loadable with weights_only=True ({err}); if you trust the file, "
            "pass allow_pickle=True"
        ) from err
    for entry in ("state_dict", "model"):
        if isinstance(blob, Mapping) and isinstance(blob.get(entry), Mapping):
            blob = blob[entry]
            break
    return _tensors_to_numpy(blob)


def _upcast(value: np.ndarray) -> np.ndarray:
    """Floating arrays of any width (float16, bfloat16, float64) -> float32; ints kept."""
    if np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
        return value
    return value.astype(np.float32, copy=False)


def _tensors_to_numpy(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in tensors.items():
        if hasattr(value, "is_floating_point"):  # a torch tensor
            value = value.float().numpy() if value.is_floating_point() else value.numpy()
        out[key] = _upcast(np.asarray(value))
    return out


def normalize_keys(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Strip a Lightning ``model.`` prefix and apply the legacy renames of docs/original.md §4.2."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.startswith("model."):
            key = key[len("model.") :]
        new_key = legacy_rename(key)
        if new_key in out:
            raise ValueError(f"two source tensors map to {new_key!r} (one is {key!r})")
        out[new_key] = np.asarray(value)
    return out


def _set(tree: dict[str, Any], path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _default(rule: TensorRule, config: CodecConfig, base: Variables | None) -> np.ndarray:
    """Value for a tensor the file lacks: codebook defaults, else taken from ``base``."""
    q = config.quantizer
    if rule.collection == "codebooks":
        name = rule.path[-1]
        if name == "initialized":
            return np.zeros((), np.float32)
        if name == "cluster_usage":
            return np.ones((q.bins,), np.float32)
        return np.zeros((q.bins, q.dimension), np.float32)
    if base is not None:
        return np.asarray(_get(base[rule.collection], rule.path), np.float32)
    raise ValueError(
        f"parameter {rule.torch_key!r} is missing from the checkpoint; pass base= (for "
        "example the variables of AmyCodec.init) to fill missing parameters"
    )


def torch_to_flax(
    state: Mapping[str, Any], config: CodecConfig, base: Variables | None = None
) -> tuple[Variables, ImportReport]:
    """Convert a PyTorch state dict (numpy arrays) to ``{"params", "codebooks"}`` for Amy.

    Accepts the Kyutai 32-slot and the Amy 33-slot layouts, legacy key names and a leading
    ``model.``. Missing codebook buffers get fresh defaults (``initialized=0``, usage ones,
    sums zeros); missing parameters are taken from ``base`` or raise. A shape that differs
    from the config's raises ``ValueError`` naming the key and both shapes. Every
    ``countdown`` is set to ``check_unused_every``.
    """
    state = normalize_keys(state)
    rules = key_rules(config)
    known = {r.torch_key for r in rules}
    variables: Variables = {"params": {}, "codebooks": {}}
    missing = []
    for rule in rules:
        if rule.torch_key in state:
            value = state[rule.torch_key]
            if tuple(value.shape) != rule.torch_shape:
                raise ValueError(
                    f"shape mismatch for {rule.torch_key!r}: checkpoint has "
                    f"{tuple(value.shape)}, the config expects {rule.torch_shape}"
                )
            # np.array (not ascontiguousarray, which turns 0-d into 1-d) makes a C-order copy.
            value = np.array(to_flax(rule.kind, value), dtype=np.float32, order="C")
        else:
            missing.append(rule.torch_key)
            value = _default(rule, config, base)
        _set(variables[rule.collection], rule.path, value)
        if rule.path[-1] == "initialized":
            countdown = np.full((), config.quantizer.check_unused_every, np.int32)
            _set(variables["codebooks"], (*rule.path[:-1], "countdown"), countdown)
    unexpected = sorted(k for k in state if k not in known)
    return variables, ImportReport(missing=tuple(missing), unexpected=tuple(unexpected))


def flax_to_torch(
    variables: Mapping[str, Any],
    config: CodecConfig,
    layout: Literal["amy", "kyutai"] = "amy",
) -> dict[str, np.ndarray]:
    """Convert the Flax variable tree back to a PyTorch state dict (numpy, float32).

    ``layout="amy"`` writes all ``n_q`` slots (321 tensors for the default config);
    ``layout="kyutai"`` drops codebook 1 (``rvq_first`` layers 1.., or ``rvq_prosody`` in the
    parallel topology) so the file loads strictly into Kyutai's 32-slot Mimi. ``countdown``
    has no PyTorch counterpart and is dropped.
    """
    if layout not in ("amy", "kyutai"):
        raise ValueError(f"layout must be 'amy' or 'kyutai', got {layout!r}")
    out: dict[str, np.ndarray] = {}
    for rule in key_rules(config):
        if layout == "kyutai" and is_prosody_key(rule.torch_key):
            continue
        value = np.asarray(_get(variables[rule.collection], rule.path), np.float32)
        out[rule.torch_key] = np.array(to_torch(rule.kind, value), order="C")
        if out[rule.torch_key].shape != rule.torch_shape:
            raise ValueError(
                f"{'/'.join(rule.path)} has shape {value.shape}; cannot export as "
                f"{rule.torch_key!r} with shape {rule.torch_shape}"
            )
    return out


def load_codec_weights(
    path: str | os.PathLike, config: CodecConfig, base: Variables | None = None
) -> tuple[Variables, ImportReport]:
    """Read a PyTorch weights file and convert it for ``config`` (see :func:`torch_to_flax`)."""
    return torch_to_flax(load_torch_state(path), config, base=base)
