"""Twenty consecutive training steps of the JAX trainer against its PyTorch re-statement,
starting from empty codebooks, so that k-means and dead-code replacement run on both sides.

Each step feeds a new random batch to both sides. Their random choices are made equal, not
tolerated: the PyTorch codebooks take the row indices the JAX step drew for k-means and for
dead-code replacement (``torch_step.injected_draws``), and both resolve ties between centroids
that are equal in exact arithmetic by the same rule (``quantizer.tie_rtol`` on the JAX side,
``torch_step.tie_rule`` on the PyTorch side). The reference is the PyTorch step in float64, as
in ``test_torch_step``.

Variants: the adaptation phase with the FULL-SIZE codec of ``configs/adapt.py`` (9 of 33
codebook slots of 2048 codes, 8-layer transformers, full MS-STFT discriminator), the
adversarial phase (``configs/adversarial.py``: reconstruction off) and the original order of
discriminator forwards (``shared_disc_forward=False``); the last two use the small codec of
``tiny_codec_config`` with the full-size discriminator to fit the CI budget. Batch 2 of
0.32 s (8 latent vectors per codebook call, so every k-means samples with replacement).

Three settings differ from the defaults, on both sides:

* ``quantizer.tie_rtol = 1e-5`` (default 0, the original's plain argmin). k-means with fewer
  vectors than codes copies each vector into many codes, and after one EMA update a code that
  was assigned its own vector and a copy that nothing was assigned to differ only by rounding
  (``(d s + (1 - d) s) / (d n + (1 - d) n)`` against ``(d s) / (d n)``). A plain argmin picks
  among them by rounding, which differs between float32 JAX and the float64 reference, so
  the two sides would move different codes from the second step on (measured: 1-3 % of a
  usage buffer's largest value apart at the second step). With the rule both pick the lowest
  index.

* ``threshold_usage_ratio = 1.0`` (default 0.1): a code expires when its usage is below the
  mean instead of a tenth of it. With decay 0.99 an unused code takes about 230 steps to fall
  to a tenth of the mean; at 1.0 the check every 5 steps replaces codes from the first check
  on, so replacement runs several times within 20 steps. The rule and its arithmetic are
  unchanged.
* Adam's ``eps = 1e-3`` (default 1e-8). With 1e-8, Adam's step is about ``lr * sign(g)`` for
  every gradient element, including the elements that are residues of cancellation (for
  example the discriminator's hinge terms of opposite sign), whose sign in float32 is
  rounding noise: such an element moves by ``+lr`` on one side and ``-lr`` on the other. The
  discriminator then drifts: measured over 11 steps, the adversarial loss of the float32 JAX
  step moved 3e-3 away from the float64 reference, and PyTorch's own float32 step moved 1e-3
  away from it (the same drift; no implementation can follow a float64 trajectory there).
  With ``eps = 1e-3`` the update is a smooth function of the gradient, so gradients that
  agree to float32 rounding give updates that agree too, and a tight tolerance after 20 steps
  means what it says.

Tolerances (measured values in brackets):

* the seven losses at every step: ``1e-4`` relative to ``max(|loss|, 0.01)`` (a floor for
  ``adv_g``, which passes through 0) [full size 8.8e-6; small codec 1.3e-5];
* codebook buffers at every step: ``initialized`` and the check countdown exactly; the EMA
  sums and usages within ``1e-4`` of each buffer's largest value [4.1e-6; 1.5e-5]: the centroids
  follow the encoder output, which carries float32 rounding from 20 steps of updates;
* parameters after 20 steps: each tensor within ``2e-3 * steps * lr`` plus 4 float32 ulps of
  the value [x steps x lr: generator 1.2e-4 and discriminator 4.3e-4 at full size; the
  largest, 1.6e-3, is the discriminator's in the original order]: each Adam update moves a
  parameter by at most about ``lr``, and with ``eps = 1e-3`` the updates of both sides agree
  to a small fraction of that; most tensors must also have moved by more than ten times their
  disagreement, so the check cannot pass on parameters that did not train.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

import jax  # noqa: E402

from amylm_jax.config import LossConfig, TrainConfig, tiny_codec_config  # noqa: E402
from amylm_jax.reference import jax_setup as setup  # noqa: E402
from amylm_jax.reference import torch_step as tb  # noqa: E402
from amylm_jax.reference.inputs import train_config  # noqa: E402
from amylm_jax.steps import step_key  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]

WAVLM_DIM, LLM_DIM = 64, 96
BATCH, SECONDS, STEPS = 2, 0.32, 20
LOSS_RTOL, LOSS_FLOOR = 1e-4, 0.01
CODEBOOK_RTOL = 1e-4
PARAM_LR_SHARE = 2e-3
ULP = 2.0**-23
EXPIRED = "train/codebook/expired_"
TIE_RTOL = 1e-5


def _adapt_config() -> TrainConfig:
    path = Path(__file__).resolve().parents[1] / "configs" / "adapt.py"
    spec = importlib.util.spec_from_file_location("adapt_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return train_config(module.get_config())


def _variant(name: str) -> TrainConfig:
    if name == "adaptation":
        cfg = _adapt_config()
    elif name == "adversarial":
        cfg = TrainConfig(codec=tiny_codec_config(), loss=LossConfig(adversarial_only=True))
    else:
        cfg = TrainConfig(codec=tiny_codec_config(), shared_disc_forward=False)
    q = dataclasses.replace(cfg.codec.quantizer, threshold_usage_ratio=1.0, tie_rtol=TIE_RTOL)
    return dataclasses.replace(
        cfg,
        codec=dataclasses.replace(cfg.codec, quantizer=q),
        optim=dataclasses.replace(cfg.optim, eps=1e-3),
    )


def _codebook_part(jax_layout: dict, torch_layout: dict) -> dict:
    """One step's codebook comparison, reduced as it is made (a full-size snapshot is about 70
    MB per side, too much to keep for 20 steps): the countdowns and ``initialized`` flags of
    both sides, and for each EMA buffer its largest relative difference."""
    got, ref = jax_layout["codebooks"], torch_layout["codebooks"]
    out = {"countdowns": (jax_layout["countdowns"], torch_layout["countdowns"]),
           "names": (sorted(got), sorted(ref)), "flags": {}, "errors": {}, "unset": {}}  # fmt: skip
    for name, value in ref.items():
        if name.endswith("_initialized"):
            out["flags"][name] = (np.array(got[name]), np.array(value))
            continue
        scale = np.abs(value).max()
        if scale == 0:  # a level not initialised yet: the JAX side must be exactly zero too
            out["unset"][name] = float(np.abs(got[name]).max())
            continue
        out["errors"][name] = float(np.abs(got[name].astype(np.float64) - value).max() / scale)
    return out


def _params(layout: dict) -> dict:
    return {"gen": layout["gen"], "disc": layout["disc"]}


def _run(variant: str) -> dict:
    """Both sides through the 20 steps; what the checks below compare."""
    cfg = _variant(variant)
    models, state = setup.jax_setup(
        cfg, seed=0, wavlm_dim=WAVLM_DIM, llm_dim=LLM_DIM, initialized_codebooks=False
    )
    step = jax.jit(setup.step_function(models))
    trainer = tb.TorchTrainer(cfg, WAVLM_DIM, LLM_DIM, precision="fp64")
    tb.load_jax_state(trainer, state)
    out = {"cfg": cfg, "before": _params(tb.jax_torch_layout(state, cfg)), "steps": []}
    for i in range(STEPS):
        batch = setup.make_batch(cfg, BATCH, SECONDS, 100 + i, WAVLM_DIM, LLM_DIM)
        frames = BATCH * batch["wavlm"].shape[1]
        draws = tb.quantizer_draws(cfg, step_key(state), frames)
        state, metrics = step(state, batch)
        args = (
            torch.from_numpy(batch["audio"])[:, None],
            torch.from_numpy(batch["wavlm"]),
            torch.from_numpy(batch["llm"]),
        )
        with tb.injected_draws(trainer, draws), tb.tie_rule(TIE_RTOL):
            losses = trainer.train_step(*args)
        out["steps"].append(
            {
                "jax_losses": {k: float(metrics[f"train/{k}"]) for k in tb.LOSS_NAMES},
                "torch_losses": {k: float(v) for k, v in losses.items()},
                "codebooks": _codebook_part(
                    tb.jax_torch_layout(state, cfg), tb.torch_layout(trainer)
                ),  # fmt: skip
                "expired": {k: float(v) for k, v in metrics.items() if EXPIRED in k},
            }
        )
    final_jax, final_torch = tb.jax_torch_layout(state, cfg), tb.torch_layout(trainer)
    out["jax"], out["torch"] = _params(final_jax), _params(final_torch)
    flags = {n: v for n, v in final_jax["codebooks"].items() if n.endswith("_initialized")}
    out["final_flags"] = flags
    return out


@pytest.mark.parametrize("variant", ["adaptation", "adversarial", "original_order"])
def test_twenty_steps_follow_the_reference(variant):
    """One test per variant (the run is minutes long and GBs large at full size: it is made
    once, on one worker, and dropped after its checks)."""
    run = _run(variant)
    _losses_every_step(run)
    _codebooks_every_step(run)
    _kmeans_level_by_level(run)
    _dead_codes_replaced_repeatedly(run)
    for group in ("gen", "disc"):
        _parameters_after_all_steps(run, group)


def _losses_every_step(run):
    worst = 0.0
    for i, s in enumerate(run["steps"]):
        ref, got = s["torch_losses"], s["jax_losses"]
        assert set(got) == set(ref) == set(tb.LOSS_NAMES)
        for name, value in ref.items():
            err = abs(got[name] - value) / max(abs(value), LOSS_FLOOR)
            worst = max(worst, err)
            assert err <= LOSS_RTOL, (i, name, got[name], value)
    print(f"losses: worst relative error {worst:.1e}")


def _slots(layout: dict, leaf: str) -> list[str]:
    return sorted(n for n in layout if n.endswith(leaf))


def _codebooks_every_step(run):
    worst = 0.0
    for i, s in enumerate(run["steps"]):
        c = s["codebooks"]
        assert c["countdowns"][0] == c["countdowns"][1], i
        assert c["names"][0] == c["names"][1]
        for name, (got, value) in c["flags"].items():
            np.testing.assert_array_equal(got, value, err_msg=f"step {i} {name}")
        for name, largest in c["unset"].items():  # a level not initialised yet
            assert largest == 0.0, (i, name, largest)
        for name, err in c["errors"].items():
            worst = max(worst, err)
            assert err <= CODEBOOK_RTOL, (i, name, err)
    print(f"codebooks: worst error {worst:.1e} of the buffer's largest value")


def _kmeans_level_by_level(run):
    """Level ``l`` of each residual quantizer runs k-means on step ``l``: a level starts only
    once the level before it was initialised on an earlier step."""
    q = run["cfg"].codec.quantizer
    active = {"rvq_first": q.n_q_first, "rvq_rest": q.num_codebooks - q.n_q_first}
    for rvq, n in active.items():
        for level in range(n):
            name = f"codec.quantizer.{rvq}.vq.layers.{level}._codebook._initialized"
            flags = [float(s["codebooks"]["flags"][name][1].ravel()[0]) for s in run["steps"]]
            assert flags == [0.0] * level + [1.0] * (STEPS - level), (name, flags)
    idle = [n for n, flag in run["final_flags"].items() if float(flag.ravel()[0]) == 0]
    assert len(idle) == q.n_q - q.num_codebooks  # the slots beyond num_codebooks never ran


def _dead_codes_replaced_repeatedly(run):
    fired = [i for i, s in enumerate(run["steps"]) if any(v > 0 for v in s["expired"].values())]
    assert len(fired) >= 2, fired


def _parameters_after_all_steps(run, group):
    o = run["cfg"].optim
    lr = o.lr_g if group == "gen" else o.lr_d
    ref, got, before = (run[s][group] for s in ("torch", "jax", "before"))
    frozen = [n for n in ref if n.startswith(("codec.encoder.", "codec.encoder_transformer."))]
    worst, moved = 0.0, 0
    for name, p_ref in ref.items():
        if name in frozen:
            np.testing.assert_array_equal(got[name], before[name], err_msg=name)
            np.testing.assert_array_equal(p_ref, before[name], err_msg=name)
            continue
        err = np.abs(got[name].astype(np.float64) - p_ref)
        tol = PARAM_LR_SHARE * STEPS * lr + 4 * ULP * np.abs(p_ref)
        assert np.all(err <= tol), (name, float(err.max() / (STEPS * lr)))
        worst = max(worst, float(err.max()) / (STEPS * lr))
        # Trained, by more than the two sides differ.
        moved += int(np.abs(p_ref - before[name]).max() > 10 * err.max())
    if group == "gen":
        assert frozen, "the frozen encoder side was not found"
    # (In the adversarial phase some generator tensors barely move: 44 of 58 did.)
    assert moved > 0.5 * (len(ref) - len(frozen)), (moved, len(ref) - len(frozen))
    print(f"{group} parameters: worst error {worst:.1e} x steps x lr")
