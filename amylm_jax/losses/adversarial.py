"""Hinge adversarial losses, feature matching and discriminator accuracy (docs/original.md §6.2,
§6.3, §8).

All functions take the per-scale lists returned by
``amylm_jax.models.discriminator.MultiScaleSTFTDiscriminator`` and average over the
``K`` sub-discriminators ("normalize=True" in the original). Means run over all elements of
each logit / feature-map tensor. Everything is reduced in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x.astype(jnp.float32))


def generator_adv_loss(logits_fake: Sequence[jax.Array]) -> jax.Array:
    """Hinge generator loss ``(1/K) sum_k -mean(D_k(fake))``; 0 for all-zero logits."""
    return sum(-_mean(lg) for lg in logits_fake) / len(logits_fake)


def discriminator_loss(
    logits_real: Sequence[jax.Array], logits_fake: Sequence[jax.Array]
) -> jax.Array:
    """Hinge discriminator loss ``(1/K) sum_k [mean relu(1 - real) + mean relu(1 + fake)]``.

    The caller passes logits of detached fake audio (or differentiates w.r.t. D params only);
    all-zero logits give 2.
    """
    if len(logits_real) != len(logits_fake):
        raise ValueError("real and fake logits must come from the same discriminators")
    total = sum(
        _mean(jax.nn.relu(1.0 - r)) + _mean(jax.nn.relu(1.0 + f))
        for r, f in zip(logits_real, logits_fake, strict=True)
    )
    return total / len(logits_real)


def feature_matching_loss(
    fmaps_fake: Sequence[Sequence[jax.Array]], fmaps_real: Sequence[Sequence[jax.Array]]
) -> jax.Array:
    """L1 feature matching ``(1/K) sum_k (1/L) sum_l mean|f_fake - f_real|``.

    Real feature maps are put under ``stop_gradient`` (the original computes them under
    no-grad), so only the fake branch carries gradient.
    """
    if len(fmaps_fake) != len(fmaps_real):
        raise ValueError("real and fake feature maps must come from the same discriminators")
    total = jnp.zeros((), jnp.float32)
    for ff, fr in zip(fmaps_fake, fmaps_real, strict=True):
        per_scale = sum(
            _mean(jnp.abs(a.astype(jnp.float32) - jax.lax.stop_gradient(b).astype(jnp.float32)))
            for a, b in zip(ff, fr, strict=True)
        )
        total = total + per_scale / len(ff)
    return total / len(fmaps_fake)


def discriminator_accuracy(
    logits_real: Sequence[jax.Array], logits_fake: Sequence[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """``(real_acc, fake_acc)`` = ``(1/K) sum_k mean(1[D_k(real) > 0])`` and ``... < 0`` (fake).

    An addition to the original's metrics (docs/original.md §8): 0 is the hinge decision boundary.
    """
    real = sum(_mean(r > 0) for r in logits_real) / len(logits_real)
    fake = sum(_mean(f < 0) for f in logits_fake) / len(logits_fake)
    return jax.lax.stop_gradient(real), jax.lax.stop_gradient(fake)
