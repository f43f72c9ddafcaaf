"""Train state pytree, the models of one run, and optimizer construction.

The state holds everything that changes during training: generator parameters (codec +
distillation heads), the codebook EMA collection, discriminator parameters, both optimizer
states, the step and the base RNG key. Frozen parts (docs/original.md §2.9: the SEANet encoder and
the
encoder transformer) stay in ``gen_params`` but are labelled ``frozen`` in an
``optax.multi_transform`` (``set_to_zero``, no optimizer state) and are stop-gradiented in the
step, so XLA never computes their backward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from amylm_jax.config import TrainConfig
from amylm_jax.losses import balancer
from amylm_jax.models.amy_codec import AmyCodec, init_codec
from amylm_jax.models.discriminator import MultiScaleSTFTDiscriminator
from amylm_jax.models.heads import DistillHead

PyTree = Any


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes (a pytree; donated to the step)."""

    step: jax.Array
    gen_params: PyTree  # {"codec", "wavlm_head", "llm_head" (when the LLM branch is on)}
    codebooks: PyTree
    disc_params: PyTree
    opt_g: PyTree
    opt_d: PyTree
    rng: jax.Array
    # Moving average of gen_params (same tree) when optim.ema_decay > 0, else None.
    ema_params: PyTree = None
    # The loss balancer's moving averages of gradient norms when it is on, else None.
    balancer: PyTree = None


@dataclasses.dataclass(frozen=True)
class Models:
    """The (stateless) Flax modules and optax transformations of one run."""

    cfg: TrainConfig
    codec: AmyCodec
    disc: MultiScaleSTFTDiscriminator
    wavlm_head: DistillHead
    llm_head: DistillHead | None  # None: no LLM branch (llm_dim <= 0)
    tx_g: optax.GradientTransformation
    tx_d: optax.GradientTransformation
    wavlm_dim: int
    llm_dim: int  # 0 when the LLM branch is off

    @property
    def llm_on(self) -> bool:
        return self.llm_head is not None

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.cfg.precision == "bf16" else jnp.float32


def generator_labels(gen_params: PyTree, cfg: TrainConfig) -> PyTree:
    """Optimizer group of every generator leaf: frozen / rvq / heads / main."""

    def label(path, _):
        top = path[0].key
        if top in ("wavlm_head", "llm_head"):
            return "heads"
        sub = path[1].key
        keys = [p.key for p in path[1:]]
        if any("/".join(keys[:n]) in cfg.frozen for n in range(1, len(keys) + 1)):
            return "frozen"
        if sub == "quantizer":
            return "rvq"
        return "main"

    return jax.tree_util.tree_map_with_path(label, gen_params)


#: The codec submodules whose weight matrices ``optim.weight_decay_on="transformers"`` decays.
TRANSFORMERS = ("encoder_transformer", "decoder_transformer")


def transformer_weight_mask(params: PyTree) -> PyTree:
    """True for the kernels (weight matrices) of the codec's transformers, False elsewhere
    (norms, layer scales, every other module)."""

    def is_transformer_kernel(path, _):
        keys = [getattr(p, "key", None) for p in path]
        return keys[-1] == "kernel" and any(k in TRANSFORMERS for k in keys)

    return jax.tree_util.tree_map_with_path(is_transformer_kernel, params)


