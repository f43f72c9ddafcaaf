"""Data parallelism over a device mesh trains the same model as one device."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from amylm_jax.config import LOSS_NAMES, DiscConfig, TrainConfig, tiny_codec_config
from amylm_jax.data import pipeline
from amylm_jax.sharding import (
    batch_sharding,
    global_batch,
    make_mesh,
    replicated,
    state_shardings,
)
from amylm_jax.state import build_models, create_state, init_params
from amylm_jax.steps import train_step

DISC = DiscConfig(filters=4, n_ffts=(256, 128), hop_lengths=(64, 32), win_lengths=(256, 128))


def _run(devices, steps: int = 5):
    cfg = TrainConfig(
        codec=tiny_codec_config(),
        disc=DISC,
        data=pipeline.DataConfig(store="demo", batch_size=8),
    )
    store = pipeline._open(cfg.data.store)
    models = build_models(cfg, store.wavlm_dim, store.llm_dim)
    mesh = make_mesh((("data", -1),), devices=devices)
    gen, cb, disc = init_params(models, jax.random.PRNGKey(0))
    state = create_state(models, gen, cb, disc, jax.random.PRNGKey(1))
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    bsh = batch_sharding(mesh)
    step = jax.jit(
        functools.partial(train_step, models),
        in_shardings=(shardings, bsh),
        out_shardings=(shardings, replicated(mesh)),
    )
    it = pipeline.make_train_iterator(cfg.data, store=store)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, global_batch(next(it), bsh))
        losses.append({n: float(metrics[f"train/{n}"]) for n in LOSS_NAMES})
    return losses, jax.device_get(state.codebooks)


@pytest.mark.slow
def test_eight_devices_match_one_device():
    assert jax.device_count() == 8
    one, cb_one = _run(jax.devices()[:1])
    eight, cb_eight = _run(jax.devices())
    for a, b in zip(one, eight, strict=True):
        for name in LOSS_NAMES:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for x, y in zip(
        jax.tree_util.tree_leaves(cb_one), jax.tree_util.tree_leaves(cb_eight), strict=True
    ):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_mesh_sizes_and_errors():
    assert make_mesh((("data", -1),)).shape == {"data": 8}
    assert make_mesh((("data", 2), ("fsdp", -1))).shape == {"data": 2, "fsdp": 4}
    with pytest.raises(ValueError, match="at most one"):
        make_mesh((("data", -1), ("fsdp", -1)))
    with pytest.raises(ValueError, match="needs 6 devices"):
        make_mesh((("data", 6),))


def test_fsdp_rule_splits_only_large_tensors():
    mesh = make_mesh((("data", 2), ("fsdp", 4)))
    tree = {"big": np.zeros((1024, 512), np.float32), "small": np.zeros((512,), np.float32)}
    sh = state_shardings(tree, mesh)
    assert sh["small"].spec == jax.sharding.PartitionSpec()
    assert "fsdp" in tuple(sh["big"].spec)
