"""The loss balancer and the gradient shares, on small cases worked out by hand."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from step_helpers import SMALL_DISC, make, make_batch

from amylm_jax.config import BalancerConfig, LossConfig, TrainConfig, tiny_codec_config
from amylm_jax.losses import balancer as B
from amylm_jax.steps import _balance, example_norm, train_step


def test_averages_scales_and_shares_by_hand():
    state = B.initial_state()
    norms = {"adv_g": 2.0, "feat": 1.0, "msspec": 4.0, "wavlm": 0.5, "llm": 0.25}
    state, avg = B.update_averages(state, norms, decay=0.5)
    assert float(state["count"]) == 1.0 and {k: float(v) for k, v in avg.items()} == norms
    state, avg = B.update_averages(state, {**norms, "adv_g": 4.0}, decay=0.5)
    # sums 0.5 * 2 + 4 = 5 over count 0.5 * 1 + 1 = 1.5: the bias-corrected average
    np.testing.assert_allclose(avg["adv_g"], 5 / 1.5, rtol=1e-6)
    np.testing.assert_allclose(avg["feat"], 1.0, rtol=1e-6)
    norms3 = {"adv_g": 2.0, "feat": 1.0, "msspec": 4.0}
    s = B.scales(norms3, {"adv_g": 1.0, "feat": 4.0, "msspec": 15.0}, total_norm=2.0, epsilon=0.0)
    # ratios 1/20, 4/20, 15/20 of a total norm 2, each over its own norm
    np.testing.assert_allclose([s["adv_g"], s["feat"], s["msspec"]],
                               [0.05 * 2 / 2, 0.2 * 2 / 1, 0.75 * 2 / 4], rtol=1e-6)  # fmt: skip
    off = B.scales({"adv_g": 2.0, "msspec": 4.0}, {"adv_g": 0.0, "msspec": 15.0}, 1.0, 0.0)
    assert float(off["adv_g"]) == 0.0 and float(off["msspec"]) == pytest.approx(0.25)
    sh = B.shares({"a": jnp.float32(1.0), "b": jnp.float32(3.0)})
    assert (float(sh["a"]), float(sh["b"])) == (0.25, 0.75)
    assert float(B.shares({"a": jnp.float32(0.0)})["a"]) == 0.0


def test_balanced_gradient_norms_by_hand():
    """At the first step the averages are this step's norms, so each audio loss's part of the
    balanced gradient has norm ratio_k * total_norm (per example, averaged), and each
    distillation cotangent is ratio_k * distill_total_norm / ||g_k||."""
    cfg = TrainConfig(
        codec=tiny_codec_config(),
        disc=SMALL_DISC,
        balancer=BalancerConfig(
            enabled=True, total_norm=2.0, distill_total_norm=3.0, epsilon=0.0
        ),  # fmt: skip
    )
    models, _ = make(cfg)
    rng = np.random.default_rng(0)
    g = {k: jnp.asarray(rng.normal(size=(2, 50)) * s, jnp.float32)
         for k, s in (("adv_g", 0.1), ("feat", 3.0), ("msspec", 20.0))}  # fmt: skip
    alpha = {"adv_g": 1.0, "feat": 4.0, "msspec": 15.0}
    weighted = {k: alpha[k] * g[k] for k in g}
    latent = {"wavlm": jnp.float32(0.5), "llm": jnp.float32(0.1)}
    d_fake, cot_w, cot_l, state = _balance(models, B.initial_state(), weighted, latent)
    parts = {k: alpha[k] / 20 * 2.0 * g[k] / example_norm(g[k]) for k in g}
    for k in g:
        np.testing.assert_allclose(example_norm(parts[k]), alpha[k] / 20 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(d_fake, sum(parts.values()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cot_w, 0.5 * 3.0 / 0.5, rtol=1e-6)  # alphas 1 and 1: ratio 0.5
    np.testing.assert_allclose(cot_l, 0.5 * 3.0 / 0.1, rtol=1e-6)
    assert float(state["count"]) == 1.0
    np.testing.assert_allclose(state["sums"]["feat"], example_norm(g["feat"]), rtol=1e-6)


@pytest.fixture(scope="module")
def balanced_step():
    cfg = TrainConfig(
        codec=tiny_codec_config(), disc=SMALL_DISC, balancer=BalancerConfig(enabled=True)
    )
    models, state = make(cfg)
    new, metrics = jax.jit(functools.partial(train_step, models))(state, make_batch())
    return models, state, new, metrics


def test_step_with_the_balancer_logs_shares_and_keeps_its_averages(balanced_step):
    models, state, new, m = balanced_step
    audio = [float(m[f"train/grad_share/{k}"]) for k in B.AUDIO_LOSSES]
    distill = [float(m[f"train/grad_share/{k}"]) for k in B.DISTILL_LOSSES]
    assert sum(audio) == pytest.approx(1.0, abs=1e-5) and min(audio) > 0
    assert sum(distill) == pytest.approx(1.0, abs=1e-5) and min(distill) > 0
    assert float(new.balancer["count"]) == 1.0
    assert all(float(v) > 0 for v in new.balancer["sums"].values())
    # loss_g keeps its meaning: the weighted sum of the losses, whatever the balancer does
    lc = models.cfg.loss
    total = (lc.alpha_adv * m["train/adv_g"] + lc.alpha_feat * m["train/feat"]
             + lc.alpha_msspec * m["train/msspec"] + lc.alpha_wavlm * m["train/wavlm"]
             + lc.alpha_llm * m["train/llm"])  # fmt: skip
    np.testing.assert_allclose(m["train/loss_g"], total, rtol=1e-6)
    assert np.isfinite(float(m["train/grad_norm_g"]))


def test_shares_are_measured_every_n_steps():
    """``grad_share_every_steps=2``: the step from ``state.step = 0`` measures the shares, the
    next one skips the extra discriminator backward and gives zeros (the trainer logs shares
    only on measuring steps)."""
    from amylm_jax.steps import share_measured

    cfg = TrainConfig(codec=tiny_codec_config(), disc=SMALL_DISC, grad_share_every_steps=2)
    models, state = make(cfg)
    step = jax.jit(functools.partial(train_step, models))
    s1, m1 = step(state, make_batch())
    _, m2 = step(s1, make_batch(seed=1))
    names = [k for k in m1 if k.startswith("train/grad_share/")]
    assert len(names) == 5 and all(float(m1[k]) > 0 for k in names)
    assert all(float(m2[k]) == 0.0 for k in names)
    assert [share_measured(cfg, s) for s in range(4)] == [True, False, True, False]
    balanced = dataclasses.replace(cfg, balancer=BalancerConfig(enabled=True))
    assert share_measured(balanced, 1)


def test_every_state_leaf_is_its_own_buffer():
    """The step donates the state: two leaves sharing a buffer fail (one device) or crash
    (sharded) at the first step. The balancer's and the weight average's leaves are fresh."""
    cfg = TrainConfig(
        codec=tiny_codec_config(),
        disc=SMALL_DISC,
        balancer=BalancerConfig(enabled=True),
        optim=dataclasses.replace(TrainConfig().optim, ema_decay=0.99),
    )
    _, state = make(cfg)
    leaves = jax.tree_util.tree_leaves(state)
    assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)


def test_balancer_needs_the_shared_forward():
    with pytest.raises(ValueError, match="shared_disc_forward"):
        TrainConfig(balancer=BalancerConfig(enabled=True), shared_disc_forward=False)
    with pytest.raises(ValueError, match="ema_decay"):
        BalancerConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="grad_share_every_steps"):
        TrainConfig(grad_share_every_steps=0)
    assert LossConfig().alpha_msspec == 15.0
