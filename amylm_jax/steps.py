"""Pure training and evaluation steps, jitted by the caller (order: docs/original.md §7.3).

``train_step(models, state, batch) -> (state, metrics)`` composes two pure updates:

* :func:`generator_update`: the codec forward in training mode (codebook EMA / k-means /
  expiry happen here, once), ONE discriminator forward on the fake and ONE on the real audio,
  each kept as a VJP, and the generator's gradient of hinge adversarial + feature matching +
  msspec + the two cosine distillation losses (the adversarial part flows back through the
  fake forward's VJP with the discriminator's pre-update parameters), then Adam;
* :func:`discriminator_update`: the hinge loss on the same two forwards (fake detached), its
  gradient through their VJPs, then Adam.

The original trainer runs the discriminator four times per batch (fake and real in each
update). ``config.shared_disc_forward=False`` (``train_step_reference``) builds that order from
the same two updates; the numbers are equal and the shared forwards save about 19 % of the
step's FLOPs (benchmarks/RESULTS.md).

A non-finite loss or gradient leaves the state unchanged (``train/nonfinite = 1``): the host
raises with the step number and never checkpoints a bad state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amylm_jax.config import FROZEN_ENCODER
from amylm_jax.losses import adversarial as adv_losses
from amylm_jax.losses import balancer
from amylm_jax.losses.distill import distill_loss, layer_norm
from amylm_jax.losses.spectral import MelLossConfig, msspec_loss
from amylm_jax.models.amy_codec import AmyCodec
from amylm_jax.state import (
    Models,
    TrainState,
    ema_update,
    eval_params,
    lr_schedule,
    rvq_learning_rate,
)

sg = jax.lax.stop_gradient
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

MEL_CONFIG = MelLossConfig()


def _codec_params(models: Models, gen_params: Any) -> Any:
    """Codec parameters with the frozen submodules cut from the gradient.

    ``cfg.frozen`` names top-level codec submodules (``"decoder"``) or paths below them
    (``"quantizer/rvq_rest"``: the acoustic quantizer's projections apart from ``rvq_first``).
    """

    def cut(tree: Any, prefix: str) -> Any:
        if prefix in frozen:
            return sg(tree)
        if isinstance(tree, dict) and any(f.startswith(prefix + "/") for f in frozen):
            return {k: cut(v, f"{prefix}/{k}") for k, v in tree.items()}
        return tree

    frozen = set(models.cfg.frozen)
    return {k: cut(v, k) for k, v in gen_params["codec"].items()}


# Tag of the training-trick key, folded into the step key: the quantizer's own draws (k-means,
# dead codes) split the step key itself and stay as they are.
_TRICKS_TAG = 0x51D


def quantizer_tricks(
    cfg: Any, key: jax.Array, batch_size: int
) -> tuple[jax.Array | None, jax.Array | None]:
    """This step's ``(rest_keep [B] int32, bypass [B] bool)`` (None where the trick is off).

    With ``quantizer_dropout = p`` each example, with probability p, keeps a number of
    acoustic codebooks drawn uniformly from ``0 .. active_rest`` (else all of them); with
    ``quantizer_bypass = p`` each example, with probability p, bypasses the quantizer.
    """
    if cfg.quantizer_dropout <= 0 and cfg.quantizer_bypass <= 0:
        return None, None
    k_drop, k_count, k_bypass = jax.random.split(jax.random.fold_in(key, _TRICKS_TAG), 3)
    keep = bypass = None
    if cfg.quantizer_dropout > 0:
        n_rest = cfg.codec.quantizer.active_rest
        count = jax.random.randint(k_count, (batch_size,), 0, n_rest + 1)
        dropped = jax.random.bernoulli(k_drop, cfg.quantizer_dropout, (batch_size,))
        keep = jnp.where(dropped, count, n_rest).astype(jnp.int32)
    if cfg.quantizer_bypass > 0:
        bypass = jax.random.bernoulli(k_bypass, cfg.quantizer_bypass, (batch_size,))
    return keep, bypass


def generator_forward(
    models: Models,
    gen_params: Any,
    codebooks: Any,
    batch: Batch,
    key: jax.Array,
    norms: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any, Metrics]]:
    """Training-mode codec forward and distillation losses.

    Returns ``fake [B, N]`` and ``(wavlm, llm, new_codebooks, quantizer_metrics)``; ``norms``
    receives the distillation losses' latent gradient norms (see :func:`distill_losses`).
    """
    cfg = models.cfg
    cp = _codec_params(models, gen_params)
    variables = {"params": cp, "codebooks": codebooks}
    audio = batch["audio"]
    frames25 = None
    if set(FROZEN_ENCODER) <= set(cfg.frozen):
        # Frozen encoder side: no gradient, so no saved activations for a backward.
        frames25 = sg(models.codec.apply(variables, audio, method=AmyCodec.encode_frames25))
    rest_keep, bypass = quantizer_tricks(cfg, key, audio.shape[0])
    out, updated = models.codec.apply(
        variables,
        audio,
        train=True,
        train_rest=cfg.train_rest_codebooks,
        frames25=frames25,
        mutable=["codebooks"],
        rng=key,
        rest_keep=rest_keep,
        bypass=bypass,
    )
    new_codebooks = updated["codebooks"]
    wavlm, llm = distill_losses(
        models, gen_params, cp, codebooks, new_codebooks, out, batch, norms=norms
    )
    qmetrics = dict(out.quantized.metrics)
    if rest_keep is not None:  # codebooks the decoder saw, mean over the batch
        qmetrics["decoded"] = jnp.mean(rest_keep + cfg.codec.quantizer.n_q_first, dtype=jnp.float32)
    if bypass is not None:
        qmetrics["bypassed"] = jnp.mean(bypass, dtype=jnp.float32)
    return out.audio, (wavlm, llm, new_codebooks, qmetrics)


def distill_losses(
    models: Models,
    gen_params: Any,
    codec_params: Any,
    old_codebooks: Any,
    new_codebooks: Any,
    out: Any,
    batch: Batch,
    example_weight: jax.Array | None = None,
    norms: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """WavLM and LLM cosine losses with the REF latents (docs/original.md §3.9, §6.4) and §10 knobs.

    ``example_weight [B]`` (validation) restricts the mean to real examples; every example has
    the same number of frames, so this equals the weighted mean of per-example losses.
    A ``norms`` dict receives, per loss, the mean over examples of the L2 norm of the
    (unweighted) loss's gradient with respect to the latent its head reads (stop-gradient):
    what the gradient shares and the loss balancer measure for the distillation losses.
    """
    lc = models.cfg.loss
    codes = out.quantized.first.codes
    sem = sem_ste = None
    if models.llm_on and lc.llm_latent == "ste":
        sem_ste = models.codec.apply(
            {"params": codec_params, "codebooks": old_codebooks},
            out.latent,
            codes,
            method=AmyCodec.semantic_ste,
        )
    if models.llm_on and lc.llm_latent == "codebook0":
        # REF: decode of code 0 with the post-update centroids; reaches output_proj + head.
        sem = models.codec.apply(
            {"params": codec_params, "codebooks": sg(new_codebooks)},
            codes,
            method=AmyCodec.decode_semantic,
        )
    elif models.llm_on:
        sem = sem_ste
    if lc.llm_detach_latent and sem is not None:
        sem = sg(sem)
    sp = out.quantized.first.x
    if lc.wavlm_semantic_detach:
        # x_sp - sem + sg(sem) with sem = output_proj(E_0[c_0]), the codebook-0 vectors x_sp
        # itself used: the value is unchanged and the WavLM gradient into output_proj keeps
        # only the prosody part, while the straight-through path into the encoder side stays
        # open (sem has no path to the encoder).
        sem_dec = models.codec.apply(
            {"params": codec_params},
            out.quantized.first.first_vectors,
            method=AmyCodec.project_semantic,
        )
        sp = sp - sem_dec + sg(sem_dec)
    mask = batch["mask"] if lc.mask_padded_frames else None
    if example_weight is not None:
        mask = (jnp.ones_like(batch["mask"]) if mask is None else mask) * example_weight[:, None]

    def wavlm_of(latent):
        target = batch["wavlm"]
        if lc.layernorm:
            latent, target = layer_norm(latent), layer_norm(target)
        pred = models.wavlm_head.apply({"params": gen_params["wavlm_head"]}, latent)
        return distill_loss(
            pred,
            target,
            mask_BxT=mask,
            center_target=lc.center_wavlm_target,
            center_pred=lc.center_wavlm_pred,
        )

    def llm_of(latent):
        target = batch["llm"]
        if lc.layernorm:
            latent, target = layer_norm(latent), layer_norm(target)
        pred = models.llm_head.apply({"params": gen_params["llm_head"]}, latent)
        return distill_loss(pred, target, mask_BxT=mask)

    def measured(name, fn, latent):
        if norms is not None:  # on a detached copy: the loss's own graph stays as it is
            norms[name] = sg(example_norm(jax.grad(fn)(sg(latent))))
        return fn(latent)

    wavlm = measured("wavlm", wavlm_of, sp)
    if not models.llm_on:  # no LLM branch: a constant zero, no head, no teacher features
        return wavlm, jnp.zeros((), jnp.float32)
    return wavlm, measured("llm", llm_of, sem)


def example_norm(x: jax.Array) -> jax.Array:
    """Mean over the batch (axis 0) of each example's L2 norm, in float32."""
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(flat), axis=-1)))


