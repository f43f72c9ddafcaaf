"""Quantizer behaviour against the NumPy reference of docs/original.md §3.4-3.7, plus its k-means
rules."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quantizer_reference as ref

from amylm_jax.config import QuantizerConfig
from amylm_jax.models import vq_codebook
from amylm_jax.models.quantizer import SplitResidualVQ
from amylm_jax.models.vq_codebook import CodebookState, expiry_candidate_indices
from amylm_jax.models.vq_kmeans import (
    codebook_keys,
    kmeans,
    kmeans_sample_indices,
    nearest_codes,
)

CFG = QuantizerConfig(
    dimension=16, input_dimension=32, output_dimension=32, bins=64, n_q=6, num_codebooks=4
)
HP = ref.RefHyper(bins=CFG.bins)
B, T = 2, 16
RTOL, ATOL = 1e-5, 1e-6


def live_state(rng, cfg=CFG, n_dead=0):
    """An initialised codebook; the first ``n_dead`` codes are far away and barely used."""
    usage = rng.uniform(0.5, 1.5, cfg.bins)
    cent = rng.normal(size=(cfg.bins, cfg.dimension))
    usage[:n_dead] = 1e-3
    cent[:n_dead] += 50.0
    return {
        "embedding_sum": (cent * usage[:, None]).astype(np.float32),
        "cluster_usage": usage.astype(np.float32),
        "initialized": np.float32(1.0),
        "countdown": np.int32(cfg.check_unused_every),
    }


def fresh_state(cfg=CFG):
    return {k: np.asarray(v) for k, v in vq_codebook.initial_state(cfg)._asdict().items()}


def with_codebooks(variables, states):
    """Copy of ``variables`` with ``states[(sub, l)]`` written into the codebooks collection."""
    out = jax.tree_util.tree_map(lambda a: a, variables)
    for (sub, l), st in states.items():
        out["codebooks"][sub][f"layers_{l}"] = {k: jnp.asarray(v) for k, v in st.items()}
    return out


def ref_layers(variables, sub, n):
    cbs = variables["codebooks"][sub]
    return [
        ref.RefCodebook(
            np.asarray(cbs[f"layers_{l}"]["embedding_sum"], np.float64),
            np.asarray(cbs[f"layers_{l}"]["cluster_usage"], np.float64),
            bool(cbs[f"layers_{l}"]["initialized"] > 0),
            int(cbs[f"layers_{l}"]["countdown"]),
        )
        for l in range(n)
    ]


def sampled_rows(key, n_q, num_samples, cfg=CFG):
    """The k-means and candidate indices each slot of a ResidualVQ draws from ``key``."""
    km, cand = [], []
    for k in jax.random.split(key, n_q):
        kmeans_key, expiry_key = codebook_keys(k)
        km.append(np.asarray(kmeans_sample_indices(kmeans_key, num_samples, cfg.bins, 50)))
        cand.append(np.asarray(expiry_candidate_indices(expiry_key, num_samples, cfg.bins)))
    return km, cand


def assert_codebook_equal(jax_cb, ref_cb):
    np.testing.assert_allclose(jax_cb["embedding_sum"], ref_cb.embedding_sum, RTOL, ATOL)
    np.testing.assert_allclose(jax_cb["cluster_usage"], ref_cb.cluster_usage, RTOL, ATOL)
    assert float(jax_cb["initialized"]) == float(ref_cb.initialized)
    assert int(jax_cb["countdown"]) == ref_cb.countdown


@pytest.fixture(scope="module")
def model_and_vars():
    model = SplitResidualVQ(CFG)
    emb = jnp.zeros((B, T, CFG.input_dimension))
    variables = model.init({"params": jax.random.key(0)}, emb, train=False)
    return model, variables


def make_train_call(model):
    @jax.jit
    def call(variables, emb, key):
        out, upd = model.apply(variables, emb, train=True, rng=key, mutable=["codebooks"])
        return out, {**variables, **upd}

    return call


def test_init_buffers_and_paths(model_and_vars):
    _, v = model_and_vars
    assert set(v["codebooks"]["rvq_first"]) == {"layers_0", "layers_1"}
    assert set(v["codebooks"]["rvq_rest"]) == {f"layers_{l}" for l in range(4)}
    cb = v["codebooks"]["rvq_rest"]["layers_3"]
    assert cb["embedding_sum"].shape == (64, 16) and not np.any(cb["embedding_sum"])
    np.testing.assert_array_equal(cb["cluster_usage"], np.ones(64))
    assert cb["initialized"].shape == () and cb["initialized"].dtype == jnp.float32
    assert cb["countdown"].dtype == jnp.int32 and int(cb["countdown"]) == 5
    assert v["params"]["rvq_first"]["input_proj"]["kernel"].shape == (32, 16)
    assert v["params"]["rvq_rest"]["output_proj"]["kernel"].shape == (16, 32)


def test_codebook_step_matches_reference():
    """Six codebook calls incl. an expiry on the 5th: state, codes, q and metrics."""
    rng = np.random.default_rng(1)
    st = live_state(rng, n_dead=10)
    state = CodebookState(**{k: jnp.asarray(v) for k, v in st.items()})
    rcb = ref.RefCodebook(
        st["embedding_sum"].astype(np.float64), st["cluster_usage"].astype(np.float64), True, 5
    )
    step_fn = jax.jit(lambda s, x, k: vq_codebook.train_update(s, x, jnp.array(True), k, CFG))
    for call in range(6):
        x = rng.normal(size=(B * T, CFG.dimension)).astype(np.float32)
        key = jax.random.key(100 + call)
        cand = np.asarray(expiry_candidate_indices(codebook_keys(key)[1], B * T, CFG.bins))
        state, step = step_fn(state, jnp.asarray(x), key)
        rstep = ref.codebook_train(rcb, x, HP, True, None, cand)
        np.testing.assert_array_equal(step.codes, rstep.codes)
        np.testing.assert_allclose(step.quantized, rstep.q, RTOL, ATOL)
        assert_codebook_equal(state._asdict(), rcb)
        for name in ("expired", "entropy", "usage"):
            np.testing.assert_allclose(getattr(step, name), rstep.metrics[name], RTOL, ATOL)
        if call == 4:
            assert rstep.metrics["expired"] == pytest.approx(10 / 64)
        else:
            assert rstep.metrics["expired"] == 0.0


def test_split_train_matches_reference(model_and_vars):
    """Seven training calls of the whole split RVQ: k-means on call 1, expiry on call 5."""
    model, variables = model_and_vars
    rng = np.random.default_rng(2)
    variables = with_codebooks(
        variables,
        {
            ("rvq_first", 0): live_state(rng, n_dead=10),
            ("rvq_rest", 0): live_state(rng, n_dead=6),
            ("rvq_rest", 2): live_state(rng),  # idle slot: must not move
        },
    )
    w = {
        sub: (
            np.asarray(variables["params"][sub]["input_proj"]["kernel"]),
            np.asarray(variables["params"][sub]["output_proj"]["kernel"]),
        )
        for sub in ("rvq_first", "rvq_rest")
    }
    refs = {"rvq_first": ref_layers(variables, "rvq_first", 2)}
    refs["rvq_rest"] = ref_layers(variables, "rvq_rest", 4)
    idle = jax.tree_util.tree_map(np.asarray, variables["codebooks"]["rvq_rest"]["layers_2"])
    call_fn = make_train_call(model)
    saw_expiry = {"rvq_first": False, "rvq_rest": False}
    for call in range(7):
        emb = rng.normal(size=(B, T, CFG.input_dimension)).astype(np.float32)
        key = jax.random.key(10 + call)
        out, variables = call_fn(variables, jnp.asarray(emb), key)
        subkeys = dict(zip(("rvq_first", "rvq_rest"), jax.random.split(key), strict=True))
        for sub, res, n_q, n_act, off in (
            ("rvq_first", out.first, 2, 2, 0),
            ("rvq_rest", out.rest, 4, 2, 2),
        ):
            km, cand = sampled_rows(subkeys[sub], n_q, B * T)
            r = ref.rvq_train(
                refs[sub], emb, *w[sub], HP, n_act, km, cand, offset=off, tie_break=res.codes
            )
            np.testing.assert_array_equal(res.codes, r["codes"])
            np.testing.assert_allclose(res.x, r["x"], RTOL, 1e-5)
            np.testing.assert_allclose(res.penalty, r["penalty"], RTOL, ATOL)
            assert set(res.metrics) == set(r["metrics"])
            for name, value in r["metrics"].items():
                np.testing.assert_allclose(res.metrics[name], value, RTOL, ATOL, err_msg=name)
            for l in range(n_act):
                assert_codebook_equal(variables["codebooks"][sub][f"layers_{l}"], refs[sub][l])
            saw_expiry[sub] |= r["metrics"][f"expired_{off}"] > 0
        if call == 0:  # slot 1 of each RVQ was k-means-initialised on the first batch
            for sub in ("rvq_first", "rvq_rest"):
                assert float(variables["codebooks"][sub]["layers_1"]["initialized"]) == 1.0
    assert all(saw_expiry.values())
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, variables["codebooks"]["rvq_rest"]["layers_2"], idle
    )


def test_kmeans_matches_reference():
    rng = np.random.default_rng(3)
    for num_samples in (40, 100):  # with and without replacement for 64 clusters
        x = rng.normal(size=(num_samples, 8)).astype(np.float32)
        idx = kmeans_sample_indices(jax.random.key(num_samples), num_samples, 64, 50)
        assert idx.shape == (51, 64)
        means, bins = jax.jit(kmeans)(jnp.asarray(x), idx)
        rmeans, rbins = ref.kmeans(x.astype(np.float64), np.asarray(idx))
        assert means.shape == (64, 8) and bins.shape == (64,)
        np.testing.assert_array_equal(bins, rbins)
        np.testing.assert_allclose(means, rmeans, RTOL, ATOL)
        assert np.all(np.asarray(bins) >= 1)


def test_kmeans_finds_clusters():
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(4, 8)) * 10
    x = (np.repeat(centers, 50, axis=0) + 0.05 * rng.normal(size=(200, 8))).astype(np.float32)
    idx = kmeans_sample_indices(jax.random.key(0), 200, 16, 50)
    means, bins = jax.jit(kmeans)(jnp.asarray(x), idx)
    d = np.linalg.norm(np.asarray(means)[:, None] - centers[None], axis=-1)
    assert np.all(d.min(axis=1) < 0.5)  # every mean sits inside a cluster
    assert np.all(d.min(axis=0) < 0.5)  # every cluster got a mean
    # per cluster, the counts of its means add up to its 50 points (clamped empties aside)
    owner = d.argmin(axis=1)
    for c in range(4):
        assert 50 <= np.asarray(bins)[owner == c].sum() <= 50 + np.sum(owner == c)


def test_kmeans_init_writeback():
    cfg = dataclasses.replace(CFG, kmeans_iters=7)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(30, 16)), jnp.float32)
    key = jax.random.key(3)
    st = vq_codebook.kmeans_init(vq_codebook.initial_state(cfg), x, key, cfg)
    means, bins = kmeans(x, kmeans_sample_indices(key, 30, 64, 7))
    np.testing.assert_allclose(st.embedding_sum, means * bins[:, None], RTOL, ATOL)
    np.testing.assert_array_equal(st.cluster_usage, bins)
    assert float(st.initialized) == 1.0 and int(st.countdown) == 5


@pytest.mark.slow
def test_kmeans_full_size_under_jit():
    """REF case: 208 residual vectors, 2048 codes of dimension 256, 50 iterations."""
    x = jax.random.normal(jax.random.key(0), (208, 256))
    idx = kmeans_sample_indices(jax.random.key(1), 208, 2048, 50)
    means, bins = jax.jit(kmeans)(x, idx)
    assert means.shape == (2048, 256) and bins.shape == (2048,)
    assert np.all(np.asarray(bins) >= 1) and np.all(np.isfinite(np.asarray(means)))
    # at most 208 non-empty clusters; each non-empty one holds a mean of its members
    assert int(np.sum(np.asarray(bins) > 1)) <= 208
    assert float(jnp.sum(bins)) >= 208.0


@pytest.mark.parametrize("slot0_initialized", [True, False])
def test_kmeans_previous_layer_rule(model_and_vars, slot0_initialized):
    model, variables = model_and_vars
    rng = np.random.default_rng(6)
    states = {("rvq_first", 1): fresh_state()}
    states[("rvq_first", 0)] = live_state(rng) if slot0_initialized else fresh_state()
    variables = with_codebooks(variables, states)
    call_fn = make_train_call(model)

    def flags(v):
        return [float(v["codebooks"]["rvq_first"][f"layers_{l}"]["initialized"]) for l in (0, 1)]

    emb = jnp.asarray(rng.normal(size=(B, T, 32)), jnp.float32)
    _, v1 = call_fn(variables, emb, jax.random.key(1))
    assert flags(v1) == ([1.0, 1.0] if slot0_initialized else [1.0, 0.0])
    _, v2 = call_fn(v1, emb, jax.random.key(2))
    assert flags(v2) == [1.0, 1.0]
    # the countdown moves only once a slot is initialised (k-means call included)
    cd = [int(v2["codebooks"]["rvq_first"][f"layers_{l}"]["countdown"]) for l in (0, 1)]
    assert cd == ([3, 3] if slot0_initialized else [3, 4])


def test_tie_rtol_gives_near_equal_centroids_to_the_lowest_index():
    """Default: the plain argmin (the original's); with ``tie_rtol`` every centroid within
    ``tie_rtol * (|x|^2 + |e|^2)`` of the nearest counts as tied and the lowest index wins,
    while centroids farther apart than that keep the plain argmin."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 16)).astype(np.float32)
    near = base[2] * np.float32(1 + 3e-7)  # equal to base[2] up to a few ulps
    far = base[2] * np.float32(1 + 1e-3)
    centroids = jnp.asarray(np.stack([base[0], near, base[1], base[2], far, base[3]]))
    x = base[2] * np.float32(1 + 2e-6) + np.zeros((5, 16), np.float32)  # nearest: near/base[2]
    plain = np.asarray(nearest_codes(jnp.asarray(x), centroids))
    assert set(plain.tolist()) <= {1, 3}  # float32 cannot tell them apart: rounding decides
    tied = np.asarray(nearest_codes(jnp.asarray(x), centroids, tie_rtol=1e-5))
    np.testing.assert_array_equal(tied, 1)  # the lower of the two near-equal centroids
    y = base[0] + 0.1 * rng.normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(nearest_codes(jnp.asarray(y), centroids, 1e-5)), 0)
    with pytest.raises(ValueError, match="tie_rtol"):
        QuantizerConfig(tie_rtol=-1.0)
