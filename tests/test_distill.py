"""Cosine distillation loss: torch semantics, REF padding behaviour (D19) and the knobs."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from amylm_jax.losses.distill import (
    center_over_time,
    cosine_similarity,
    distill_loss,
    layer_norm,
    trivial_baseline,
)


def _x(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_cosine_matches_torch_including_zero_and_tiny_vectors(rng):
    a, b = _x(rng, 3, 7, 16), _x(rng, 3, 7, 16)
    a[0, 0] = 0.0
    b[1, 2] = 0.0
    a[2, 3] = 1e-10  # below eps: clamped norm
    got = np.asarray(cosine_similarity(a, b))
    ref = F.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=-1, eps=1e-8).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got[0, 0] == 0.0 and got[1, 2] == 0.0


def test_cosine_gradient_is_finite_at_zero_vectors():
    pred = jnp.zeros((1, 2, 4)).at[0, 1].set(1.0)
    target = jnp.zeros((1, 2, 4)).at[0, 1, 0].set(2.0)
    g = jax.grad(lambda p: distill_loss(p, target))(pred)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_parallel_prediction_gives_zero_loss(rng):
    t = _x(rng, 2, 13, 32)
    np.testing.assert_allclose(float(distill_loss(3.0 * t, t)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(distill_loss(-t, t)), 2.0, atol=1e-6)


def test_ref_mean_includes_padded_frames_and_mask_excludes_them(rng):
    t = _x(rng, 2, 13, 32)
    mask = np.ones((2, 13), np.float32)
    t[1, 10:] = 0.0  # clip 1 is shorter: 3 zero-padded target frames
    mask[1, 10:] = 0.0
    pred = t + 0.0
    pred[1, 10:] = _x(rng, 3, 32)  # whatever the model outputs there
    # REF (D19): padded frames count with cosine 0 -> loss 1 each
    np.testing.assert_allclose(float(distill_loss(pred, t)), 3 / 26, atol=1e-6)
    np.testing.assert_allclose(float(distill_loss(pred, t, mask_BxT=mask)), 0.0, atol=1e-6)


def test_masked_mean_weights_frames_not_clips(rng):
    p, t = _x(rng, 2, 6, 8), _x(rng, 2, 6, 8)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], np.float32)
    cos = np.asarray(cosine_similarity(p, t))
    want = 1 - (cos[0].sum() + cos[1, :2].sum()) / 8
    np.testing.assert_allclose(float(distill_loss(p, t, mask_BxT=mask)), want, atol=1e-6)


def test_centering(rng):
    base = _x(rng, 2, 13, 16)
    offset = 5.0 * _x(rng, 2, 1, 16)
    target = base + offset  # a per-clip constant (speaker/timbre) added to the target
    centred = base - base.mean(axis=1, keepdims=True)
    assert float(distill_loss(centred, target)) > 0.1
    np.testing.assert_allclose(
        float(distill_loss(centred, target, center_target=True)), 0.0, atol=1e-6
    )
    # both-sided: a per-clip constant on the prediction no longer matters either
    shifted = centred + 3.0 * _x(rng, 2, 1, 16)
    assert float(distill_loss(shifted, target, center_target=True)) > 0.1
    np.testing.assert_allclose(
        float(distill_loss(shifted, target, center_target=True, center_pred=True)), 0.0, atol=1e-6
    )


def test_masked_centering_ignores_padded_frames(rng):
    x = _x(rng, 1, 8, 4)
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0]], np.float32)
    garbage = x.copy()
    garbage[0, 5:] = 100.0
    a = np.asarray(center_over_time(x, mask))[0, :5]
    b = np.asarray(center_over_time(garbage, mask))[0, :5]
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, x[0, :5] - x[0, :5].mean(axis=0), atol=1e-6)


def test_layernorm_knob(rng):
    x = _x(rng, 2, 5, 32)
    ref = F.layer_norm(torch.from_numpy(x), (32,), eps=1e-5).numpy()
    np.testing.assert_allclose(np.asarray(layer_norm(x)), ref, atol=1e-5)
    p, t = _x(rng, 2, 5, 32), _x(rng, 2, 5, 32)
    # LayerNorm removes a per-frame shift of the prediction, which plain cosine does not
    shift = 4.0 * _x(rng, 2, 5, 1)
    base = float(distill_loss(p, t, layernorm=True))
    np.testing.assert_allclose(float(distill_loss(p + shift, t, layernorm=True)), base, atol=1e-5)
    assert abs(float(distill_loss(p + shift, t)) - float(distill_loss(p, t))) > 1e-3
    want = (
        1
        - F.cosine_similarity(
            F.layer_norm(torch.from_numpy(p), (32,)),
            F.layer_norm(torch.from_numpy(t), (32,)),
            dim=-1,
        ).mean()
    )
    np.testing.assert_allclose(base, float(want), atol=1e-6)


def test_length_guard_truncates_to_common_length(rng):
    p, t = _x(rng, 2, 15, 8), _x(rng, 2, 13, 8)
    np.testing.assert_allclose(
        float(distill_loss(p, t)), float(distill_loss(p[:, :13], t)), atol=1e-7
    )


def test_trivial_baseline(rng):
    t = _x(rng, 2, 13, 16)
    mu = t.reshape(-1, 16).mean(axis=0)
    cos = F.cosine_similarity(torch.from_numpy(mu).expand(2, 13, 16), torch.from_numpy(t), dim=-1)
    np.testing.assert_allclose(float(trivial_baseline(t, mu)), 1 - float(cos.mean()), atol=1e-6)
    direction = np.abs(_x(rng, 16)) + 0.1
    const = np.broadcast_to(direction * 2.0, (2, 13, 16))
    np.testing.assert_allclose(float(trivial_baseline(const, direction)), 0.0, atol=1e-6)