class DiscForward(NamedTuple):
    """One discriminator forward on a batch of audio, per STFT scale.

    ``vjp`` (shared forwards only) maps cotangents of ``(logits, features)`` to those of
    ``(disc_params, audio)`` for the fake batch and of ``disc_params`` for the real one.
    """

    logits: Any
    features: Any
    vjp: Callable | None = None


class GeneratorLosses(NamedTuple):
    """The generator's weighted total and its unweighted parts (``train/<name>``)."""

    loss_g: jax.Array
    adv_g: jax.Array
    feat: jax.Array
    msspec: jax.Array
    wavlm: jax.Array
    llm: jax.Array


class GeneratorUpdate(NamedTuple):
    """What :func:`generator_update` returns."""

    params: Any  # gen_params after the optimizer step
    opt_state: Any
    codebooks: Any  # codebook EMA state after this batch
    grads: Any
    losses: GeneratorLosses
    quantizer_metrics: Metrics
    fake: jax.Array  # generated audio [B, N] (before the update)
    disc_real: DiscForward | None  # shared discriminator forwards, reused by the D update
    disc_fake: DiscForward | None
    grad_shares: dict[str, jax.Array]  # each loss's share of its group's gradient norm
    balancer: Any  # the balancer's state after this step (None when it is off)


