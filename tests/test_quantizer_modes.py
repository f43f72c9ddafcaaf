"""Quantizer modes: gradient reach of the STE, frozen codebooks, eval mode, jit == no-jit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_helpers import random_quantizer_variables

from amylm_jax.config import QuantizerConfig
from amylm_jax.models.quantizer import SplitResidualVQ

CFG = QuantizerConfig(
    dimension=16, input_dimension=32, output_dimension=32, bins=64, n_q=6, num_codebooks=4
)
B, T = 2, 8


def random_variables(model, seed=0, uninitialized=()):
    """Variables whose active codebooks are initialised random, except the ``uninitialized``."""
    return random_quantizer_variables(model, CFG, B, T, seed, uninitialized)


def nonzero_leaves(tree) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, leaf in flat
        if leaf.dtype != jax.dtypes.float0 and np.any(np.asarray(leaf) != 0)
    }


def test_gradient_reach():
    model = SplitResidualVQ(CFG)
    variables, emb = random_variables(model)
    target = jax.random.normal(jax.random.key(9), (B, T, CFG.output_dimension))

    def forward_loss(params, codebooks, emb, train_rest=True):
        v = {"params": params, "codebooks": codebooks}
        out, _ = model.apply(
            v, emb, train=True, train_rest=train_rest, rng=jax.random.key(1), mutable=["codebooks"]
        )
        return jnp.sum(out.x * target), out.codes

    def decode_loss(params, codebooks, emb, method):
        v = {"params": params, "codebooks": codebooks}
        codes = model.apply(v, emb, method=SplitResidualVQ.encode)
        return jnp.sum(model.apply(v, codes, method=method) * target)

    grad_fn = jax.jit(
        jax.grad(forward_loss, argnums=(0, 1, 2), has_aux=True, allow_int=True),
        static_argnums=3,
    )
    (g_p, g_cb, g_emb), codes = grad_fn(variables["params"], variables["codebooks"], emb)
    assert nonzero_leaves(g_p) == {
        f"{s}/{p}/kernel" for s in ("rvq_first", "rvq_rest") for p in ("input_proj", "output_proj")
    }
    assert not nonzero_leaves(g_cb)
    assert np.all(np.any(np.asarray(g_emb) != 0, axis=-1))
    # straight-through: d out.x / d emb is that of output_proj(input_proj(emb)) summed
    w = {s: variables["params"][s] for s in ("rvq_first", "rvq_rest")}
    lin = sum(w[s]["input_proj"]["kernel"] @ w[s]["output_proj"]["kernel"] for s in w)
    np.testing.assert_allclose(g_emb, target @ lin.T, rtol=1e-5, atol=1e-6)

    # rvq_rest in eval mode (semantic_prosody_only): its input_proj gets nothing
    (g_p, g_cb, _), _ = grad_fn(variables["params"], variables["codebooks"], emb, False)
    assert "rvq_rest/input_proj/kernel" not in nonzero_leaves(g_p)
    assert "rvq_rest/output_proj/kernel" in nonzero_leaves(g_p)
    assert not nonzero_leaves(g_cb)

    for method, expected in (
        (SplitResidualVQ.decode, {"rvq_first/output_proj/kernel", "rvq_rest/output_proj/kernel"}),
        (SplitResidualVQ.decode_semantic, {"rvq_first/output_proj/kernel"}),
    ):
        g_p, g_cb, g_emb = jax.jit(
            jax.grad(decode_loss, argnums=(0, 1, 2), allow_int=True), static_argnums=3
        )(variables["params"], variables["codebooks"], emb, method)
        assert nonzero_leaves(g_p) == expected
        assert not nonzero_leaves(g_cb)
        assert not np.any(np.asarray(g_emb))


def test_decode_semantic_uses_updated_codebook():
    """After the training forward in the same apply, codebook 0 decodes with new centroids."""
    model = SplitResidualVQ(CFG)
    variables, emb = random_variables(model, seed=1)

    def fwd_then_decode(mdl, emb):
        out = mdl(emb, train=True, rng=jax.random.key(3))
        return out, mdl.decode_semantic(out.first.codes)

    (out, sem), upd = jax.jit(
        lambda v, e: model.apply(v, e, method=fwd_then_decode, mutable=["codebooks"])
    )(variables, emb)
    after = {**variables, **upd}
    expected = model.apply(after, out.first.codes[:, :1], method=SplitResidualVQ.decode)
    np.testing.assert_array_equal(sem, expected)
    before = model.apply(variables, out.first.codes[:, :1], method=SplitResidualVQ.decode)
    assert not np.allclose(sem, before)


def test_frozen_codebooks_do_not_move():
    cfg = dataclasses.replace(CFG, frozen_codebooks=(1, 2))
    model = SplitResidualVQ(cfg)
    variables, emb = random_variables(model, seed=2, uninitialized={("rvq_first", 1)})
    ref_codes = model.apply(variables, emb, method=SplitResidualVQ.encode)
    train = jax.jit(lambda v, e, k: model.apply(v, e, train=True, rng=k, mutable=["codebooks"]))
    v = variables
    for call in range(6):  # past the 5th call, so an unfrozen codebook would have run expiry
        out, upd = train(v, emb, jax.random.key(call))
        v = {**v, **upd}
        if call == 0:  # frozen slots quantise exactly as in eval mode
            np.testing.assert_array_equal(out.codes[:, 1:3], ref_codes[:, 1:3])
    cb, cb0 = v["codebooks"], variables["codebooks"]
    for sub, l in (("rvq_first", 1), ("rvq_rest", 0)):  # global 1 (never k-means'd), 2
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, cb[sub][f"layers_{l}"], cb0[sub][f"layers_{l}"]
        )
    for sub, l in (("rvq_first", 0), ("rvq_rest", 1)):  # global 0, 3: updated
        assert not np.allclose(
            cb[sub][f"layers_{l}"]["cluster_usage"], cb0[sub][f"layers_{l}"]["cluster_usage"]
        )
        assert int(cb[sub][f"layers_{l}"]["countdown"]) == 4


@pytest.mark.parametrize("mode", ["eval", "train_rest_off"])
def test_eval_mode_leaves_state(mode):
    model = SplitResidualVQ(CFG)
    variables, emb = random_variables(model, seed=3, uninitialized={("rvq_rest", 1)})
    out, upd = model.apply(
        variables,
        emb,
        train=mode != "eval",
        train_rest=False,
        rng=jax.random.key(0),
        mutable=["codebooks"],
    )
    subs = ("rvq_first", "rvq_rest") if mode == "eval" else ("rvq_rest",)
    for sub in subs:
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, upd["codebooks"][sub], variables["codebooks"][sub]
        )
    assert float(out.rest.penalty) == 0.0
    # the eval-mode output is the decoded codes, exactly
    dec = model.apply(variables, out.rest.codes, method=lambda m, c: m.rvq_rest.decode(c))
    np.testing.assert_allclose(out.rest.x, dec, rtol=1e-6, atol=1e-6)
    if mode == "train_rest_off":
        assert float(out.first.penalty) > 0.0
        assert int(upd["codebooks"]["rvq_first"]["layers_0"]["countdown"]) == 4


def test_jit_matches_no_jit():
    model = SplitResidualVQ(dataclasses.replace(CFG, kmeans_iters=10))
    variables, emb = random_variables(model, seed=4, uninitialized={("rvq_first", 1)})

    def call(v, emb):
        out, upd = model.apply(v, emb, train=True, rng=jax.random.key(5), mutable=["codebooks"])
        return out.x, out.codes, out.metrics, upd

    eager = call(variables, emb)
    jitted = jax.jit(call)(variables, emb)
    np.testing.assert_array_equal(eager[1], jitted[1])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), eager, jitted
    )
    assert float(eager[3]["codebooks"]["rvq_first"]["layers_1"]["initialized"]) == 1.0


def test_sharded_batch_matches_single_device():
    """Statistics are over the global batch: an 8-way batch sharding changes nothing."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    model = SplitResidualVQ(CFG)
    variables, _ = random_variables(model, seed=5, uninitialized={("rvq_rest", 1)})
    emb = jax.random.normal(jax.random.key(6), (8, T, CFG.input_dimension))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(emb, NamedSharding(mesh, PartitionSpec("data")))

    @jax.jit
    def call(v, e):
        out, upd = model.apply(v, e, train=True, rng=jax.random.key(7), mutable=["codebooks"])
        return out.x, out.codes, upd

    single, multi = call(variables, emb), call(variables, sharded)
    np.testing.assert_array_equal(single[1], multi[1])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), single, multi
    )


