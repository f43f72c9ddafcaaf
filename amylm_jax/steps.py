"""Pure training and evaluation steps (SPEC §7.3), jitted by the caller.

``train_step(models, state, batch) -> (state, metrics)`` does, for one batch:

1. the generator forward in training mode (codebook EMA / k-means / expiry happen here, once),
2. ONE discriminator forward on the fake audio and ONE on the real audio, each kept as a VJP,
3. the generator update: hinge adversarial + feature matching + msspec + the two cosine
   distillation losses; the discriminator part of its gradient flows back through the fake
   forward's VJP with the discriminator's pre-update parameters,
4. the discriminator update from the same two forwards (fake detached).

The original runs the discriminator four times per batch (fake and real in each phase); the
numbers are the same (``train_step_reference`` keeps the original order for the tests) and
the shared forward saves about 19 % of the FLOPs (PERF.md).

A non-finite loss or gradient leaves the state unchanged (``train/nonfinite = 1``): the host
raises with the step number and never checkpoints a bad state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from amylm_jax.losses import adversarial as adv_losses
from amylm_jax.losses.distill import distill_loss, layer_norm
from amylm_jax.losses.spectral import MelLossConfig, msspec_loss
from amylm_jax.models.codec import FROZEN_ENCODER, AmyCodec
from amylm_jax.state import Models, TrainState, rvq_learning_rate

sg = jax.lax.stop_gradient
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

MEL_CONFIG = MelLossConfig()
#: The seven cheat-sheet names, in the order users read them.
LOSS_NAMES = ("loss_g", "loss_d", "adv_g", "feat", "wavlm", "llm", "msspec")


def _codec_params(models: Models, gen_params: Any) -> Any:
    """Codec parameters with the frozen submodules cut from the gradient."""
    frozen = set(models.cfg.frozen)
    return {k: sg(v) if k in frozen else v for k, v in gen_params["codec"].items()}


def generator_forward(
    models: Models, gen_params: Any, codebooks: Any, batch: Batch, key: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any, Metrics]]:
    """Training-mode codec forward and distillation losses.

    Returns ``fake [B, N]`` and ``(wavlm, llm, new_codebooks, quantizer_metrics)``.
    """
    cfg = models.cfg
    cp = _codec_params(models, gen_params)
    variables = {"params": cp, "codebooks": codebooks}
    audio = batch["audio"]
    frames25 = None
    if set(FROZEN_ENCODER) <= set(cfg.frozen):
        # Frozen encoder side: no gradient, so no saved activations for a backward.
        frames25 = sg(models.codec.apply(variables, audio, method=AmyCodec.encode_frames25))
    out, updated = models.codec.apply(
        variables,
        audio,
        train=True,
        train_rest=cfg.train_rest_codebooks,
        frames25=frames25,
        mutable=["codebooks"],
        rngs={"quantizer": key},
    )
    new_codebooks = updated["codebooks"]
    wavlm, llm = distill_losses(models, gen_params, cp, codebooks, new_codebooks, out, batch)
    return out.audio, (wavlm, llm, new_codebooks, out.quantized.metrics)


def distill_losses(
    models: Models,
    gen_params: Any,
    codec_params: Any,
    old_codebooks: Any,
    new_codebooks: Any,
    out: Any,
    batch: Batch,
    example_weight: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """WavLM and LLM cosine losses with the REF latents (SPEC §3.9, §6.4) and §10 knobs.

    ``example_weight [B]`` (validation) restricts the mean to real examples; every example has
    the same number of frames, so this equals the weighted mean of per-example losses.
    """
    lc = models.cfg.loss
    codes = out.quantized.first.codes
    sem_ste = None
    if lc.llm_latent == "ste" or lc.wavlm_semantic_detach:
        sem_ste = models.codec.apply(
            {"params": codec_params, "codebooks": old_codebooks},
            out.latent,
            codes,
            method=AmyCodec.semantic_ste,
        )
    if lc.llm_latent == "codebook0":
        # REF: decode of code 0 with the post-update centroids; reaches output_proj + head.
        sem = models.codec.apply(
            {"params": codec_params, "codebooks": sg(new_codebooks)},
            codes,
            method=AmyCodec.decode_semantic,
        )
    else:
        sem = sem_ste
    if lc.llm_detach_latent:
        sem = sg(sem)
    sp = out.quantized.first.x
    if lc.wavlm_semantic_detach:
        sp = sp - sem_ste + sg(sem_ste)
    wavlm_t, llm_t = batch["wavlm"], batch["llm"]
    if lc.layernorm:
        sem, sp = layer_norm(sem), layer_norm(sp)
        wavlm_t, llm_t = layer_norm(wavlm_t), layer_norm(llm_t)
    pred_w = models.wavlm_head.apply({"params": gen_params["wavlm_head"]}, sp)
    pred_l = models.llm_head.apply({"params": gen_params["llm_head"]}, sem)
    mask = batch["mask"] if lc.mask_padded_frames else None
    if example_weight is not None:
        mask = (jnp.ones_like(batch["mask"]) if mask is None else mask) * example_weight[:, None]
    wavlm = distill_loss(
        pred_w,
        wavlm_t,
        mask_BxT=mask,
        center_target=lc.center_wavlm_target,
        center_pred=lc.center_wavlm_pred,
    )
    llm = distill_loss(pred_l, llm_t, mask_BxT=mask)
    return wavlm, llm


def _generator_terms(models: Models, logits_fake, fmaps_fake, fmaps_real, fake, real):
    """Weighted adversarial + feature-matching + msspec part of ``loss_g`` and its parts."""
    lc = models.cfg.loss
    zero = jnp.zeros((), jnp.float32)
    adv = adv_losses.generator_adv_loss(logits_fake) if lc.gan else zero
    feat = adv_losses.feature_matching_loss(fmaps_fake, sg(fmaps_real)) if lc.gan else zero
    ms = zero if lc.adversarial_only else msspec_loss(fake, real, MEL_CONFIG)
    total = lc.alpha_adv * adv + lc.alpha_feat * feat
    if not lc.adversarial_only:
        total = total + lc.alpha_msspec * ms
    return total, (adv, feat, ms)


def _apply_updates(models: Models, state: TrainState, g_grads, d_grads, new_codebooks, ok):
    """Optimizer updates; a non-finite step (``ok`` False) leaves the state unchanged."""
    upd_g, opt_g = models.tx_g.update(g_grads, state.opt_g, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, upd_g)
    if models.cfg.loss.gan:
        upd_d, opt_d = models.tx_d.update(d_grads, state.opt_d, state.disc_params)
        disc_params = optax.apply_updates(state.disc_params, upd_d)
    else:
        opt_d, disc_params = state.opt_d, state.disc_params
    new = state.replace(
        step=state.step + 1,
        gen_params=gen_params,
        codebooks=new_codebooks,
        disc_params=disc_params,
        opt_g=opt_g,
        opt_d=opt_d,
    )
    keep = state.replace(step=state.step + 1)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, keep)


def _metrics(models, state, parts, g_grads, d_grads, qmetrics, accs, ok) -> Metrics:
    loss_g, loss_d, adv, feat, wavlm, llm, ms = parts
    cfg = models.cfg
    out = {
        "train/loss_g": loss_g,
        "train/loss_d": loss_d,
        "train/adv_g": adv,
        "train/feat": feat,
        "train/wavlm": wavlm,
        "train/llm": llm,
        "train/msspec": ms,
        "train/d_real_acc": accs[0],
        "train/d_fake_acc": accs[1],
        "train/grad_norm_g": optax.global_norm(g_grads),
        "train/grad_norm_d": optax.global_norm(d_grads) if cfg.loss.gan else jnp.zeros(()),
        "train/lr_g": jnp.asarray(cfg.optim.lr_g, jnp.float32),
        "train/lr_d": jnp.asarray(cfg.optim.lr_d, jnp.float32),
        "train/lr_rvq": jnp.asarray(rvq_learning_rate(cfg)(state.step), jnp.float32),
        "train/nonfinite": 1.0 - ok.astype(jnp.float32),
    }
    out.update({f"train/codebook/{k}": v for k, v in qmetrics.items()})
    return out


def train_step(models: Models, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One generator + discriminator update with shared discriminator forwards (see above)."""
    lc = models.cfg.loss
    key = jax.random.fold_in(state.rng, state.step)
    real = batch["audio"]

    def gen_fn(gen_params):
        fake, (wavlm, llm, new_cb, qm) = generator_forward(
            models, gen_params, state.codebooks, batch, key
        )
        return (fake, lc.alpha_wavlm * wavlm + lc.alpha_llm * llm), (wavlm, llm, new_cb, qm)

    (fake, distill), gen_vjp, (wavlm, llm, new_cb, qm) = jax.vjp(
        gen_fn, state.gen_params, has_aux=True
    )

    zero = jnp.zeros((), jnp.float32)
    if lc.gan:

        def disc_fn(dp, audio):
            return models.disc.apply({"params": dp}, audio)

        (lf, ff), vjp_fake = jax.vjp(disc_fn, state.disc_params, fake)
        (lr, fr), vjp_real = jax.vjp(lambda dp: disc_fn(dp, real), state.disc_params)
        (g_terms, (adv, feat, ms)), (d_lf, d_ff, d_fake) = jax.value_and_grad(
            lambda a, b, c: _generator_terms(models, a, b, fr, c, real),
            argnums=(0, 1, 2),
            has_aux=True,
        )(lf, ff, fake)
        d_fake = d_fake + vjp_fake((d_lf, d_ff))[1]
        # Discriminator: hinge on real and on the detached fake, same forwards.
        loss_d, (dd_lr, dd_lf) = jax.value_and_grad(adv_losses.discriminator_loss, argnums=(0, 1))(
            lr, sg(lf)
        )
        d_grads_real = vjp_real((dd_lr, jax.tree_util.tree_map(jnp.zeros_like, fr)))[0]
        d_grads_fake = vjp_fake((dd_lf, jax.tree_util.tree_map(jnp.zeros_like, ff)))[0]
        d_grads = jax.tree_util.tree_map(jnp.add, d_grads_real, d_grads_fake)
        accs = adv_losses.discriminator_accuracy(lr, lf)
    else:
        (g_terms, (adv, feat, ms)), d_fake = jax.value_and_grad(
            lambda c: _generator_terms(models, None, None, None, c, real), has_aux=True
        )(fake)
        loss_d, d_grads, accs = zero, None, (zero, zero)

    (g_grads,) = gen_vjp((d_fake, jnp.ones_like(distill)))
    loss_g = g_terms + distill
    return _finish(
        models, state, loss_g, loss_d, adv, feat, wavlm, llm, ms, g_grads, d_grads, new_cb, qm, accs
    )


