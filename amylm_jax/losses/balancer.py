"""Gradient shares of the generator losses and the loss balancer.

The reconstruction and adversarial losses (``adv_g``, ``feat``, ``msspec``) all reach the
generator through the decoded audio; their gradients are compared there, as audiocraft's
balancer does. The two distillation losses (``wavlm``, ``llm``) never reach the audio: each
reaches the generator through the latent its projection head reads (the semantic + prosody
quantizer output for ``wavlm``, the codebook-0 latent for ``llm``), so each is measured at its
own latent. The norms of a group are in the same units, the two groups' are not, so each group
gets its own shares (``train/grad_share/<loss>``, summing to 1 within a group) and, with the
balancer on, its own total gradient norm.

A loss's norm is the mean over the batch of each example's L2 gradient norm. With the balancer
on, the unweighted gradient ``g_k`` of each loss is rescaled to

    ratio_k * total_norm * g_k / (epsilon + avg_k),   ratio_k = alpha_k / sum of the group's alphas

where ``avg_k`` is a bias-corrected exponential moving average of ``||g_k||``
(``sum_t decay^(n-t) ||g_k||_t / sum_t decay^(n-t)``): the loss weights become fractions of the
gradient that reaches the decoded audio (or, for the distillation group, of the gradient that
reaches the latents) whatever the losses' own scales.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

AUDIO_LOSSES = ("adv_g", "feat", "msspec")
DISTILL_LOSSES = ("wavlm", "llm")
ALPHA_NAMES = {"adv_g": "alpha_adv", "feat": "alpha_feat", "msspec": "alpha_msspec",
               "wavlm": "alpha_wavlm", "llm": "alpha_llm"}  # fmt: skip


def initial_state() -> dict:
    """Moving-average state of the unweighted gradient norms (all zero, no steps yet).

    Every leaf is its own buffer: the train step donates the state, and one buffer shared by
    two leaves would be donated twice.
    """

    def zero():
        return jnp.zeros((), jnp.float32)

    return {"sums": {k: zero() for k in AUDIO_LOSSES + DISTILL_LOSSES}, "count": zero()}


def update_averages(
    state: Mapping, norms: Mapping[str, jax.Array], decay: float
) -> tuple[dict, dict[str, jax.Array]]:
    """Fold this step's unweighted norms into the averages; returns ``(state, averages)``."""
    count = decay * state["count"] + 1.0
    sums = {k: decay * state["sums"][k] + norms.get(k, 0.0) for k in state["sums"]}
    return {"sums": sums, "count": count}, {k: v / count for k, v in sums.items()}


def scales(
    averages: Mapping[str, jax.Array],
    weights: Mapping[str, float],
    total_norm: float,
    epsilon: float,
) -> dict[str, jax.Array]:
    """Per loss of one group, the factor of its unweighted gradient (0 for a loss that is off)."""
    total_weight = sum(w for w in weights.values() if w > 0)
    out = {}
    for k, w in weights.items():
        if w > 0:
            out[k] = (w / total_weight) * total_norm / (epsilon + averages[k])
        else:
            out[k] = jnp.zeros((), jnp.float32)
    return out


def shares(weighted_norms: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Each loss's fraction of its group's summed (weighted) gradient norms; 0 when all are."""
    total = sum(weighted_norms.values())
    safe = jnp.where(total > 0, total, 1.0)
    return {k: jnp.where(total > 0, v / safe, 0.0) for k, v in weighted_norms.items()}