class DiscriminatorUpdate(NamedTuple):
    """What :func:`discriminator_update` returns (unchanged parameters without a GAN)."""

    params: Any
    opt_state: Any
    grads: Any | None
    loss_d: jax.Array
    real_acc: jax.Array
    fake_acc: jax.Array


def _generator_terms(models: Models, fake_disc: DiscForward | None, real_features, fake, real):
    """Weighted adversarial + feature-matching + msspec part of ``loss_g`` and its parts."""
    lc = models.cfg.loss
    zero = jnp.zeros((), jnp.float32)
    if lc.gan:
        adv = adv_losses.generator_adv_loss(fake_disc.logits)
        feat = adv_losses.feature_matching_loss(fake_disc.features, sg(real_features))
    else:
        adv = feat = zero
    ms = zero if lc.adversarial_only else msspec_loss(fake, real, MEL_CONFIG)
    total = lc.alpha_adv * adv + lc.alpha_feat * feat
    if not lc.adversarial_only:
        total = total + lc.alpha_msspec * ms
    return total, (adv, feat, ms)


def _disc_apply(models: Models, disc_params: Any, audio: jax.Array) -> tuple[Any, Any]:
    return models.disc.apply({"params": disc_params}, audio)


def step_key(state: TrainState) -> jax.Array:
    """The quantizer's key for the step ``state`` is about to take (k-means, dead codes)."""
    return jax.random.fold_in(state.rng, state.step)


