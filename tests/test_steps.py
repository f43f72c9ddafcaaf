"""The jitted training step on a tiny config: shared forwards, frozen parts, gradient reach."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_helpers import DL, DW, SMALL_DISC, make, make_batch

from amylm_jax.config import LOSS_NAMES, LossConfig, TrainConfig, tiny_codec_config
from amylm_jax.state import build_models, generator_labels
from amylm_jax.steps import distill_losses, train_step, train_step_reference


def _max_diff(a, b) -> float:
    return max(
        jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(
                lambda x, y: float(jnp.max(jnp.abs(x - y))) if x.size else 0.0, a, b
            )
        )
    )


@pytest.fixture(scope="module")
def setup():
    models, state = make()
    return models, state, make_batch()


def test_shared_forward_equals_original_order(setup):
    models, state, batch = setup
    s1, m1 = jax.jit(functools.partial(train_step, models))(state, batch)
    s2, m2 = jax.jit(functools.partial(train_step_reference, models))(state, batch)
    for name in LOSS_NAMES:
        np.testing.assert_allclose(m1[f"train/{name}"], m2[f"train/{name}"], rtol=1e-6, atol=1e-7)
    # The gradient shares are measured the same way in both orders.
    shares = [k for k in m1 if k.startswith("train/grad_share/")]
    assert len(shares) == 5 and set(shares) == {k for k in m2 if k.startswith("train/grad_share/")}
    for name in shares:
        np.testing.assert_allclose(m1[name], m2[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for group in (("adv_g", "feat", "msspec"), ("wavlm", "llm")):
        assert sum(float(m1[f"train/grad_share/{k}"]) for k in group) == pytest.approx(1.0)
    # Same gradients up to float summation order, through Adam's first step (~lr * sign).
    assert _max_diff(s1.gen_params, s2.gen_params) < 1e-6
    assert _max_diff(s1.disc_params, s2.disc_params) < 1e-6
    assert _max_diff(s1.codebooks, s2.codebooks) < 1e-6
    assert int(s1.step) == int(s2.step) == 1


def test_total_loss_is_weighted_sum_and_frozen_parts_stay(setup):
    models, state, batch = setup
    before = jax.device_get(state)
    new, m = jax.jit(functools.partial(train_step, models))(state, batch)
    lc = models.cfg.loss
    total = (
        lc.alpha_adv * m["train/adv_g"]
        + lc.alpha_feat * m["train/feat"]
        + lc.alpha_wavlm * m["train/wavlm"]
        + lc.alpha_llm * m["train/llm"]
        + lc.alpha_msspec * m["train/msspec"]
    )
    np.testing.assert_allclose(m["train/loss_g"], total, rtol=1e-6)
    assert float(m["train/nonfinite"]) == 0.0
    for frozen in ("encoder", "encoder_transformer"):
        for a, b in zip(
            jax.tree_util.tree_leaves(before.gen_params["codec"][frozen]),
            jax.tree_util.tree_leaves(new.gen_params["codec"][frozen]),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    # Everything else that is trained moved.
    for name in ("decoder", "decoder_transformer", "downsample", "upsample", "quantizer"):
        assert _max_diff(before.gen_params["codec"][name], new.gen_params["codec"][name]) > 0
    assert _max_diff(before.disc_params, new.disc_params) > 0
    # Frozen parameters carry no optimizer state: Adam's two moments cover exactly the
    # trainable generator parameters.
    labels = jax.tree_util.tree_leaves(generator_labels(new.gen_params, models.cfg))
    sizes = [x.size for x in jax.tree_util.tree_leaves(new.gen_params)]
    frozen = sum(n for n, label in zip(sizes, labels, strict=True) if label == "frozen")
    trainable = sum(n for n, label in zip(sizes, labels, strict=True) if label != "frozen")
    moments = sum(x.size for x in jax.tree_util.tree_leaves(new.opt_g) if x.ndim > 0)
    assert frozen > 0 and moments == 2 * trainable


def test_adversarial_only_zeroes_msspec():
    cfg = TrainConfig(
        codec=tiny_codec_config(), disc=SMALL_DISC, loss=LossConfig(adversarial_only=True)
    )
    models, state = make(cfg)
    _, m = jax.jit(functools.partial(train_step, models))(state, make_batch())
    assert float(m["train/msspec"]) == 0.0
    total = m["train/adv_g"] + 4 * m["train/feat"] + m["train/wavlm"] + m["train/llm"]
    np.testing.assert_allclose(m["train/loss_g"], total, rtol=1e-6)


def test_gan_off_skips_discriminator():
    cfg = TrainConfig(
        codec=tiny_codec_config(),
        disc=SMALL_DISC,
        loss=LossConfig(alpha_adv=0.0, alpha_feat=0.0),
    )
    models, state = make(cfg)
    new, m = jax.jit(functools.partial(train_step, models))(state, make_batch())
    assert float(m["train/loss_d"]) == 0.0 and float(m["train/adv_g"]) == 0.0
    assert _max_diff(state.disc_params, new.disc_params) == 0.0


def test_llm_branch_off_is_the_step_with_no_llm_term():
    """``heads.llm_dim <= 0`` removes the LLM head, loss and metric; every other number is the
    step with ``alpha_llm = 0`` (whose LLM gradient is exactly zero), here on a batch from a store
    without LLM features (zero-width ``llm``)."""
    from amylm_jax.config import HeadsConfig
    from amylm_jax.state import resolve_llm_dim

    base = TrainConfig(codec=tiny_codec_config(), disc=SMALL_DISC)
    off = dataclasses.replace(base, heads=HeadsConfig(llm_dim=0))
    zero = dataclasses.replace(base, loss=LossConfig(alpha_llm=0.0))
    m_off, s_off = make(off)
    m_zero, s_zero = make(zero)
    assert m_off.llm_head is None and m_off.llm_dim == 0
    assert "llm_head" not in s_off.gen_params and "llm_head" in s_zero.gen_params
    batch = make_batch()
    no_llm = dict(batch, llm=np.zeros((2, 13, 0), np.float32))  # a store without LLM features
    new_off, met_off = jax.jit(functools.partial(train_step, m_off))(s_off, no_llm)
    new_zero, met_zero = jax.jit(functools.partial(train_step, m_zero))(s_zero, batch)
    assert "train/llm" not in met_off and float(met_zero["train/llm"]) > 0
    assert "train/grad_share/llm" not in met_off and float(met_zero["train/grad_share/llm"]) == 0
    for name in set(met_zero) - {"train/llm", "train/grad_norm_g", "train/grad_share/llm"}:
        np.testing.assert_allclose(met_off[name], met_zero[name], rtol=1e-6, err_msg=name)
    kept = {k: v for k, v in new_zero.gen_params.items() if k != "llm_head"}
    assert _max_diff(new_off.gen_params, kept) < 1e-6
    assert _max_diff(new_off.codebooks, new_zero.codebooks) < 1e-6
    assert _max_diff(new_off.disc_params, new_zero.disc_params) < 1e-6
    m_store = build_models(base, DW, 0)  # the store's dim 0 turns the branch off by itself
    assert m_store.llm_head is None and m_store.llm_dim == 0
    with pytest.raises(ValueError, match="heads.llm_dim=5 but the feature store's LLM"):
        resolve_llm_dim(dataclasses.replace(base, heads=HeadsConfig(llm_dim=5)), DL)
    with pytest.raises(ValueError, match="no LLM features"):
        resolve_llm_dim(dataclasses.replace(base, heads=HeadsConfig(llm_dim=DL)), 0)
    assert resolve_llm_dim(dataclasses.replace(base, heads=HeadsConfig(llm_dim=-1)), DL) == 0


def test_weight_average_follows_the_trained_weights(setup):
    """``optim.ema_decay``: after each step ``ema = d * ema + (1 - d) * params``, starting
    from the initial weights; the raw weights train exactly as without it."""
    from amylm_jax.config import OptimConfig
    from amylm_jax.state import eval_params, generator_weights

    models, state, batch = setup
    cfg = dataclasses.replace(models.cfg, optim=OptimConfig(ema_decay=0.9))
    m_e, s0 = make(cfg)
    assert _max_diff(s0.ema_params, s0.gen_params) == 0.0
    step = jax.jit(functools.partial(train_step, m_e))
    s1, _ = step(s0, batch)
    s2, _ = step(s1, make_batch(seed=1))
    for before, after in ((s0, s1), (s1, s2)):
        want = jax.tree_util.tree_map(
            lambda e, p: 0.9 * np.asarray(e, np.float64) + 0.1 * np.asarray(p, np.float64),
            before.ema_params,
            after.gen_params,
        )
        assert _max_diff(after.ema_params, want) < 1e-6
    raw, _ = jax.jit(functools.partial(train_step, models))(state, batch)
    assert _max_diff(s1.gen_params, raw.gen_params) < 1e-6
    assert eval_params(s2, cfg) is s2.ema_params
    no_eval = dataclasses.replace(cfg, optim=OptimConfig(ema_decay=0.9, ema_eval=False))
    assert eval_params(s2, no_eval) is s2.gen_params
    assert generator_weights(s2, ema=True) is s2.ema_params
    assert state.ema_params is None and eval_params(state, models.cfg) is state.gen_params
    with pytest.raises(ValueError, match="no moving average"):
        generator_weights(state, ema=True)


def test_quantizer_dropout_and_bypass_draws():
    """Per example: with probability p a uniform count 0..all of acoustic codebooks (else all),
    and independently the bypass with probability q; off gives None (the unchanged step)."""
    from amylm_jax.steps import quantizer_tricks

    base = TrainConfig(codec=tiny_codec_config(), disc=SMALL_DISC)
    assert quantizer_tricks(base, jax.random.key(0), 4) == (None, None)
    cfg = dataclasses.replace(base, quantizer_dropout=0.6, quantizer_bypass=0.3)
    n = 60000
    keep, bypass = quantizer_tricks(cfg, jax.random.key(0), n)
    n_rest = cfg.codec.quantizer.active_rest  # 2: counts 0, 1, 2
    freq = np.bincount(np.asarray(keep), minlength=n_rest + 1) / n
    want = np.full(n_rest + 1, 0.6 / (n_rest + 1))
    want[-1] += 0.4
    sigma = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(freq - want) < 5 * sigma), (freq, want)
    assert abs(float(np.mean(bypass)) - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
    # independent of each other
    joint = float(np.mean(np.asarray(bypass) & (np.asarray(keep) == 0)))
    assert abs(joint - 0.3 * want[0]) < 5 * np.sqrt(0.3 * want[0] / n)
    again = quantizer_tricks(cfg, jax.random.key(0), n)
    np.testing.assert_array_equal(again[0], keep)  # the step key decides


def test_step_with_quantizer_dropout_and_bypass(setup):
    """The tricks change the decoded audio, never the codes or codebook updates; the step
    logs the codebooks the decoder saw and the bypassed fraction."""
    models, state, batch = setup
    cfg = dataclasses.replace(models.cfg, quantizer_dropout=1.0, quantizer_bypass=0.5)
    m = build_models(cfg, DW, DL)
    new, met = jax.jit(functools.partial(train_step, m))(state, batch)
    ref, met_ref = jax.jit(functools.partial(train_step, models))(state, batch)
    assert 2.0 <= float(met["train/codebook/decoded"]) <= 4.0
    assert float(met["train/codebook/bypassed"]) in (0.0, 0.5, 1.0)
    assert "train/codebook/decoded" not in met_ref
    assert _max_diff(new.codebooks, ref.codebooks) < 1e-6
    assert float(met["train/msspec"]) != float(met_ref["train/msspec"])


def test_nonfinite_batch_leaves_state_unchanged(setup):
    models, state, batch = setup
    bad = dict(batch, audio=np.full_like(batch["audio"], np.nan))
    new, m = jax.jit(functools.partial(train_step, models))(state, bad)
    assert float(m["train/nonfinite"]) == 1.0
    assert _max_diff(state.gen_params, new.gen_params) == 0.0
    assert _max_diff(state.disc_params, new.disc_params) == 0.0
    assert _max_diff(state.codebooks, new.codebooks) == 0.0
    assert int(new.step) == int(state.step) + 1


def _distill_grads(models, state, batch, which: str):
    """Gradient of one distillation loss w.r.t. all generator parameters (docs/original.md §3.9)."""
    from amylm_jax.steps import generator_forward

    key = jax.random.PRNGKey(3)

    def loss(gp):
        _, (wavlm, llm, _, _) = generator_forward(models, gp, state.codebooks, batch, key)
        return wavlm if which == "wavlm" else llm

    return jax.jit(jax.grad(loss))(state.gen_params)


def _reached(grads) -> set[str]:
    out = set()
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if float(jnp.max(jnp.abs(g))) > 0:
            names = [p.key for p in path]
            out.add("/".join(names[:4] if names[1] == "quantizer" else names[:2]))
    return out


def test_gradient_reach_of_distillation_losses(setup):
    models, state, batch = setup
    llm = _reached(_distill_grads(models, state, batch, "llm"))
    assert llm == {"llm_head/layers_0", "codec/quantizer/rvq_first/output_proj"}
    wavlm = _reached(_distill_grads(models, state, batch, "wavlm"))
    assert wavlm == {
        "wavlm_head/layers_0",
        "codec/quantizer/rvq_first/output_proj",
        "codec/quantizer/rvq_first/input_proj",
        "codec/downsample",
    }


def test_reconstruction_gradient_reach(setup):
    """msspec reaches the decoder side, both RVQs' projections and the downsample only."""
    from amylm_jax.losses.spectral import msspec_loss
    from amylm_jax.steps import generator_forward

    models, state, batch = setup

    def loss(gp):
        fake, _ = generator_forward(models, gp, state.codebooks, batch, jax.random.PRNGKey(0))
        return msspec_loss(fake, batch["audio"])

    reached = _reached(jax.jit(jax.grad(loss))(state.gen_params))
    assert reached == {
        "codec/decoder",
        "codec/decoder_transformer",
        "codec/upsample",
        "codec/downsample",
        "codec/quantizer/rvq_first/input_proj",
        "codec/quantizer/rvq_first/output_proj",
        "codec/quantizer/rvq_rest/input_proj",
        "codec/quantizer/rvq_rest/output_proj",
    }


