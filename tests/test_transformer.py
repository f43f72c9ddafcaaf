"""Transformer: parity with moshi at T=300 (context window), causality, RoPE, jit, bf16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from amylm_jax.config import TransformerConfig
from amylm_jax.export.from_torch import torch_to_flax
from amylm_jax.models.transformer import Transformer, context_mask, rope_interleaved
from amylm_jax.reference.mimi import build_mimi, from_torch_bct, state_numpy, to_torch_bct

TINY = TransformerConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=32, context=5)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("side", ["encoder_transformer", "decoder_transformer"])
def test_matches_moshi_full_size_t300(rng, side):
    model, config = build_mimi()
    params = torch_to_flax(state_numpy(model), config)[0]["params"][side]
    x = rng.standard_normal((2, 300, 512)).astype(np.float32)
    with torch.no_grad():
        (ref,) = getattr(model, side)(to_torch_bct(x))
    ref = from_torch_bct(ref)
    out = Transformer(config.transformer).apply({"params": params}, x)
    assert out.shape == ref.shape == (2, 300, 512)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
    # T = 300 really exercises the window: without it, frames >= 250 would not match.
    unbounded = dataclasses.replace(config.transformer, context=None)
    out_all = np.asarray(Transformer(unbounded).apply({"params": params}, x))
    assert np.abs(out_all[:, 250:] - ref[:, 250:]).max() > 1e-3


def test_context_mask():
    mask = np.asarray(context_mask(6, 3))
    expected = np.array([[0 <= i - j < 3 for j in range(6)] for i in range(6)])
    np.testing.assert_array_equal(mask, expected)


def test_rope_matches_complex_rotation(rng):
    x = rng.standard_normal((1, 7, 2, 8)).astype(np.float32)
    out = np.asarray(rope_interleaved(jnp.asarray(x), 10000.0))
    t = np.arange(7)[:, None]
    freqs = 10000.0 ** (-2 * np.arange(4) / 8)
    rot = np.exp(1j * t * freqs)[None, :, None, :]
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot
    np.testing.assert_allclose(out[..., 0::2], z.real, atol=1e-5)
    np.testing.assert_allclose(out[..., 1::2], z.imag, atol=1e-5)
    # Position 0 is not rotated.
    np.testing.assert_array_equal(out[:, 0], x[:, 0])


def test_param_names_and_count():
    tf = Transformer(TransformerConfig())
    shapes = jax.eval_shape(tf.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 512)))["params"]
    layer = shapes["layers_7"]
    assert layer["self_attn"]["in_proj"]["kernel"].shape == (512, 1536)
    assert layer["self_attn"]["out_proj"]["kernel"].shape == (512, 512)
    assert layer["linear1"]["kernel"].shape == (512, 2048)
    assert set(layer) == {
        "self_attn", "norm1", "norm2", "linear1", "linear2", "layer_scale_1", "layer_scale_2"
    }  # fmt: skip
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert count == 25_190_400  # docs/original.md §2.8


def test_causal_by_gradient_and_context(rng):
    tf = Transformer(TINY)
    x = jnp.asarray(rng.standard_normal((1, 12, 16)).astype(np.float32))
    variables = jax.jit(tf.init)(jax.random.PRNGKey(0), x)
    grad_fn = jax.jit(jax.grad(lambda x_, t: tf.apply(variables, x_)[0, t].sum()))
    for t in (0, 4, 9):
        g = np.abs(np.asarray(grad_fn(x, t))[0]).sum(axis=-1)
        assert np.all(g[t + 1 :] == 0), f"frame {t} sees the future"
        assert np.all(g[t] > 0)
        # Two layers of context 5 reach back at most 2 * (5 - 1) frames.
        assert np.all(g[: max(t - 8, 0)] == 0)


def test_jit_equals_eager_and_bf16(rng):
    tf = Transformer(TINY)
    x = jnp.asarray(rng.standard_normal((2, 9, 16)).astype(np.float32))
    variables = jax.jit(tf.init)(jax.random.PRNGKey(0), x)
    eager = tf.apply(variables, x)
    np.testing.assert_allclose(np.asarray(jax.jit(tf.apply)(variables, x)), eager, atol=1e-6)
    tf16 = Transformer(TINY, dtype=jnp.bfloat16)
    v16 = jax.eval_shape(tf16.init, jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v16))
    out16 = jax.jit(tf16.apply)(variables, x)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), eager, atol=0.1)