def generator_update(
    models: Models, state: TrainState, batch: Batch, shared_disc_forward: bool = True
) -> GeneratorUpdate:
    """The generator's losses, gradient and optimizer step for one batch.

    With ``shared_disc_forward`` the discriminator runs once on the fake and once on the real
    audio, each kept as a VJP: the adversarial gradient flows back through the fake forward,
    and :func:`discriminator_update` reuses both forwards. Without it the discriminator runs
    inside the generator loss (the original trainer's order) and the D update runs its own
    forwards; the numbers are the same.
    """
    run = _shared_generator_grads if shared_disc_forward else _separate_generator_grads
    grads, losses, fake, codebooks, qmetrics, disc_real, disc_fake, shares, bal = run(
        models, state, batch
    )
    updates, opt_state = models.tx_g.update(grads, state.opt_g, state.gen_params)
    params = optax.apply_updates(state.gen_params, updates)
    return GeneratorUpdate(
        params,
        opt_state,
        codebooks,
        grads,
        losses,
        qmetrics,
        fake,
        disc_real,
        disc_fake,
        shares,
        bal,
    )


def _weights(models: Models) -> dict[str, float]:
    """Each generator loss's weight in ``loss_g`` (0 when the loss is off)."""
    lc = models.cfg.loss
    w = {k: float(getattr(lc, balancer.ALPHA_NAMES[k])) for k in balancer.ALPHA_NAMES}
    if not lc.gan:
        w["adv_g"] = w["feat"] = 0.0
    if lc.adversarial_only:
        w["msspec"] = 0.0
    if not models.llm_on:
        w["llm"] = 0.0
    return w


def _grad_shares(models: Models, audio_grads: dict, latent_norms: dict) -> dict[str, jax.Array]:
    """Shares of the weighted gradients: audio losses at the audio, distillation at latents."""
    w = _weights(models)
    audio = {k: example_norm(g) for k, g in audio_grads.items()}
    distill = {k: w[k] * latent_norms.get(k, jnp.zeros(())) for k in balancer.DISTILL_LOSSES}
    out = balancer.shares(audio)
    out.update(balancer.shares(distill))
    if not models.llm_on:
        out.pop("llm")
    return out


def _shared_generator_grads(models: Models, state: TrainState, batch: Batch):
    lc = models.cfg.loss
    bc = models.cfg.balancer
    real = batch["audio"]
    key = step_key(state)

    def gen_fn(gen_params):
        norms: dict[str, jax.Array] = {}
        fake, (wavlm, llm, new_cb, qm) = generator_forward(
            models, gen_params, state.codebooks, batch, key, norms=norms
        )
        aux = (wavlm, llm, new_cb, qm, norms)
        if bc.enabled:  # each distillation loss gets its own cotangent
            return (fake, wavlm, llm), aux
        return (fake, lc.alpha_wavlm * wavlm + lc.alpha_llm * llm), aux

    outs, gen_vjp, (wavlm, llm, new_cb, qm, latent_norms) = jax.vjp(
        gen_fn, state.gen_params, has_aux=True
    )
    fake = outs[0]
    disc_real = disc_fake = None
    if lc.gan:
        fake_out, vjp_fake = jax.vjp(
            lambda dp, audio: _disc_apply(models, dp, audio), state.disc_params, fake
        )
        real_out, vjp_real = jax.vjp(lambda dp: _disc_apply(models, dp, real), state.disc_params)
        disc_fake, disc_real = DiscForward(*fake_out, vjp_fake), DiscForward(*real_out, vjp_real)
        (terms, (adv, feat, ms)), (d_logits, d_features, d_fake) = jax.value_and_grad(
            lambda logits, features, audio: _generator_terms(
                models, DiscForward(logits, features), disc_real.features, audio, real
            ),
            argnums=(0, 1, 2),
            has_aux=True,
        )(disc_fake.logits, disc_fake.features, fake)
        d_disc = vjp_fake((d_logits, d_features))[1]
        d_ms = d_fake

        def split():  # the adversarial part on its own: one more discriminator backward
            no_features = jax.tree_util.tree_map(jnp.zeros_like, d_features)
            d_adv = vjp_fake((d_logits, no_features))[1]
            return {"adv_g": d_adv, "feat": d_disc - d_adv, "msspec": d_ms}

        d_fake = d_fake + d_disc
    else:
        (terms, (adv, feat, ms)), d_fake = jax.value_and_grad(
            lambda audio: _generator_terms(models, None, None, audio, real), has_aux=True
        )(fake)
        d_ms = d_fake

        def split():
            zero = jnp.zeros_like(d_ms)
            return {"adv_g": zero, "feat": zero, "msspec": d_ms}

    distill = lc.alpha_wavlm * wavlm + lc.alpha_llm * llm
    new_balancer = None
    if bc.enabled:  # the balancer needs the split on every step
        audio_grads = split()
        shares = _grad_shares(models, audio_grads, latent_norms)
        d_fake, cot_w, cot_l, new_balancer = _balance(
            models, state.balancer, audio_grads, latent_norms
        )
        (grads,) = gen_vjp((d_fake, cot_w, cot_l))
    else:
        shares = _measured_shares(models, state, split, latent_norms)
        (grads,) = gen_vjp((d_fake, jnp.ones_like(outs[1])))
    losses = GeneratorLosses(terms + distill, adv, feat, ms, wavlm, llm)
    return grads, losses, fake, new_cb, qm, disc_real, disc_fake, shares, new_balancer