@pytest.mark.parametrize(
    "knobs",
    [
        dict(llm_latent="ste"),
        dict(llm_detach_latent=True),
        dict(wavlm_semantic_detach=True),
        dict(layernorm=True, center_wavlm_target=True, center_wavlm_pred=True),
        dict(mask_padded_frames=True),
    ],
)
def test_distillation_knobs(setup, knobs):
    models, state, batch = setup
    cfg = dataclasses.replace(models.cfg, loss=LossConfig(**knobs))
    models2 = build_models(cfg, DW, DL)
    grads = _distill_grads(models2, state, batch, "llm")
    reached = _reached(grads)
    if knobs.get("llm_latent") == "ste":
        # The STE latent lets the LLM loss shape the encoder side too.
        assert "codec/quantizer/rvq_first/input_proj" in reached and "codec/downsample" in reached
    elif knobs.get("llm_detach_latent"):
        assert reached == {"llm_head/layers_0"}
    else:
        assert "llm_head/layers_0" in reached
    if knobs.get("wavlm_semantic_detach"):
        # x_sp - sem + sg(sem), sem = decode of code 0: the straight-through path into the
        # encoder side stays open (as in the original), and the gradient into output_proj is
        # the prosody part only.
        # Initialised codebooks, so that the prosody codebook contributes (E_1 != 0).
        from amylm_jax.reference.jax_setup import random_codebooks

        ready = state.replace(codebooks=random_codebooks(state.codebooks, jax.random.PRNGKey(5)))
        wavlm = _reached(_distill_grads(models2, ready, batch, "wavlm"))
        assert wavlm == {
            "wavlm_head/layers_0",
            "codec/quantizer/rvq_first/output_proj",
            "codec/quantizer/rvq_first/input_proj",
            "codec/downsample",
        }
        _assert_prosody_only_output_proj_grad(models, models2, ready, batch)
    if knobs.get("mask_padded_frames"):
        masked = dict(batch, mask=np.concatenate([np.ones((2, 7)), np.zeros((2, 6))], 1))
        masked = {k: jnp.asarray(v, jnp.float32) for k, v in masked.items()}
        out = _forward_out(models2, state, masked)
        w_full, _ = distill_losses(
            models2,
            state.gen_params,
            state.gen_params["codec"],
            state.codebooks,
            state.codebooks,
            out,
            dict(masked, mask=jnp.ones((2, 13))),
        )
        w_mask, _ = distill_losses(
            models2,
            state.gen_params,
            state.gen_params["codec"],
            state.codebooks,
            state.codebooks,
            out,
            masked,
        )
        assert abs(float(w_full) - float(w_mask)) > 1e-4


def _assert_prosody_only_output_proj_grad(models, detached, state, batch):
    """The detach changes no value, and changes the gradient into output_proj (it drops the
    codebook-0 term) without zeroing it (the prosody term remains)."""
    from amylm_jax.steps import generator_forward

    key = jax.random.PRNGKey(3)

    def wavlm_with(m, gp):
        return generator_forward(m, gp, state.codebooks, batch, key)[1][0]

    np.testing.assert_allclose(
        wavlm_with(detached, state.gen_params), wavlm_with(models, state.gen_params), rtol=1e-6
    )

    def output_proj_grad(m):
        grads = jax.grad(lambda gp: wavlm_with(m, gp))(state.gen_params)
        return np.asarray(grads["codec"]["quantizer"]["rvq_first"]["output_proj"]["kernel"])

    full, kept = output_proj_grad(models), output_proj_grad(detached)
    assert np.abs(kept).max() > 0 and np.abs(full - kept).max() > 1e-3 * np.abs(full).max()


def _forward_out(models, state, batch):
    variables = {"params": state.gen_params["codec"], "codebooks": state.codebooks}
    return models.codec.apply(variables, batch["audio"], train=False)
