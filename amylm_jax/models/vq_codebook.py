"""One Euclidean EMA codebook as pure functions on its state (docs/original.md §3.3-3.6).

The Flax module in ``quantizer.py`` only stores the state in the ``codebooks`` collection and
calls :func:`train_update`; keeping the arithmetic here makes it jittable with fixed shapes
and testable against a NumPy reference without Flax in the way.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from amylm_jax.config import QuantizerConfig
from amylm_jax.models.vq_kmeans import (
    cluster_stats,
    codebook_keys,
    kmeans,
    kmeans_sample_indices,
    nearest_codes,
    sample_indices,
)


class CodebookState(NamedTuple):
    """The persistent buffers of one codebook (names as in the ``codebooks`` collection)."""

    embedding_sum: jax.Array  # [bins, dim] float32
    cluster_usage: jax.Array  # [bins] float32
    initialized: jax.Array  # [] float32, 0 or 1
    countdown: jax.Array  # [] int32, training calls left until the next dead-code check


class CodebookStep(NamedTuple):
    """What one codebook call produces besides its new state."""

    codes: jax.Array  # [M] int32
    quantized: jax.Array  # [M, dim], E[codes] with the centroids used for the argmin
    expired: jax.Array  # [] fraction of codes replaced at this call
    entropy: jax.Array  # [] H(p)/ln(bins) of the (updated) usage; 0 when not initialised
    usage: jax.Array  # [] fraction of codes with usage > 0.1 * mean usage


def initial_state(cfg: QuantizerConfig) -> CodebookState:
    """Values of a codebook that was not loaded from a checkpoint (docs/original.md §3.3)."""
    return CodebookState(
        embedding_sum=jnp.zeros((cfg.bins, cfg.dimension), jnp.float32),
        cluster_usage=jnp.ones((cfg.bins,), jnp.float32),
        initialized=jnp.zeros((), jnp.float32),
        countdown=jnp.full((), cfg.check_unused_every, jnp.int32),
    )


def centroids(state: CodebookState, epsilon: float) -> jax.Array:
    """``E = embedding_sum / max(cluster_usage, eps)``, derived on the fly and never trained."""
    usage = jnp.maximum(state.cluster_usage, epsilon)
    return jax.lax.stop_gradient(state.embedding_sum / usage[:, None])


def normalized_entropy(usage: jax.Array) -> jax.Array:
    """``H(p) / ln(bins)`` with ``p = usage / sum(usage)`` and ``0 ln 0 = 0``."""
    proba = usage / jnp.sum(usage)
    safe = jnp.where(proba > 0, proba, 1.0)
    return -jnp.sum(jnp.where(proba > 0, proba * jnp.log(safe), 0.0)) / math.log(usage.shape[0])


def usage_ratio(usage: jax.Array, threshold_ratio: float = 0.1) -> jax.Array:
    """Fraction of codes whose usage exceeds ``threshold_ratio`` times the mean usage."""
    return jnp.mean((usage > threshold_ratio * jnp.mean(usage)).astype(jnp.float32))


def quantize(
    state: CodebookState, x: jax.Array, epsilon: float, tie_rtol: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Eval-mode quantisation (docs/original.md §3.4 steps 2-3): ``(codes [M], E[codes] [M,
    dim])``."""
    emb = centroids(state, epsilon)
    codes = nearest_codes(x, emb, tie_rtol)
    return codes, jnp.take(emb, codes, axis=0)


def eval_step(state: CodebookState, x: jax.Array, cfg: QuantizerConfig) -> CodebookStep:
    """Quantise without touching the state; metrics describe the current usage."""
    codes, q = quantize(state, x, cfg.epsilon, cfg.tie_rtol)
    entropy = jnp.where(state.initialized > 0, normalized_entropy(state.cluster_usage), 0.0)
    return CodebookStep(
        codes=codes,
        quantized=q,
        expired=jnp.zeros((), jnp.float32),
        entropy=entropy,
        usage=usage_ratio(state.cluster_usage),
    )