def share_measured(cfg: Any, step: Any) -> Any:
    """Whether the step taken from ``state.step == step`` measures the gradient shares: the
    one rule for the host (which logs them, ``step`` an int) and the step (``step`` traced)."""
    return cfg.balancer.enabled or step % cfg.grad_share_every_steps == 0


def _measured_shares(models: Models, state: TrainState, audio_grads_fn, latent_norms):
    """The shares on every ``grad_share_every_steps``-th step, zeros (not logged) otherwise:
    splitting the adversarial gradient costs a discriminator backward."""
    every = models.cfg.grad_share_every_steps

    def measure():
        return _grad_shares(models, audio_grads_fn(), latent_norms)

    if every == 1:
        return measure()
    names = balancer.AUDIO_LOSSES + balancer.DISTILL_LOSSES[: 2 if models.llm_on else 1]
    skipped = {k: jnp.zeros((), jnp.float32) for k in names}
    return jax.lax.cond(share_measured(models.cfg, state.step), measure, lambda: skipped)


def _balance(models: Models, bal_state, audio_grads: dict, latent_norms: dict):
    """The balanced cotangents ``(d_fake, wavlm, llm)`` and the balancer's next state.

    ``audio_grads`` are the weighted losses' gradients at the audio (``alpha_k * g_k``);
    ``latent_norms`` the unweighted distillation losses' gradient norms at their latents.
    """
    bc = models.cfg.balancer
    w = _weights(models)
    unweighted = {k: example_norm(g) / w[k] if w[k] > 0 else jnp.zeros(())
                  for k, g in audio_grads.items()}  # fmt: skip
    unweighted.update({k: latent_norms.get(k, jnp.zeros(())) for k in balancer.DISTILL_LOSSES})
    new_state, averages = balancer.update_averages(bal_state, unweighted, bc.ema_decay)
    audio_w = {k: w[k] for k in balancer.AUDIO_LOSSES}
    distill_w = {k: w[k] for k in balancer.DISTILL_LOSSES}
    s_audio = balancer.scales(averages, audio_w, bc.total_norm, bc.epsilon)
    s_distill = balancer.scales(averages, distill_w, bc.distill_total_norm, bc.epsilon)
    d_fake = sum((s_audio[k] / w[k]) * audio_grads[k] for k in balancer.AUDIO_LOSSES if w[k] > 0)
    if not isinstance(d_fake, jax.Array):  # every audio loss off
        d_fake = jnp.zeros_like(audio_grads["msspec"])
    return d_fake, s_distill["wavlm"], s_distill["llm"], new_state


