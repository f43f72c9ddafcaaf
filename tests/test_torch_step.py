"""Fidelity of the JAX training step against its PyTorch re-statement (reference/torch_step.py).

One full train step (docs/original.md §7.3) from the same weights on the same batch, every
codebook initialised (no k-means), in three variants: the adaptation phase, the adversarial
phase (msspec off, ``configs/adversarial.py``) and the original order of discriminator forwards
(``shared_disc_forward=False``). Configuration: the tiny codec of ``tiny_codec_config`` (real frame
arithmetic, 33 -> 6 slots, 4 active codebooks) with the FULL-SIZE MS-STFT discriminator
(32 filters, all five scales), batch 2 of 0.32 s (7680 samples, 4 frames), WavLM/LLM
teacher dims 64/96. ``test_torch_many_steps`` follows both sides for 20 steps from empty
codebooks (k-means, dead-code replacement), with the full-size codec for the adaptation phase.

The reference is the PyTorch step in float64 (``precision="fp64"``, same code): it tells
which side's float32 rounding a difference comes from. Measured on this step: the JAX
float32 step is within ~2e-6 of it everywhere (relative to the largest gradient), while
PyTorch's own float32 CPU step is off by up to 6e-4 in the discriminator gradients (its
float32 convolution bias/weight-gradient reductions); so the JAX step is compared with the
float64 reference and the float32 PyTorch step only on its losses and codebooks.

Tolerances:

* losses: 1e-4 relative (measured ~1e-7);
* codebook EMA buffers: 1e-5 relative to each buffer's largest value (measured ~1e-7);
* gradients, read from Adam's first moment (``mu = (1 - b1) * clipped grad`` on both
  sides): ``1e-4 * max|tensor|`` per element, plus ``1e-6 * max|group|`` (discriminator) or
  ``1e-8 * max|group|`` (generator). The second term exists for gradients that are residues
  of cancellation (the post-conv weight-norm gain sums real and fake hinge terms of opposite
  sign): a float32 reduction's error scales with the summed terms, not with the result
  (measured need: 3.2e-7 * max|group|, the first discriminator's post-conv gain; 1.6e-9 *
  max|group| in the generator of the adversarial phase, the upsample's weight, with the test
  suite's 8 host devices, whose thread split changes XLA's summation order);
* updated parameters: Adam's first step is ``p - lr * g / (|g| + eps)``, about
  ``p - lr * sign(g)``, so a parameter whose gradient is within the gradient tolerance of 0
  may legitimately move by up to ``2 lr`` differently. Each element's tolerance is the exact
  worst case that the asserted gradient tolerance ``tau`` allows through that map,
  ``lr * sup_{|d| <= tau} |phi(g + d) - phi(g)|`` with ``phi(x) = x / (|x| + eps)``, plus
  ``1e-4 * lr`` (the update agrees to 1e-4 relative) and 4 float32 ulps of ``|p|`` (the
  rounding of ``p - u`` on each side). The share of elements whose tolerance exceeds
  ``0.1 lr`` (gradient within tolerance of 0, or so small that ``eps`` matters) is asserted
  to stay under 10 % (measured 6 % generator, 1 % discriminator), so the check cannot pass
  vacuously.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

import jax  # noqa: E402

from amylm_jax.config import LossConfig, TrainConfig, tiny_codec_config  # noqa: E402
from amylm_jax.reference import jax_setup as setup  # noqa: E402
from amylm_jax.reference import torch_step as tb  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]

WAVLM_DIM, LLM_DIM = 64, 96
BATCH, SECONDS = 2, 0.32
LOSS_RTOL = 1e-4
CODEBOOK_RTOL = 1e-5
GRAD_RTOL = 1e-4
GROUP_ATOL = {"gen": 1e-8, "disc": 1e-6}
UPDATE_RTOL = 1e-4
ULP = 2.0**-23
LOOSE, LOOSE_SHARE = 0.1, 0.1


#: The step of each phase, and the original order of discriminator forwards.
VARIANTS = {
    "adaptation": {},
    "adversarial": {"loss": LossConfig(adversarial_only=True)},  # configs/adversarial.py
    "original_order": {"shared_disc_forward": False},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def steps(request):
    cfg = TrainConfig(codec=tiny_codec_config(), **VARIANTS[request.param])
    models, state = setup.jax_setup(cfg, seed=0, wavlm_dim=WAVLM_DIM, llm_dim=LLM_DIM)
    batch = setup.make_batch(cfg, BATCH, SECONDS, 0, WAVLM_DIM, LLM_DIM)
    before = tb.jax_torch_layout(state, cfg)
    new_state, metrics = jax.jit(setup.step_function(models))(state, batch)
    out = {"cfg": cfg, "before": before, "jax": tb.jax_torch_layout(new_state, cfg)}
    out["jax_losses"] = {k: float(metrics[f"train/{k}"]) for k in tb.LOSS_NAMES}
    args = (
        torch.from_numpy(batch["audio"])[:, None],
        torch.from_numpy(batch["wavlm"]),
        torch.from_numpy(batch["llm"]),
    )
    for precision in ("fp64", "fp32"):
        trainer = tb.TorchTrainer(cfg, WAVLM_DIM, LLM_DIM, precision=precision)
        tb.load_jax_state(trainer, state)
        if precision == "fp64":
            # The copy is exact: the PyTorch model starts from the JAX state.
            start = tb.torch_layout(trainer)
            for group in ("gen", "disc", "codebooks"):
                assert start[group].keys() == before[group].keys()
                for name, value in start[group].items():
                    np.testing.assert_array_equal(value, before[group][name], err_msg=name)
        losses = trainer.train_step(*args)
        out[f"torch_{precision}_losses"] = {k: float(v) for k, v in losses.items()}
        out[f"torch_{precision}"] = tb.torch_layout(trainer)
    return out


@pytest.mark.parametrize("side", ["jax", "torch_fp32"])
def test_seven_losses(steps, side):
    ref = steps["torch_fp64_losses"]
    got = steps[f"{side}_losses"]
    assert set(got) == set(ref) == {"loss_g", "loss_d", "adv_g", "feat", "wavlm", "llm", "msspec"}
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, rel=LOSS_RTOL), name


@pytest.mark.parametrize("side", ["jax", "torch_fp32"])
def test_codebook_ema(steps, side):
    ref, got, before = (steps[s]["codebooks"] for s in ("torch_fp64", side, "before"))
    moved = 0
    for name, value in ref.items():
        atol = CODEBOOK_RTOL * np.abs(value).max()
        np.testing.assert_allclose(got[name], value, rtol=CODEBOOK_RTOL, atol=atol, err_msg=name)
        moved += not np.array_equal(value, before[name])
    # The 4 active slots updated embedding_sum and cluster_usage; the idle slots did not.
    assert moved == 8


def _grad_tolerances(ref_mu: dict, group_max: float, group: str) -> dict:
    atol = GROUP_ATOL[group] * group_max
    return {n: GRAD_RTOL * np.abs(v).max() + atol for n, v in ref_mu.items()}


@pytest.mark.parametrize("group", ["gen", "disc"])
def test_gradients(steps, group):
    ref, got = steps["torch_fp64"][f"{group}_mu"], steps["jax"][f"{group}_mu"]
    group_max = max(np.abs(v).max() for v in ref.values())
    assert group_max > 0
    for name, tol in _grad_tolerances(ref, group_max, group).items():
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=tol, err_msg=name)
    # Second moments follow (nu = (1 - b2) g^2); same structure of tolerance, squared scale.
    ref_nu, got_nu = steps["torch_fp64"][f"{group}_nu"], steps["jax"][f"{group}_nu"]
    nu_max = max(np.abs(v).max() for v in ref_nu.values())
    for name, value in ref_nu.items():
        tol = 2 * GRAD_RTOL * np.abs(value).max() + 2 * GROUP_ATOL[group] * nu_max
        np.testing.assert_allclose(got_nu[name], value, rtol=0, atol=tol, err_msg=name)


def _phi(x: np.ndarray, eps: float) -> np.ndarray:
    return x / (np.abs(x) + eps)


def _update_bound(g: np.ndarray, tau: float, eps: float) -> np.ndarray:
    """``sup_{|d| <= tau} |phi(g + d) - phi(g)|`` for Adam's first-step map ``phi``."""
    a = np.abs(g)
    decided = a > tau
    safe = np.where(decided, a - tau, 0.0)
    return np.where(decided, _phi(a, eps) - _phi(safe, eps), 1.0 + _phi(a, eps))


