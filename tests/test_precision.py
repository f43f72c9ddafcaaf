"""bf16 compute policy: losses close to fp32; FFTs and VQ distances stay float32 in the HLO."""

from __future__ import annotations

import functools
import re

import jax
import pytest
from step_helpers import SMALL_DISC, make, make_batch

from amylm_jax.config import LOSS_NAMES, TrainConfig, tiny_codec_config
from amylm_jax.steps import train_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lowered_and_losses():
    batch = make_batch()
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(codec=tiny_codec_config(), disc=SMALL_DISC, precision=precision)
        models, state = make(cfg)
        step = jax.jit(functools.partial(train_step, models))
        lowered = step.lower(state, batch)
        _, metrics = lowered.compile()(state, batch)
        out[precision] = (lowered.as_text(), {n: float(metrics[f"train/{n}"]) for n in LOSS_NAMES})
    return out


def test_bf16_losses_close_to_fp32(lowered_and_losses):
    fp32, bf16 = lowered_and_losses["fp32"][1], lowered_and_losses["bf16"][1]
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2 % per operation). The decoded
    # audio passes ~20 bf16 conv/matmul layers before the float32 mel loss, so errors of a few
    # 0.1 % per layer add up to about 1-2 % on msspec (measured: 1.6 % on this batch); the
    # distillation losses see only the float32 quantizer and heads (measured: 3e-5). The bound
    # below is 3x the measured msspec deviation.
    for name in LOSS_NAMES:
        assert bf16[name] == pytest.approx(fp32[name], rel=5e-2, abs=1e-3), name
    for name in ("wavlm", "llm", "loss_d"):
        assert bf16[name] == pytest.approx(fp32[name], rel=1e-3), name


def test_fft_and_vq_distances_are_float32_in_bf16_hlo(lowered_and_losses):
    hlo = lowered_and_losses["bf16"][0]
    lines = hlo.split("\n")
    ffts = [line for line in lines if "stablehlo.fft" in line]
    assert ffts, "no FFT in the step"
    for line in ffts:
        assert "bf16" not in line, line
    # The batch of 2 x 13 frames gives M = 26 residual vectors; distances to the 64 codes of
    # each codebook are a [26, 64] dot_general.
    distances = [
        line for line in lines if "dot_general" in line and re.search(r"-> tensor<26x64x", line)
    ]
    assert distances, "VQ distance matmuls not found"
    for line in distances:
        assert re.search(r"-> tensor<26x64xf32>", line), line
    # ... while the convolutions of the generator do run in bf16.
    assert any("convolution" in line and "bf16" in line for line in lines)