def _separate_generator_grads(models: Models, state: TrainState, batch: Batch):
    lc = models.cfg.loss
    real = batch["audio"]
    key = step_key(state)
    frozen_disc = sg(state.disc_params)

    def g_loss(gen_params):
        norms: dict[str, jax.Array] = {}
        fake, (wavlm, llm, new_cb, qm) = generator_forward(
            models, gen_params, state.codebooks, batch, key, norms=norms
        )
        fake_disc, real_features = None, None
        if lc.gan:
            fake_disc = DiscForward(*_disc_apply(models, frozen_disc, fake))
            real_features = _disc_apply(models, frozen_disc, real)[1]
        terms, (adv, feat, ms) = _generator_terms(models, fake_disc, real_features, fake, real)
        total = terms + lc.alpha_wavlm * wavlm + lc.alpha_llm * llm
        return total, (fake, adv, feat, ms, wavlm, llm, new_cb, qm, norms)

    (loss_g, aux), grads = jax.value_and_grad(g_loss, has_aux=True)(state.gen_params)
    fake, adv, feat, ms, wavlm, llm, new_cb, qm, latent_norms = aux
    losses = GeneratorLosses(loss_g, adv, feat, ms, wavlm, llm)

    # The shares, measured apart from the gradient above (the original order's forwards are
    # kept as they are): each audio loss's gradient at the generated audio on its own.
    def audio_grads():
        out = {}
        for name in balancer.AUDIO_LOSSES:

            def one(audio, name=name):
                fake_disc = real_features = None
                if lc.gan:
                    fake_disc = DiscForward(*_disc_apply(models, frozen_disc, audio))
                    real_features = _disc_apply(models, frozen_disc, real)[1]
                _, parts = _generator_terms(models, fake_disc, real_features, audio, real)
                return _weights(models)[name] * parts[balancer.AUDIO_LOSSES.index(name)]

            out[name] = jax.grad(one)(sg(fake))
        return out

    shares = _measured_shares(models, state, audio_grads, latent_norms)
    return grads, losses, fake, new_cb, qm, None, None, shares, None


def discriminator_update(
    models: Models, state: TrainState, real: jax.Array, gen: GeneratorUpdate
) -> DiscriminatorUpdate:
    """Hinge loss on the real and the (detached) fake audio, gradient and optimizer step.

    Uses the generator update's shared forwards when it has them (their VJPs give the
    gradient), else runs the discriminator on ``real`` and ``gen.fake`` itself. The parameters
    are the pre-update ones in both cases. Without a GAN it returns the state unchanged.
    """
    zero = jnp.zeros((), jnp.float32)
    if not models.cfg.loss.gan:
        return DiscriminatorUpdate(state.disc_params, state.opt_d, None, zero, zero, zero)
    if gen.disc_real is not None:
        real_logits, fake_logits = gen.disc_real.logits, gen.disc_fake.logits
        loss_d, (d_real, d_fake) = jax.value_and_grad(
            adv_losses.discriminator_loss, argnums=(0, 1)
        )(real_logits, sg(fake_logits))
        no_features = jax.tree_util.tree_map(jnp.zeros_like, gen.disc_real.features)
        grads_real = gen.disc_real.vjp((d_real, no_features))[0]
        grads_fake = gen.disc_fake.vjp((d_fake, no_features))[0]
        grads = jax.tree_util.tree_map(jnp.add, grads_real, grads_fake)
    else:

        def d_loss(dp):
            fake_logits, _ = _disc_apply(models, dp, sg(gen.fake))
            real_logits, _ = _disc_apply(models, dp, real)
            return adv_losses.discriminator_loss(real_logits, fake_logits), (
                real_logits,
                fake_logits,
            )

        (loss_d, (real_logits, fake_logits)), grads = jax.value_and_grad(d_loss, has_aux=True)(
            state.disc_params
        )
    real_acc, fake_acc = adv_losses.discriminator_accuracy(real_logits, fake_logits)
    updates, opt_state = models.tx_d.update(grads, state.opt_d, state.disc_params)
    params = optax.apply_updates(state.disc_params, updates)
    return DiscriminatorUpdate(params, opt_state, grads, loss_d, real_acc, fake_acc)


def train_step(models: Models, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One generator update and one discriminator update (shared forwards per the config).

    A non-finite loss or gradient leaves the state unchanged except for the step counter and
    reports ``train/nonfinite = 1``.
    """
    shared = models.cfg.shared_disc_forward
    return _combine(models, state, batch, shared)


def train_step_reference(
    models: Models, state: TrainState, batch: Batch
) -> tuple[TrainState, Metrics]:
    """The original trainer's order (four discriminator forwards): same numbers, more FLOPs."""
    return _combine(models, state, batch, shared=False)


def _combine(models: Models, state: TrainState, batch: Batch, shared: bool):
    gen = generator_update(models, state, batch, shared_disc_forward=shared)
    disc = discriminator_update(models, state, batch["audio"], gen)
    finite = [
        jnp.isfinite(gen.losses.loss_g),
        jnp.isfinite(disc.loss_d),
        jnp.isfinite(optax.global_norm(gen.grads)),
    ]
    if disc.grads is not None:
        finite.append(jnp.isfinite(optax.global_norm(disc.grads)))
    ok = jnp.all(jnp.stack(finite))
    ema = state.ema_params
    if ema is not None:
        ema = ema_update(ema, gen.params, models.cfg.optim.ema_decay)
    new = state.replace(
        step=state.step + 1,
        gen_params=gen.params,
        codebooks=gen.codebooks,
        disc_params=disc.params,
        opt_g=gen.opt_state,
        opt_d=disc.opt_state,
        ema_params=ema,
        balancer=gen.balancer,
    )
    keep = state.replace(step=state.step + 1)
    new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, keep)
    return new_state, _metrics(models, state, gen, disc, ok)


