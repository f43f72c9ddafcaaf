"""Hinge / feature-matching losses: sanity values (docs/original.md §8, §12), PyTorch parity,
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from amylm_jax.losses.adversarial import (
    discriminator_accuracy,
    discriminator_loss,
    feature_matching_loss,
    generator_adv_loss,
)
from amylm_jax.models.discriminator import MultiScaleSTFTDiscriminator
from amylm_jax.reference.torch_losses import (
    torch_discriminator_loss,
    torch_feature_matching_loss,
    torch_generator_adv_loss,
)

SHAPES = [(2, 9, 5, 1), (2, 4, 9, 1), (2, 17, 3, 1)]


def _logits(rng, scale=1.0):
    return [(scale * rng.standard_normal(s)).astype(np.float32) for s in SHAPES]


def _fmaps(rng):
    return [
        [rng.standard_normal((2, s[1], s[2] + j, 4)).astype(np.float32) for j in range(5)]
        for s in SHAPES
    ]


def test_zero_logits_give_reference_values():
    zeros = [np.zeros(s, np.float32) for s in SHAPES]
    assert float(generator_adv_loss(zeros)) == 0.0
    assert float(discriminator_loss(zeros, zeros)) == 2.0


def test_feature_matching_of_identical_maps_is_zero(rng):
    f = _fmaps(rng)
    assert float(feature_matching_loss(f, f)) == 0.0


def test_losses_match_torch(rng):
    real, fake = _logits(rng, 2.0), _logits(rng, 2.0)
    t = [[torch.from_numpy(x) for x in xs] for xs in (real, fake)]
    np.testing.assert_allclose(
        float(generator_adv_loss(fake)), float(torch_generator_adv_loss(t[1])), atol=1e-6
    )
    got = float(discriminator_loss(real, fake))
    np.testing.assert_allclose(got, float(torch_discriminator_loss(*t)), atol=1e-6)
    assert 0.5 < got < 3.5
    fr, ff = _fmaps(rng), _fmaps(rng)
    tr = [[torch.from_numpy(x) for x in xs] for xs in fr]
    tf = [[torch.from_numpy(x) for x in xs] for xs in ff]
    np.testing.assert_allclose(
        float(feature_matching_loss(ff, fr)), float(torch_feature_matching_loss(tf, tr)), atol=1e-6
    )


def test_hinge_is_a_per_scale_average():
    # scale k has constant logits c_k: adv_g = -mean(c), loss_d uses relu(1 - c) + relu(1 + c)
    c = [0.5, -2.0, 3.0]
    logits = [np.full(s, v, np.float32) for s, v in zip(SHAPES, c, strict=True)]
    assert np.isclose(float(generator_adv_loss(logits)), -np.mean(c))
    want = np.mean([max(0, 1 - v) + max(0, 1 + v) for v in c])
    assert np.isclose(float(discriminator_loss(logits, logits)), want)


def test_discriminator_accuracy():
    real = [np.array([1.0, 2.0, -1.0, 0.0]), np.array([3.0, 3.0])]
    fake = [np.array([-1.0, -2.0, 0.5, 0.0]), np.array([1.0, -1.0])]
    real_acc, fake_acc = discriminator_accuracy(real, fake)
    assert np.isclose(float(real_acc), (0.5 + 1.0) / 2)  # 0 counts as wrong for real
    assert np.isclose(float(fake_acc), (0.5 + 0.5) / 2)  # and as wrong for fake


def test_gradients_reach_fake_audio_only():
    rng = np.random.default_rng(1)
    # a small discriminator (two scales, 8 filters) keeps compile time down; same structure
    disc = MultiScaleSTFTDiscriminator(
        filters=8, n_ffts=(256, 128), hop_lengths=(64, 32), win_lengths=(256, 128)
    )
    fake = jnp.asarray(0.3 * rng.standard_normal((1, 1024)), jnp.float32)
    real = jnp.asarray(0.3 * rng.standard_normal((1, 1024)), jnp.float32)
    params = jax.jit(disc.init)(jax.random.key(0), fake)

    def adv(fake_audio):
        return generator_adv_loss(disc.apply(params, fake_audio)[0])

    def feat(fake_audio, real_audio):
        _, fmaps_f = disc.apply(params, fake_audio)
        _, fmaps_r = disc.apply(params, real_audio)
        return feature_matching_loss(fmaps_f, fmaps_r)

    @jax.jit
    def grads(fake_audio, real_audio):
        return jax.grad(adv)(fake_audio), jax.grad(feat, argnums=(0, 1))(fake_audio, real_audio)

    g_adv, (g_feat_fake, g_feat_real) = grads(fake, real)
    assert bool(jnp.all(jnp.isfinite(g_adv))) and float(jnp.abs(g_adv).max()) > 0
    assert float(jnp.abs(g_feat_fake).max()) > 0
    assert float(jnp.abs(g_feat_real).max()) == 0.0  # real branch is under stop_gradient