def _adam(cfg: TrainConfig, lr, b1: float, b2: float, group: str) -> optax.GradientTransformation:
    o = cfg.optim
    if o.optimizer == "adamw" and group in o.weight_decay_groups:
        mask = transformer_weight_mask if o.weight_decay_on == "transformers" else None
        return optax.adamw(lr, b1=b1, b2=b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    return optax.adam(lr, b1=b1, b2=b2, eps=o.eps)


def lr_schedule(cfg: TrainConfig, base: float) -> optax.Schedule:
    """``base`` x the config's warm-up and decay (``optim.schedule``) at update ``count``."""
    o = cfg.optim
    if o.schedule == "constant" and o.warmup_steps <= 0:
        return optax.constant_schedule(base)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum((count + 1) / o.warmup_steps, 1.0) if o.warmup_steps > 0 else 1.0
        after = jnp.maximum(count - o.warmup_steps, 0.0)
        if o.schedule == "cosine":
            t = jnp.minimum(after / o.decay_steps, 1.0)
            decay = o.final_lr_ratio + (1 - o.final_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        elif o.schedule == "exponential":
            decay = o.decay_rate ** (after / o.decay_steps)
        else:
            decay = 1.0
        return base * warm * decay

    return schedule


def _group_lr(cfg: TrainConfig, base: float) -> float | optax.Schedule:
    """A plain float when nothing is scheduled, so the optimizer state keeps the layout that
    runs without a schedule have always had (their checkpoints stay loadable)."""
    if cfg.optim.schedule == "constant" and cfg.optim.warmup_steps <= 0:
        return base
    return lr_schedule(cfg, base)


def rvq_learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """Quantizer-projection learning rate: the group schedule times the optional linear warm-up
    of docs/original.md §10.3."""
    base = cfg.optim.lr_rvq if cfg.optim.lr_rvq is not None else cfg.optim.lr_g
    warmup = cfg.optim.rvq_warmup_steps
    schedule = lr_schedule(cfg, base)
    if warmup <= 0:
        return schedule
    return lambda count: schedule(count) * jnp.minimum((count + 1) / warmup, 1.0)


def make_optimizers(cfg: TrainConfig) -> tuple[optax.GradientTransformation, ...]:
    """(tx_g, tx_d): G = clip(global norm) then per-group Adam; D = Adam (clip optional)."""
    o = cfg.optim
    lr_heads = o.lr_heads if o.lr_heads is not None else o.lr_g
    heads_b1 = o.heads_b1 if o.heads_b1 is not None else o.b1
    heads_b2 = o.heads_b2 if o.heads_b2 is not None else o.b2
    groups = {
        "frozen": optax.set_to_zero(),
        "main": _adam(cfg, _group_lr(cfg, o.lr_g), o.b1, o.b2, "main"),
        "rvq": _adam(cfg, rvq_learning_rate(cfg), o.b1, o.b2, "rvq"),
        "heads": _adam(cfg, _group_lr(cfg, lr_heads), heads_b1, heads_b2, "heads"),
    }
    tx_g = optax.multi_transform(groups, lambda p: generator_labels(p, cfg))
    if o.clip_g > 0:
        tx_g = optax.chain(optax.clip_by_global_norm(o.clip_g), tx_g)
    tx_d = _adam(cfg, _group_lr(cfg, o.lr_d), o.b1, o.b2, "disc")
    if o.clip_d > 0:
        tx_d = optax.chain(optax.clip_by_global_norm(o.clip_d), tx_d)
    return tx_g, tx_d


def resolve_llm_dim(cfg: TrainConfig, store_llm_dim: int) -> int:
    """The LLM branch's dim: the store's, or 0 (branch off) when ``heads.llm_dim <= 0`` or the
    store holds no LLM features; a positive ``heads.llm_dim`` must match the store."""
    want = cfg.heads.llm_dim
    if want is not None and want <= 0:
        return 0
    if store_llm_dim <= 0:
        if want is not None:
            raise ValueError(
                f"heads.llm_dim={want} but the feature store has no LLM features (llm_dim 0); "
                "set heads.llm_dim=0 or rebuild the store with an LLM teacher"
            )
        return 0
    if want is not None and want != store_llm_dim:
        raise ValueError(
            f"heads.llm_dim={want} but the feature store's LLM features have {store_llm_dim} "
            "dims; leave heads.llm_dim unset to take the store's"
        )
    return int(store_llm_dim)


def build_models(cfg: TrainConfig, wavlm_dim: int, llm_dim: int) -> Models:
    """Modules and optimizers for ``cfg``; teacher dims come from the feature store.

    ``llm_dim`` is the store's; the LLM branch is off when :func:`resolve_llm_dim` gives 0.
    """
    llm_dim = resolve_llm_dim(cfg, llm_dim)
    dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    d = cfg.disc
    tx_g, tx_d = make_optimizers(cfg)
    return Models(
        cfg=cfg,
        codec=AmyCodec(cfg.codec, dtype=dtype, remat=cfg.remat),
        disc=MultiScaleSTFTDiscriminator(
            filters=d.filters,
            n_ffts=d.n_ffts,
            hop_lengths=d.hop_lengths,
            win_lengths=d.win_lengths,
            dtype=dtype,
            conv_method=d.resolved_conv_method(),
        ),
        wavlm_head=DistillHead(wavlm_dim, kind=cfg.heads.wavlm),
        llm_head=DistillHead(llm_dim, kind=cfg.heads.llm) if llm_dim > 0 else None,
        tx_g=tx_g,
        tx_d=tx_d,
        wavlm_dim=wavlm_dim,
        llm_dim=llm_dim,
    )


def init_params(models: Models, key: jax.Array) -> tuple[PyTree, PyTree, PyTree]:
    """Random ``(gen_params, codebooks, disc_params)`` (codec weights may be replaced later)."""
    cfg = models.cfg
    k_codec, k_w, k_l, k_d = jax.random.split(key, 4)
    codec_vars = init_codec(cfg.codec, k_codec)
    latent = jnp.zeros((1, 2, cfg.codec.quantizer.output_dimension), jnp.float32)
    heads = jax.jit(
        lambda kw, kl: {
            "wavlm_head": models.wavlm_head.init(kw, latent)["params"],
            **({"llm_head": models.llm_head.init(kl, latent)["params"]} if models.llm_on else {}),
        }
    )(k_w, k_l)
    n = max(cfg.disc.n_ffts) * 2
    disc = jax.jit(lambda k: models.disc.init(k, jnp.zeros((1, n), jnp.float32))["params"])(k_d)
    gen_params = {"codec": codec_vars["params"], **heads}
    return gen_params, codec_vars["codebooks"], disc


def create_state(
    models: Models,
    gen_params: PyTree,
    codebooks: PyTree,
    disc_params: PyTree,
    key: jax.Array,
    step: int = 0,
) -> TrainState:
    """A TrainState with fresh optimizer states."""
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        gen_params=gen_params,
        codebooks=codebooks,
        disc_params=disc_params,
        opt_g=models.tx_g.init(gen_params),
        opt_d=models.tx_d.init(disc_params),
        rng=key,
        ema_params=_copy_tree(gen_params) if models.cfg.optim.ema_decay > 0 else None,
        balancer=balancer.initial_state() if models.cfg.balancer.enabled else None,
    )


def enter_phase(models: Models, state: TrainState) -> TrainState:
    """``state`` carried into the next curriculum phase (``models`` built from its config):
    weights, codebooks, step and key as they are; fresh optimizer states (the phase may train
    other parts with other settings) and balancer averages; the weight average carried when
    both phases keep one, started from the weights when only the new one does."""
    fresh = create_state(models, state.gen_params, state.codebooks, state.disc_params, state.rng)
    fresh = fresh.replace(step=state.step)
    if fresh.ema_params is not None and state.ema_params is not None:
        fresh = fresh.replace(ema_params=state.ema_params)
    return fresh


def _copy_tree(tree: PyTree) -> PyTree:
    # A distinct buffer per leaf: the train step donates the state, and a leaf shared by
    # two fields would be donated twice.
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
    """``decay * ema + (1 - decay) * params`` leaf by leaf (in the parameters' dtype)."""
    return jax.tree_util.tree_map(
        lambda e, p: (decay * e + (1.0 - decay) * p).astype(p.dtype), ema, params
    )


def generator_weights(state: TrainState, ema: bool = False) -> PyTree:
    """A run's generator weights: the raw ones, or with ``ema`` their moving average (an error
    naming the setting when the run kept none)."""
    if not ema:
        return state.gen_params
    if state.ema_params is None:
        raise ValueError(
            "this run keeps no moving average of its weights (optim.ema_decay = 0): "
            "leave out --ema, or train with --config.optim.ema_decay=0.99"
        )
    return state.ema_params


def eval_params(state: TrainState, cfg: TrainConfig, ema: bool | None = None) -> PyTree:
    """The generator weights to evaluate: the moving average when the run keeps one and
    ``ema`` (default ``optim.ema_eval``) asks for it, else the raw weights."""
    use = cfg.optim.ema_eval if ema is None else ema
    if use and state.ema_params is not None:
        return state.ema_params
    return state.gen_params


def count_params(tree: PyTree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