def _metrics(
    models: Models, state: TrainState, gen: GeneratorUpdate, disc: DiscriminatorUpdate, ok
) -> Metrics:
    cfg = models.cfg
    losses = gen.losses
    out = {
        "train/loss_g": losses.loss_g,
        "train/loss_d": disc.loss_d,
        "train/adv_g": losses.adv_g,
        "train/feat": losses.feat,
        "train/wavlm": losses.wavlm,
        **({"train/llm": losses.llm} if models.llm_on else {}),
        "train/msspec": losses.msspec,
        "train/d_real_acc": disc.real_acc,
        "train/d_fake_acc": disc.fake_acc,
        "train/grad_norm_g": optax.global_norm(gen.grads),
        "train/grad_norm_d": optax.global_norm(disc.grads)
        if disc.grads is not None
        else jnp.zeros(()),
        "train/lr_g": jnp.asarray(lr_schedule(cfg, cfg.optim.lr_g)(state.step), jnp.float32),
        "train/lr_d": jnp.asarray(lr_schedule(cfg, cfg.optim.lr_d)(state.step), jnp.float32),
        "train/lr_rvq": jnp.asarray(rvq_learning_rate(cfg)(state.step), jnp.float32),
        "train/nonfinite": 1.0 - ok.astype(jnp.float32),
    }
    out.update({f"train/codebook/{k}": v for k, v in gen.quantizer_metrics.items()})
    out.update({f"train/grad_share/{k}": v for k, v in gen.grad_shares.items()})
    return out


def eval_step(models: Models, state: TrainState, batch: Batch) -> tuple[Metrics, jax.Array]:
    """Validation losses in eval mode (no codebook update), weighted by ``batch["weight"]``,
    with the moving average of the weights when the run keeps one (``optim.ema_eval``).

    Returns sums of per-example losses times weight (the host divides by the weight total)
    and the reconstructed audio ``[B, N]`` (decode of all codebooks).
    """
    lc = models.cfg.loss
    gp = eval_params(state, models.cfg)  # the moving average when the run keeps one
    variables = {"params": gp["codec"], "codebooks": state.codebooks}
    real, w = batch["audio"], batch["weight"]
    out = models.codec.apply(variables, real, train=False)
    wavlm, llm = distill_losses(
        models, gp, gp["codec"], state.codebooks, state.codebooks, out, batch, example_weight=w
    )
    ms = jax.vmap(lambda x, y: msspec_loss(x[None], y[None], MEL_CONFIG))(out.audio, real)
    total = jnp.sum(w)
    metrics = {"val/wavlm": wavlm * total, "val/msspec": ms}
    if models.llm_on:
        metrics["val/llm"] = llm * total
    if lc.gan:

        def per_example(x, y):
            lf, ff = models.disc.apply({"params": state.disc_params}, x[None])
            lr, fr = models.disc.apply({"params": state.disc_params}, y[None])
            return (
                adv_losses.generator_adv_loss(lf),
                adv_losses.feature_matching_loss(ff, fr),
                adv_losses.discriminator_loss(lr, lf),
            )

        adv, feat, loss_d = jax.vmap(per_example)(out.audio, real)
        metrics.update({"val/adv_g": adv, "val/feat": feat, "val/loss_d": loss_d})
    sums = {k: v if v.ndim == 0 else jnp.sum(v * w) for k, v in metrics.items()}
    sums["val/weight"] = jnp.sum(w)
    return sums, out.audio