def _finish(
    models, state, loss_g, loss_d, adv, feat, wavlm, llm, ms, g_grads, d_grads, new_cb, qm, accs
):
    finite = [jnp.isfinite(loss_g), jnp.isfinite(loss_d), jnp.isfinite(optax.global_norm(g_grads))]
    if d_grads is not None:
        finite.append(jnp.isfinite(optax.global_norm(d_grads)))
    ok = jnp.all(jnp.stack(finite))
    new_state = _apply_updates(models, state, g_grads, d_grads, new_cb, ok)
    parts = (loss_g, loss_d, adv, feat, wavlm, llm, ms)
    metrics = _metrics(models, state, parts, g_grads, d_grads, qm, accs, ok)
    return new_state, metrics


def train_step_reference(
    models: Models, state: TrainState, batch: Batch
) -> tuple[TrainState, Metrics]:
    """The original order with four discriminator forwards (tests only; same numbers)."""
    lc = models.cfg.loss
    key = jax.random.fold_in(state.rng, state.step)
    real = batch["audio"]
    dp0 = state.disc_params

    def disc(dp, audio):
        return models.disc.apply({"params": dp}, audio)

    def g_loss(gen_params):
        fake, (wavlm, llm, new_cb, qm) = generator_forward(
            models, gen_params, state.codebooks, batch, key
        )
        if lc.gan:
            lf, ff = disc(sg(dp0), fake)
            _, fr = disc(sg(dp0), real)
        else:
            lf = ff = fr = None
        terms, (adv, feat, ms) = _generator_terms(models, lf, ff, sg(fr) if fr else fr, fake, real)
        total = terms + lc.alpha_wavlm * wavlm + lc.alpha_llm * llm
        return total, (fake, adv, feat, ms, wavlm, llm, new_cb, qm)

    (loss_g, aux), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.gen_params)
    fake, adv, feat, ms, wavlm, llm, new_cb, qm = aux
    zero = jnp.zeros((), jnp.float32)
    if lc.gan:

        def d_loss(dp):
            lf, _ = disc(dp, sg(fake))
            lr, _ = disc(dp, real)
            return adv_losses.discriminator_loss(lr, lf), (lr, lf)

        (loss_d, (lr, lf)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(dp0)
        accs = adv_losses.discriminator_accuracy(lr, lf)
    else:
        loss_d, d_grads, accs = zero, None, (zero, zero)
    return _finish(
        models, state, loss_g, loss_d, adv, feat, wavlm, llm, ms, g_grads, d_grads, new_cb, qm, accs
    )


def eval_step(models: Models, state: TrainState, batch: Batch) -> tuple[Metrics, jax.Array]:
    """Validation losses in eval mode (no codebook update), weighted by ``batch["weight"]``.

    Returns sums of per-example losses times weight (the host divides by the weight total)
    and the reconstructed audio ``[B, N]`` (decode of all codebooks).
    """
    lc = models.cfg.loss
    gp = state.gen_params
    variables = {"params": gp["codec"], "codebooks": state.codebooks}
    real, w = batch["audio"], batch["weight"]
    out = models.codec.apply(variables, real, train=False)
    wavlm, llm = distill_losses(
        models, gp, gp["codec"], state.codebooks, state.codebooks, out, batch, example_weight=w
    )
    ms = jax.vmap(lambda x, y: msspec_loss(x[None], y[None], MEL_CONFIG))(out.audio, real)
    total = jnp.sum(w)
    metrics = {"val/wavlm": wavlm * total, "val/llm": llm * total, "val/msspec": ms}
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
