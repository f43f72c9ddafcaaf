"""Distillation heads: shapes, PyTorch default init ranges, key map and parity with torch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from amylm_jax.models.heads import DistillHead, head_from_torch, head_to_torch

D_IN, D_OUT = 512, 96  # out kept small for speed; the structure does not depend on it


def _torch_head(kind: str) -> nn.Module:
    """The original's / experiments' head modules (docs/original.md §6.4, §10.1-10.3)."""
    if kind == "linear":
        return nn.Linear(D_IN, D_OUT)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(D_IN, 2 * D_IN), nn.ReLU(), nn.Linear(2 * D_IN, D_OUT))
    if kind == "mlp_v2":
        return nn.Sequential(
            nn.Linear(D_IN, D_IN), nn.GELU(), nn.LayerNorm(D_IN), nn.Linear(D_IN, D_OUT)
        )
    return nn.Sequential(
        nn.Conv1d(D_IN, 2 * D_OUT, 5, padding=2), nn.GELU(), nn.Conv1d(2 * D_OUT, D_OUT, 1)
    )


def _torch_forward(module: nn.Module, kind: str, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        t = torch.from_numpy(x)
        if kind == "conv":
            return module(t.transpose(1, 2)).transpose(1, 2).numpy()
        return module(t).numpy()


EXPECTED = {
    "linear": {"layers_0": {"kernel": (D_IN, D_OUT), "bias": (D_OUT,)}},
    "mlp": {
        "layers_0": {"kernel": (D_IN, 2 * D_IN), "bias": (2 * D_IN,)},
        "layers_2": {"kernel": (2 * D_IN, D_OUT), "bias": (D_OUT,)},
    },
    "mlp_v2": {
        "layers_0": {"kernel": (D_IN, D_IN), "bias": (D_IN,)},
        "layers_2": {"scale": (D_IN,), "bias": (D_IN,)},
        "layers_3": {"kernel": (D_IN, D_OUT), "bias": (D_OUT,)},
    },
    "conv": {
        "layers_0": {"kernel": (5, D_IN, 2 * D_OUT), "bias": (2 * D_OUT,)},
        "layers_2": {"kernel": (1, 2 * D_OUT, D_OUT), "bias": (D_OUT,)},
    },
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_shapes_and_init_ranges(kind):
    head = DistillHead(D_OUT, kind)
    x = jnp.zeros((2, 13, D_IN))
    params = head.init(jax.random.key(0), x)["params"]
    assert jax.tree_util.tree_map(lambda a: a.shape, params) == EXPECTED[kind]
    assert head.apply({"params": params}, x).shape == (2, 13, D_OUT)
    for leaf in params.values():
        if "scale" in leaf:  # LayerNorm: ones / zeros
            assert np.all(np.asarray(leaf["scale"]) == 1) and np.all(np.asarray(leaf["bias"]) == 0)
            continue
        k = np.asarray(leaf["kernel"])
        bound = 1 / math.sqrt(np.prod(k.shape[:-1]))  # fan_in = in (* kernel size)
        for arr in (k, np.asarray(leaf["bias"])):
            assert np.abs(arr).max() <= bound
            assert np.abs(arr).max() > 0.9 * bound  # uniform over the whole range
        assert abs(float(k.std()) - bound / math.sqrt(3)) < 0.05 * bound


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_matches_torch_module_through_key_map(kind, rng):
    head = DistillHead(D_OUT, kind)
    x = rng.standard_normal((2, 13, D_IN)).astype(np.float32)
    params = head.init(jax.random.key(1), jnp.asarray(x))["params"]
    if kind == "mlp_v2":  # make the LayerNorm affine non-trivial
        ln = params["layers_2"]
        params["layers_2"] = {"scale": ln["scale"] * 1.5, "bias": ln["bias"] + 0.1}
    module = _torch_head(kind)
    prefix = "wavlm_proj"
    state = head_to_torch(params, kind, prefix)
    want_keys = {f"{prefix}.{k}" for k in module.state_dict()}
    assert set(state) == want_keys
    module.load_state_dict({k[len(prefix) + 1 :]: torch.from_numpy(v) for k, v in state.items()})
    got = np.asarray(head.apply({"params": params}, x))
    np.testing.assert_allclose(got, _torch_forward(module, kind, x), atol=1e-5, rtol=1e-5)
    back = head_from_torch(state, kind, prefix)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        np.testing.assert_array_equal(
            np.asarray(leaf), dict(jax.tree_util.tree_leaves_with_path(back))[path]
        )


def test_conv_head_looks_two_frames_ahead(rng):
    head = DistillHead(8, "conv")
    x = jnp.asarray(rng.standard_normal((1, 13, 16)).astype(np.float32))
    params = head.init(jax.random.key(0), x)
    jac = jax.jacobian(lambda a: head.apply(params, a)[0, 6, 0])(x)
    touched = np.nonzero(np.abs(np.asarray(jac)[0]).sum(axis=-1))[0]
    assert touched.tolist() == [4, 5, 6, 7, 8]  # symmetric k=5, pad=2


def test_bf16_compute_returns_float32(rng):
    x = jnp.asarray(rng.standard_normal((2, 13, D_IN)).astype(np.float32))
    head32, head16 = DistillHead(D_OUT, "mlp"), DistillHead(D_OUT, "mlp", dtype=jnp.bfloat16)
    params = head32.init(jax.random.key(0), x)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a: a.dtype == jnp.float32, params))
    y16, y32 = head16.apply(params, x), head32.apply(params, x)
    assert y16.dtype == jnp.float32
    assert float(jnp.abs(y16 - y32).max()) < 0.05 * float(jnp.abs(y32).max())


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown head kind"):
        DistillHead(4, "transformer").init(jax.random.key(0), jnp.zeros((1, 2, 8)))
