"""Split residual VQ with EMA codebooks, as used by Amy (docs/original.md §3).

``SplitResidualVQ`` holds two ``ResidualVQ``s that quantise the *same* input: ``rvq_first``
(codebook 0 = semantic, codebook 1 = prosody quantising the residual of codebook 0) and
``rvq_rest`` (the acoustic codebooks). Codebook buffers live in the mutable ``codebooks``
collection (names in docs/CONTRACTS.md); a training call needs
``apply(..., mutable=["codebooks"], rngs={"quantizer": key})`` (or an explicit ``rng=``).

Gradients (docs/original.md §3.7, §3.9): residuals use detached codebook vectors and the training
output
is ``z + stop_gradient(q_sum - z)``, so the only gradient path from the output back to the
input is the whole-RVQ identity STE; centroids never receive gradients; ``decode(codes)``
reaches only ``output_proj``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from amylm_jax.config import QuantizerConfig
from amylm_jax.models.vq_codebook import (
    CodebookState,
    CodebookStep,
    centroids,
    eval_step,
    initial_state,
    train_update,
)
from amylm_jax.models.vq_kmeans import nearest_codes

# PyTorch Conv1d default init (kaiming-uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@struct.dataclass
class RVQOutput:
    """Result of one ``ResidualVQ`` forward.

    ``x`` is ``[B, T, output_dimension]``; ``codes`` ``[B, K, T]`` int32 (K active layers);
    ``penalty`` the commitment loss (computed, unused at REF; 0 in eval mode); ``metrics`` a
    flat dict ``{entropy_g, expired_g, usage_g}`` over the active global codebook indices g;
    ``first_vectors`` the (detached) codebook vectors layer 0 chose, ``[B, T, dimension]``.
    """

    x: jax.Array
    codes: jax.Array
    penalty: jax.Array
    metrics: dict[str, jax.Array]
    first_vectors: jax.Array | None = None


@struct.dataclass
class SplitRVQOutput:
    """Both sub-results kept apart: the trainer needs ``x_sp = first.x``, ``x_ac = rest.x``."""

    first: RVQOutput
    rest: RVQOutput

    @property
    def x(self) -> jax.Array:
        """Sum of both sub-quantizer outputs (what the decoder sees)."""
        return self.first.x + self.rest.x

    @property
    def codes(self) -> jax.Array:
        """``[B, num_codebooks, T]``: rvq_first codes followed by rvq_rest codes."""
        return jnp.concatenate([self.first.codes, self.rest.codes], axis=1)

    @property
    def metrics(self) -> dict[str, jax.Array]:
        return {**self.first.metrics, **self.rest.metrics}

    @property
    def penalty(self) -> jax.Array:
        """Codebook-count-weighted mean of both penalties, as the original split forward."""
        n_first, n_rest = self.first.codes.shape[1], self.rest.codes.shape[1]
        total = self.first.penalty * n_first + self.rest.penalty * n_rest
        return total / max(n_first + n_rest, 1)


class EuclideanCodebook(nn.Module):
    """State holder for one codebook slot; the arithmetic is in ``vq_codebook``.

    ``frozen`` slots quantise in training too but never update (no k-means, EMA, expiry,
    countdown). During ``init`` nothing updates either, so ``init`` returns fresh buffers.
    """

    config: QuantizerConfig
    frozen: bool = False

    def setup(self):
        cfg = self.config
        self._embedding_sum = self.variable(
            "codebooks", "embedding_sum", lambda: initial_state(cfg).embedding_sum
        )
        self._cluster_usage = self.variable(
            "codebooks", "cluster_usage", lambda: initial_state(cfg).cluster_usage
        )
        self._initialized = self.variable(
            "codebooks", "initialized", lambda: initial_state(cfg).initialized
        )
        self._countdown = self.variable(
            "codebooks", "countdown", lambda: initial_state(cfg).countdown
        )

    def state(self) -> CodebookState:
        """Current buffers (post-update if this apply already ran a training call)."""
        return CodebookState(
            embedding_sum=self._embedding_sum.value,
            cluster_usage=self._cluster_usage.value,
            initialized=self._initialized.value,
            countdown=self._countdown.value,
        )

    def embedding(self) -> jax.Array:
        """Centroids ``[bins, dim]`` of the current state, without gradient."""
        return centroids(self.state(), self.config.epsilon)

    def __call__(
        self, x: jax.Array, *, train: bool, allow_init: jax.Array, key: jax.Array | None
    ) -> CodebookStep:
        """Quantise ``x`` ``[M, dim]``; in training (and not frozen) also update the buffers."""
        state = self.state()
        if not train or self.frozen or self.is_initializing():
            return eval_step(state, x, self.config)
        new_state, step = train_update(state, x, allow_init, key, self.config)
        self._embedding_sum.value = new_state.embedding_sum
        self._cluster_usage.value = new_state.cluster_usage
        self._initialized.value = new_state.initialized
        self._countdown.value = new_state.countdown
        return step


class ResidualVQ(nn.Module):
    """Residual VQ with 1x1 (Dense) projections, ``n_q`` slots of which ``n_active`` run.

    All ``n_q`` slots keep their buffers (``layers_{l}``) so idle codebooks survive a
    checkpoint round trip. ``codebook_offset`` maps slot ``l`` to global index ``l + offset``
    (metric names and ``QuantizerConfig.frozen_codebooks``).
    """

    config: QuantizerConfig
    n_q: int
    n_active: int
    codebook_offset: int = 0

    def setup(self):
        cfg = self.config
        if not 0 <= self.n_active <= self.n_q:
            raise ValueError(f"n_active={self.n_active} must lie in [0, n_q={self.n_q}]")
        self.input_proj = nn.Dense(cfg.dimension, use_bias=False, kernel_init=_torch_default_init)
        self.output_proj = nn.Dense(
            cfg.output_dimension, use_bias=False, kernel_init=_torch_default_init
        )
        frozen = set(cfg.frozen_codebooks)
        self.layers = [
            EuclideanCodebook(cfg, frozen=(l + self.codebook_offset) in frozen)
            for l in range(self.n_q)
        ]

    def _touch_all(self, emb: jax.Array) -> None:
        """During ``init``, create every slot's buffers and both projections."""
        if self.is_initializing():
            for layer in self.layers:
                layer.state()
            z = self.input_proj(jnp.zeros((1, emb.shape[-1]), emb.dtype))
            self.output_proj(z)

    def __call__(
        self,
        emb: jax.Array,
        *,
        train: bool,
        rng: jax.Array | None = None,
        keep: jax.Array | None = None,
    ) -> RVQOutput:
        """Quantise ``emb`` ``[B, T, input_dimension]`` (docs/original.md §3.7).

        In training mode the active, non-frozen codebooks update their buffers (requires the
        ``codebooks`` collection to be mutable) and draw randomness from ``rng`` or, if None,
        from the ``quantizer`` RNG stream; slot ``l`` uses ``jax.random.split(rng, n_q)[l]``.

        ``keep`` ``[B]`` (quantizer dropout) sums only the first ``keep[b]`` slots into example
        ``b``'s output; every slot still quantises (and learns from) the full residual, so the
        codes, codebook updates and metrics are those of the full quantizer.
        """
        self._touch_all(emb)
        b, t, _ = emb.shape
        z = self.input_proj(emb)
        updating = train and not self.is_initializing()
        keys = None
        if updating and self.n_active > 0:
            if rng is None:
                rng = self.make_rng("quantizer")
            keys = jax.random.split(rng, self.n_q)

        residual = z.reshape(b * t, -1)
        q_sum = jnp.zeros_like(residual)
        codes, commits, metrics = [], [], {}
        first_vectors = None
        prev_initialized = jnp.array(True)
        for l in range(self.n_active):
            layer = self.layers[l]
            # k-means for slot l>0 only if slot l-1 was initialised *before* this call.
            initialized_before = layer.state().initialized > 0
            step = layer(
                residual,
                train=updating,
                allow_init=prev_initialized,
                key=None if keys is None else keys[l],
            )
            prev_initialized = initialized_before
            q_l = jax.lax.stop_gradient(step.quantized)
            if l == 0:
                first_vectors = q_l
            if train:
                commits.append(jnp.mean(jnp.square(residual - q_l)))
            residual = residual - q_l
            if keep is not None:
                q_l = q_l * jnp.repeat(l < keep, t)[:, None].astype(q_l.dtype)
            q_sum = q_sum + q_l
            codes.append(step.codes.reshape(b, t))
            g = l + self.codebook_offset
            metrics[f"entropy_{g}"] = step.entropy
            metrics[f"expired_{g}"] = step.expired
            metrics[f"usage_{g}"] = step.usage

        q_sum = q_sum.reshape(z.shape)
        if self.n_active == 0:
            x = jnp.zeros((b, t, self.config.output_dimension), z.dtype)
        else:
            out = z + jax.lax.stop_gradient(q_sum - z) if train else q_sum
            x = self.output_proj(out)
        codes_bkt = jnp.stack(codes, axis=1) if codes else jnp.zeros((b, 0, t), jnp.int32)
        penalty = jnp.mean(jnp.stack(commits)) if commits else jnp.zeros((), jnp.float32)
        first = first_vectors.reshape(b, t, -1) if first_vectors is not None else None
        return RVQOutput(
            x=x, codes=codes_bkt, penalty=penalty, metrics=metrics, first_vectors=first
        )

    def encode(self, emb: jax.Array) -> jax.Array:
        """Eval-path codes ``[B, n_active, T]`` int32 (docs/original.md §3.8); no state change."""
        self._touch_all(emb)
        b, t, _ = emb.shape
        residual = self.input_proj(emb).reshape(b * t, -1)
        codes = []
        for l in range(self.n_active):
            emb_l = self.layers[l].embedding()
            c = nearest_codes(residual, emb_l, self.config.tie_rtol)
            residual = residual - jnp.take(emb_l, c, axis=0)
            codes.append(c.reshape(b, t))
        if not codes:
            return jnp.zeros((b, 0, t), jnp.int32)
        return jnp.stack(codes, axis=1)

    def decode(self, codes: jax.Array) -> jax.Array:
        """``output_proj(sum_l E_l[codes[:, l]])`` for ``codes`` ``[B, k, T]``, ``k <= n_q``.

        Uses the current buffers (post-update when called after a training call in the same
        ``apply``); the gradient reaches ``output_proj`` only.
        """
        b, k, t = codes.shape
        if k > self.n_q:
            raise ValueError(f"got {k} codebooks, this RVQ has {self.n_q} slots")
        q = jnp.zeros((b, t, self.config.dimension), jnp.float32)
        for l in range(k):
            q = q + jnp.take(self.layers[l].embedding(), codes[:, l], axis=0)
        if self.is_initializing():
            self.input_proj(jnp.zeros((1, self.config.input_dimension), jnp.float32))
            for layer in self.layers:
                layer.state()
        return self.output_proj(q)