def test_no_active_rest_codebooks():
    cfg = dataclasses.replace(CFG, num_codebooks=2)
    model = SplitResidualVQ(cfg)
    variables, emb = random_variables(model, seed=6)
    assert set(variables["codebooks"]["rvq_rest"]) == {f"layers_{l}" for l in range(4)}
    out, upd = model.apply(variables, emb, train=True, rng=jax.random.key(0), mutable=["codebooks"])
    assert out.codes.shape == (B, 2, T) and out.rest.codes.shape == (B, 0, T)
    assert not np.any(np.asarray(out.rest.x))
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        upd["codebooks"]["rvq_rest"],
        variables["codebooks"]["rvq_rest"],
    )
    assert model.apply(variables, emb, method=SplitResidualVQ.encode).shape == (B, 2, T)


def test_quantizer_dropout_keeps_a_prefix_of_the_acoustic_codebooks():
    """``rest_keep[b]``: example b's output is codebooks 0-1 plus its first rest_keep[b]
    acoustic codebooks; codes, codebook updates and metrics are the full quantizer's."""
    model = SplitResidualVQ(CFG)
    variables, emb = random_variables(model, seed=6)
    keep = jnp.array([0, 2])  # CFG has 2 active acoustic codebooks
    out = model.apply(variables, emb, train=False, rest_keep=keep)
    full = model.apply(variables, emb, train=False)
    np.testing.assert_array_equal(out.codes, full.codes)
    for b, k in enumerate([0, 2]):
        want = model.apply(variables, full.codes[b : b + 1, : 2 + k], method=SplitResidualVQ.decode)
        np.testing.assert_allclose(out.x[b : b + 1], want, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(out.x[0] - full.x[0])).max() > 1e-3  # the dropped ones mattered

    def train(rest_keep):
        return model.apply(variables, emb, train=True, rng=jax.random.key(1),
                           mutable=["codebooks"], rest_keep=rest_keep)  # fmt: skip

    (a, upd_a), (f, upd_f) = train(keep), train(None)
    np.testing.assert_array_equal(a.codes, f.codes)
    jax.tree_util.tree_map(np.testing.assert_array_equal, upd_a, upd_f)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.metrics, f.metrics)
    np.testing.assert_allclose(a.x[1], f.x[1], rtol=1e-6, atol=1e-6)  # keeps all: unchanged