def kmeans_init(
    state: CodebookState, x: jax.Array, key: jax.Array, cfg: QuantizerConfig
) -> CodebookState:
    """Run k-means on ``x`` and write it back: sums = means * counts, usage = counts (§3.5)."""
    indices = kmeans_sample_indices(key, x.shape[0], cfg.bins, cfg.kmeans_iters)
    means, counts = kmeans(x, indices, cfg.tie_rtol)
    return state._replace(
        embedding_sum=means * counts[:, None],
        cluster_usage=counts,
        initialized=jnp.ones((), jnp.float32),
    )


def expiry_candidate_indices(key: jax.Array, num_samples: int, bins: int) -> jax.Array:
    """Row of this call's input that replaces code ``c`` if it expires, for every ``c``."""
    return sample_indices(key, num_samples, bins)


def train_update(
    state: CodebookState,
    x: jax.Array,
    allow_init: jax.Array,
    key: jax.Array,
    cfg: QuantizerConfig,
) -> tuple[CodebookState, CodebookStep]:
    """One training-mode codebook call in the exact order of docs/original.md §3.4.

    Args:
      state: buffers before the call.
      x: input vectors ``[M, dim]``; treated as constants (no gradient flows to the state).
      allow_init: scalar bool, whether k-means may run if the codebook is not initialised
        (the "previous layer already initialised" rule of §3.5, decided by the caller).
      key: this codebook's key for this call, split by :func:`codebook_keys`.
      cfg: hyper-parameters.

    Returns:
      The new state and the codes / quantised vectors / metrics of this call.
    """
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    num_samples = x.shape[0]
    bins = cfg.bins
    kmeans_key, expiry_key = codebook_keys(key)

    # 1. k-means only when allowed and still uninitialised; lax.cond keeps it off the hot path.
    do_init = jnp.logical_and(allow_init, state.initialized == 0)
    state = jax.lax.cond(do_init, lambda s: kmeans_init(s, x, kmeans_key, cfg), lambda s: s, state)
    initialized = state.initialized > 0

    # 2-3. quantise against the pre-update centroids.
    codes, q = quantize(state, x, cfg.epsilon, cfg.tie_rtol)

    # 4. dead-code check (initialised codebooks only), before the EMA, on pre-update usage.
    countdown = jnp.where(initialized, state.countdown - 1, state.countdown)
    check = jnp.logical_and(initialized, countdown <= 0)
    countdown = jnp.where(check, jnp.int32(cfg.check_unused_every), countdown).astype(jnp.int32)
    usage = state.cluster_usage
    total = jnp.sum(usage)
    expired = jnp.logical_and(check, usage < cfg.threshold_usage_ratio * total / bins)
    replace_usage = cfg.replaced_usage_ratio * total / bins
    candidates = x[expiry_candidate_indices(expiry_key, num_samples, bins)]
    embedding_sum = jnp.where(expired[:, None], replace_usage * candidates, state.embedding_sum)
    usage = jnp.where(expired, replace_usage, usage)

    # 5-7. usage EMA, entropy on the updated usage, sum EMA.
    counts, sums = cluster_stats(x, codes, bins)
    decay = cfg.decay
    usage = usage * decay + counts * (1 - decay)
    embedding_sum = embedding_sum * decay + sums * (1 - decay)
    entropy = jnp.where(initialized, normalized_entropy(usage), 0.0)

    new_state = CodebookState(
        embedding_sum=embedding_sum,
        cluster_usage=usage,
        initialized=state.initialized,
        countdown=countdown,
    )
    step = CodebookStep(
        codes=codes,
        quantized=q,
        expired=jnp.mean(expired.astype(jnp.float32)),
        entropy=entropy,
        usage=usage_ratio(usage),
    )
    return new_state, step