def _join(a: RVQOutput, b: RVQOutput) -> RVQOutput:
    """Two one-codebook quantizers on the same latent as one two-codebook output (``x`` summed,
    codes stacked, penalties averaged); ``first_vectors`` are the first one's."""
    return RVQOutput(
        x=a.x + b.x,
        codes=jnp.concatenate([a.codes, b.codes], axis=1),
        penalty=(a.penalty + b.penalty) / 2,
        metrics={**a.metrics, **b.metrics},
        first_vectors=a.first_vectors,
    )


class SplitResidualVQ(nn.Module):
    """Amy's split quantizer (docs/original.md §3.1): ``rvq_first`` (2 slots) + ``rvq_rest`` in
    parallel. With ``prosody_topology="parallel"``, ``rvq_first`` holds codebook 0 only and
    ``rvq_prosody`` quantises the same latent for codebook 1; their outputs add up to ``x_sp``.
    """

    config: QuantizerConfig

    def setup(self):
        cfg = self.config
        self.parallel = cfg.prosody_topology == "parallel"
        n_first = 1 if self.parallel else cfg.n_q_first
        self.rvq_first = ResidualVQ(cfg, n_q=n_first, n_active=n_first)
        if self.parallel:
            self.rvq_prosody = ResidualVQ(cfg, n_q=1, n_active=1, codebook_offset=1)
        self.rvq_rest = ResidualVQ(
            cfg, n_q=cfg.n_q_rest, n_active=cfg.active_rest, codebook_offset=cfg.n_q_first
        )

    def __call__(
        self,
        emb: jax.Array,
        *,
        train: bool,
        train_rest: bool = True,
        rng: jax.Array | None = None,
        rest_keep: jax.Array | None = None,
    ) -> SplitRVQOutput:
        """Quantise ``emb`` ``[B, T, input_dimension]`` with both sub-quantizers.

        ``train_rest=False`` runs ``rvq_rest`` in eval mode inside a training call (no
        buffer updates, no STE, zero penalty), as the ``semantic_prosody_only`` phase of
        docs/original.md §10.3. ``rng`` (else the ``quantizer`` stream) is split into (first, rest).
        ``rest_keep`` ``[B]``: acoustic codebooks summed into each example's output (quantizer
        dropout; codebooks 0 and 1 are always kept).
        """
        key_first = key_rest = key_prosody = None
        if train and not self.is_initializing():
            if rng is None:
                rng = self.make_rng("quantizer")
            key_first, key_rest = jax.random.split(rng)
            # The prosody quantizer's key, apart from the two the residual topology uses.
            key_prosody = jax.random.fold_in(rng, 1)
        first = self.rvq_first(emb, train=train, rng=key_first)
        if self.parallel:
            first = _join(first, self.rvq_prosody(emb, train=train, rng=key_prosody))
        rest = self.rvq_rest(emb, train=train and train_rest, rng=key_rest, keep=rest_keep)
        return SplitRVQOutput(first=first, rest=rest)

    def encode(self, emb: jax.Array) -> jax.Array:
        """Codes ``[B, num_codebooks, T]`` int32 (eval path, docs/original.md §3.8)."""
        parts = [self.rvq_first.encode(emb)]
        if self.parallel:
            parts.append(self.rvq_prosody.encode(emb))
        return jnp.concatenate([*parts, self.rvq_rest.encode(emb)], axis=1)

    def decode(self, codes: jax.Array) -> jax.Array:
        """``[B, k, T]`` codes -> ``[B, T, output_dimension]``; ``k`` may be < num_codebooks.

        ``rvq_first.decode(codes[:, :2]) + rvq_rest.decode(codes[:, 2:])``; a one-codebook
        slice uses only codebook 0 (the "codebook 0 only" decode).
        """
        n_first = self.config.n_q_first
        if self.parallel:
            out = self.rvq_first.decode(codes[:, :1])
            if codes.shape[1] > 1:
                out = out + self.rvq_prosody.decode(codes[:, 1:2])
        else:
            out = self.rvq_first.decode(codes[:, :n_first])
        if codes.shape[1] > n_first:
            out = out + self.rvq_rest.decode(codes[:, n_first:])
        return out

    def decode_semantic(self, codes: jax.Array) -> jax.Array:
        """``rvq_first.decode(codes[:, :1])``: the LLM distillation latent (docs/original.md §3.9).

        Called after the training forward in the same ``apply`` it uses the post-update
        codebook-0 centroids, as the original trainer does.
        """
        return self.rvq_first.decode(codes[:, :1])

    def project_semantic(self, vectors: jax.Array) -> jax.Array:
        """``rvq_first.output_proj`` of given codebook-0 vectors ``[B, T, dimension]``."""
        return self.rvq_first.output_proj(vectors)

    def semantic_ste(self, emb: jax.Array, codes: jax.Array) -> jax.Array:
        """Codebook-0-only ``rvq_first`` output with the straight-through estimator.

        ``output_proj(z + stop_gradient(E_0[code_0] - z))`` with ``z = input_proj(emb)``: the
        "STE" semantic latent of the later experiments (docs/original.md §10.2-10.3). Its gradient
        reaches
        both projections and ``emb``. Call it with the pre-update codebooks.
        """
        rvq = self.rvq_first
        z = rvq.input_proj(emb)
        q0 = jnp.take(rvq.layers[0].embedding(), codes[:, 0], axis=0)
        return rvq.output_proj(z + jax.lax.stop_gradient(q0 - z))
