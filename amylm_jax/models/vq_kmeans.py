"""Nearest-centroid search, index sampling and k-means for the EMA codebooks (docs/original.md
§3.3, §3.5).

Everything here is a pure function on plain arrays so that it jits with fixed shapes and so
that tests can reproduce the random choices: every random draw of the quantizer goes through
:func:`sample_indices`, and the keys are derived with :func:`codebook_keys` and
:func:`kmeans_sample_indices`. A test holding the same key gets the same indices without
re-implementing JAX's RNG.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Distances decide discrete codes; a low-precision matmul (TPU/GPU default) can flip argmins.
_HIGHEST = jax.lax.Precision.HIGHEST


def sample_indices(key: jax.Array, num_samples: int, num: int) -> jax.Array:
    """Draw ``num`` row indices out of ``num_samples`` the way the original samples vectors.

    Without replacement (a random permutation prefix) when there are enough samples, with
    replacement (uniform integers) otherwise; at REF the latter is the usual case
    (208 vectors for 2048 codes). Shapes are static, so the branch is a Python one.
    """
    if num_samples >= num:
        return jax.random.permutation(key, num_samples)[:num].astype(jnp.int32)
    return jax.random.randint(key, (num,), 0, num_samples, dtype=jnp.int32)


def codebook_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split one codebook's per-call key into (k-means key, dead-code candidate key)."""
    kmeans_key, expiry_key = jax.random.split(key)
    return kmeans_key, expiry_key


def kmeans_sample_indices(key: jax.Array, num_samples: int, bins: int, iters: int) -> jax.Array:
    """All index draws of one k-means run, ``[iters + 1, bins]``.

    Row 0 picks the initial means; row ``i + 1`` is the resampling pool of iteration ``i``
    (used only for clusters that came out empty).
    """
    keys = jax.random.split(key, iters + 1)
    return jax.vmap(lambda k: sample_indices(k, num_samples, bins))(keys)


def nearest_codes(x: jax.Array, centroids: jax.Array, tie_rtol: float = 0.0) -> jax.Array:
    """Index of the nearest centroid (Euclidean) for each row of ``x`` ``[M, D]`` -> ``[M]``.

    Uses ``|e|^2 - 2 x.e`` (the ``|x|^2`` term does not change the choice) in float32 at
    HIGHEST matmul precision; ``argmin`` returns the lowest index on ties, as ``torch.argmin``.

    Centroids that are equal in exact arithmetic are common: k-means on fewer vectors than
    codes seeds many codes with the same vector, and after one EMA update a code that moved by
    nothing, ``(decay * s + (1 - decay) * s) / (decay * n + (1 - decay) * n)``, and a copy that
    nothing was assigned to, ``(decay * s) / (decay * n)``, differ only by rounding. A plain
    argmin picks among such centroids by rounding, which depends on the backend and the
    precision (the original's own choice depends on its BLAS kernels). With ``tie_rtol > 0``
    every centroid within ``tie_rtol * (|x|^2 + |e|^2)`` of the nearest squared distance (``e``
    the nearest centroid) counts as tied and the lowest index wins, the same on every backend;
    distinct centroids that close are merged too, so the default is 0 (the original's argmin).
    """
    x = x.astype(jnp.float32)
    centroids = centroids.astype(jnp.float32)
    cross = jnp.dot(x, centroids.T, precision=_HIGHEST, preferred_element_type=jnp.float32)
    sq_c = jnp.sum(centroids * centroids, axis=-1)
    dists = sq_c[None, :] - 2.0 * cross
    best = jnp.argmin(dists, axis=-1)
    if not tie_rtol:
        return best.astype(jnp.int32)
    scale = jnp.sum(x * x, axis=-1) + sq_c[best]
    bound = jnp.take_along_axis(dists, best[:, None], axis=-1) + tie_rtol * scale[:, None]
    return jnp.argmax(dists <= bound, axis=-1).astype(jnp.int32)


def cluster_stats(x: jax.Array, codes: jax.Array, bins: int) -> tuple[jax.Array, jax.Array]:
    """Per-code counts ``[bins]`` and sums ``[bins, D]`` of the rows of ``x`` assigned to it.

    Implemented with ``jax.ops.segment_sum`` (a scatter-add), not a one-hot matmul: it is exact
    in float32 whatever the default matmul precision of the backend. Swap here if a one-hot
    matmul turns out faster on an accelerator.
    """
    x = x.astype(jnp.float32)
    counts = jax.ops.segment_sum(
        jnp.ones(codes.shape, jnp.float32), codes, num_segments=bins, indices_are_sorted=False
    )
    sums = jax.ops.segment_sum(x, codes, num_segments=bins, indices_are_sorted=False)
    return counts, sums


def kmeans(x: jax.Array, indices: jax.Array, tie_rtol: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Euclidean k-means as the original ``_run_kmeans`` (docs/original.md §3.5).

    Args:
      x: samples ``[M, D]`` (no gradient is taken through this).
      indices: ``[iters + 1, bins]`` from :func:`kmeans_sample_indices`.
      tie_rtol: the assignment's tie rule (:func:`nearest_codes`).

    Returns:
      ``(means [bins, D], bins_count [bins])`` where the counts are the **last iteration's**
      assignment counts clamped to >= 1 (the counts before the final mean update), as float32.
    """
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    num_clusters = indices.shape[1]
    iters = indices.shape[0] - 1

    def body(i, carry):
        means, _ = carry
        codes = nearest_codes(x, means, tie_rtol)
        counts, sums = cluster_stats(x, codes, num_clusters)
        empty = counts == 0
        counts = jnp.maximum(counts, 1.0)
        new_means = sums / counts[:, None]
        resampled = x[indices[i + 1]]
        means = jnp.where(empty[:, None], resampled, new_means)
        return means, counts

    init = (x[indices[0]], jnp.ones((num_clusters,), jnp.float32))
    means, counts = jax.lax.fori_loop(0, iters, body, init)
    return means, counts
