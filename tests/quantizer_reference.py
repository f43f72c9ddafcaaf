"""Independent NumPy (float64) reference of the EMA codebook and residual VQ (docs/original.md
§3.4-3.7).

Written from the specification, not from the JAX code. Randomness is taken as input: the
caller passes the row indices that were sampled for k-means and for dead-code candidates, so
the reference is deterministic and comparable with any RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RefCodebook:
    """Buffers of one codebook plus the expiry countdown."""

    embedding_sum: np.ndarray
    cluster_usage: np.ndarray
    initialized: bool = False
    countdown: int = 5

    def copy(self) -> RefCodebook:
        return RefCodebook(
            self.embedding_sum.copy(), self.cluster_usage.copy(), self.initialized, self.countdown
        )


@dataclass
class RefHyper:
    bins: int
    decay: float = 0.99
    epsilon: float = 1e-5
    threshold_usage_ratio: float = 0.1
    replaced_usage_ratio: float = 1.0
    check_unused_every: int = 5


@dataclass
class RefStep:
    codes: np.ndarray
    q: np.ndarray
    metrics: dict = field(default_factory=dict)


def embedding(cb: RefCodebook, eps: float) -> np.ndarray:
    return cb.embedding_sum / np.maximum(cb.cluster_usage, eps)[:, None]


def assign(x: np.ndarray, means: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Nearest mean by explicit squared differences; np.argmin takes the first on ties.

    Duplicate centroids (common after k-means with replacement) give distances that are
    equal in exact arithmetic, and which one wins is then decided by float rounding. If
    ``tie_break`` (the implementation's codes) names a centroid whose distance equals the
    minimum to 1e-9 relative, that choice is accepted; any other disagreement remains.
    """
    d = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    codes = np.argmin(d, axis=1)
    if tie_break is not None:
        rows = np.arange(len(x))
        dmin = d[rows, codes]
        alt = np.asarray(tie_break)
        tied = d[rows, alt] <= dmin * (1 + 1e-9) + 1e-12
        codes = np.where(tied, alt, codes)
    return codes


def kmeans(x: np.ndarray, index_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """docs/original.md §3.5: row 0 = initial picks, row i+1 = resample pool of iteration i."""
    k = index_rows.shape[1]
    means = x[index_rows[0]].copy()
    bins = None
    for it in range(index_rows.shape[0] - 1):
        a = assign(x, means)
        bins = np.bincount(a, minlength=k).astype(np.float64)
        zero = bins == 0
        bins = np.maximum(bins, 1.0)
        new = np.zeros_like(means)
        np.add.at(new, a, x)
        new /= bins[:, None]
        means = np.where(zero[:, None], x[index_rows[it + 1]], new)
    return means, bins


def codebook_train(
    cb: RefCodebook,
    x: np.ndarray,
    hp: RefHyper,
    allow_init: bool,
    kmeans_rows: np.ndarray,
    candidate_rows: np.ndarray,
    tie_break: np.ndarray | None = None,
) -> RefStep:
    """docs/original.md §3.4 steps 1-8 in place on ``cb``; returns codes, q and the metrics."""
    x = np.asarray(x, np.float64)
    if allow_init and not cb.initialized:
        means, bins = kmeans(x, kmeans_rows)
        cb.embedding_sum = means * bins[:, None]
        cb.cluster_usage = bins.copy()
        cb.initialized = True
    e = embedding(cb, hp.epsilon)
    codes = assign(x, e, tie_break)
    q = e[codes]
    expired_frac = 0.0
    if cb.initialized:
        cb.countdown -= 1
        if cb.countdown == 0:
            cb.countdown = hp.check_unused_every
            total = cb.cluster_usage.sum()
            expired = cb.cluster_usage < hp.threshold_usage_ratio * total / hp.bins
            r = hp.replaced_usage_ratio * total / hp.bins
            cand = x[candidate_rows]
            cb.embedding_sum = np.where(expired[:, None], r * cand, cb.embedding_sum)
            cb.cluster_usage = np.where(expired, r, cb.cluster_usage)
            expired_frac = float(expired.mean())
    counts = np.bincount(codes, minlength=hp.bins).astype(np.float64)
    cb.cluster_usage = hp.decay * cb.cluster_usage + (1 - hp.decay) * counts
    metrics = {"expired": expired_frac}
    p = cb.cluster_usage / cb.cluster_usage.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(hp.bins))
    metrics["entropy"] = entropy if cb.initialized else 0.0
    metrics["usage"] = float(np.mean(cb.cluster_usage > 0.1 * cb.cluster_usage.mean()))
    sums = np.zeros_like(cb.embedding_sum)
    np.add.at(sums, codes, x)
    cb.embedding_sum = hp.decay * cb.embedding_sum + (1 - hp.decay) * sums
    return RefStep(codes=codes, q=q, metrics=metrics)


def rvq_train(
    layers: list[RefCodebook],
    emb: np.ndarray,
    w_in: np.ndarray,
    w_out: np.ndarray,
    hp: RefHyper,
    n_active: int,
    kmeans_rows: list[np.ndarray],
    candidate_rows: list[np.ndarray],
    offset: int = 0,
    tie_break: np.ndarray | None = None,
) -> dict:
    """docs/original.md §3.7 training forward of one residual VQ (values only; gradients are not
    modelled).

    ``emb`` is ``[B, T, I]`` channels-last, ``w_in`` ``[I, D]``, ``w_out`` ``[D, O]``.
    Returns x ``[B, T, O]``, codes ``[B, K, T]``, per-layer q ``[K, B*T, D]``, penalty and
    metrics named ``{entropy,expired,usage}_{l + offset}``. ``tie_break`` ``[B, K, T]``: the
    implementation's codes, consulted only for exact ties (see :func:`assign`).
    """
    b, t, _ = emb.shape
    z = np.asarray(emb, np.float64).reshape(b * t, -1) @ np.asarray(w_in, np.float64)
    residual = z.copy()
    q_sum = np.zeros_like(z)
    codes, qs, commits, metrics = [], [], [], {}
    prev_was_initialized = True
    for l in range(n_active):
        was_initialized = layers[l].initialized
        hint = None if tie_break is None else np.asarray(tie_break)[:, l].reshape(-1)
        step = codebook_train(
            layers[l], residual, hp, prev_was_initialized, kmeans_rows[l], candidate_rows[l], hint
        )
        prev_was_initialized = was_initialized
        commits.append(np.mean((residual - step.q) ** 2))
        residual = residual - step.q
        q_sum = q_sum + step.q
        codes.append(step.codes.reshape(b, t))
        qs.append(step.q)
        for k, v in step.metrics.items():
            metrics[f"{k}_{l + offset}"] = v
    x = (q_sum @ np.asarray(w_out, np.float64)).reshape(b, t, -1)
    return {
        "x": x,
        "codes": np.stack(codes, axis=1),
        "q": np.stack(qs),
        "penalty": float(np.mean(commits)),
        "metrics": metrics,
    }