@pytest.mark.parametrize("group", ["gen", "disc"])
def test_updated_parameters(steps, group):
    o = steps["cfg"].optim
    lr = o.lr_g if group == "gen" else o.lr_d
    ref, got, before = (steps[s][group] for s in ("torch_fp64", "jax", "before"))
    ref_mu = steps["torch_fp64"][f"{group}_mu"]
    group_max = max(np.abs(v).max() for v in ref_mu.values())
    taus = _grad_tolerances(ref_mu, group_max, group)
    frozen = [n for n in ref if n.startswith(("codec.encoder.", "codec.encoder_transformer."))]
    loose = total = moved = 0
    for name, p_ref in ref.items():
        p0 = before[name].astype(np.float64)
        if name in frozen:
            np.testing.assert_array_equal(got[name], before[name], err_msg=name)
            np.testing.assert_array_equal(p_ref, p0, err_msg=name)
            continue
        g = ref_mu[name].astype(np.float64) / (1 - o.b1)
        bound = _update_bound(g, taus[name] / (1 - o.b1), o.eps)
        tol = lr * (bound + UPDATE_RTOL) + 4 * ULP * np.abs(p0)
        err = np.abs(got[name].astype(np.float64) - p_ref)
        assert np.all(err <= tol), (name, float(np.max(err - tol)))
        moved += int(np.sum(np.abs(p_ref - p0) > 0.5 * lr))
        loose += int(np.sum(bound > LOOSE))
        total += g.size
    if group == "gen":
        assert frozen, "the frozen encoder side was not found"
    # The step really moved the parameters by about lr (Adam's first step). Not every element:
    # a bias whose channel never changes LeakyReLU side gets exactly cancelling real and fake
    # hinge gradients (zero in float64 too).
    assert moved >= 0.5 * total, (moved, total)
    # Elements whose update the gradient tolerance cannot pin down to 0.1 lr: a small share.
    assert loose <= LOOSE_SHARE * total, (loose, total)
