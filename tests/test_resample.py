"""25 <-> 12.5 Hz resamplers: parity with moshi (replicate pad, depthwise convT), causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from amylm_jax.export.from_torch import torch_to_flax
from amylm_jax.models.resample import ConvDownsample1d, ConvTrUpsample1d
from amylm_jax.reference.mimi import build_mimi, from_torch_bct, state_numpy, to_torch_bct


@pytest.fixture(scope="module")
def mimi():
    model, config = build_mimi()
    params = torch_to_flax(state_numpy(model), config)[0]["params"]
    return model, config, params


@pytest.mark.torch
def test_downsample_matches_moshi(mimi, rng):
    model, config, params = mimi
    # A large first frame makes the replicate padding visible in the first outputs.
    x = rng.standard_normal((2, 26, 512)).astype(np.float32)
    x[:, 0] += 3.0
    with torch.no_grad():
        ref = from_torch_bct(model.downsample(to_torch_bct(x)))
    mod = ConvDownsample1d(config.resample_stride, 512)
    assert params["downsample"]["kernel"].shape == (4, 512, 512)
    out = mod.apply({"params": params["downsample"]}, x)
    assert out.shape == ref.shape == (2, 13, 512)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("method", ["dilated", "polyphase"])
def test_upsample_matches_moshi(mimi, rng, method):
    model, config, params = mimi
    x = rng.standard_normal((2, 13, 512)).astype(np.float32)
    with torch.no_grad():
        ref = from_torch_bct(model.upsample(to_torch_bct(x)))
    mod = ConvTrUpsample1d(config.resample_stride, 512, depthwise=True, method=method)
    assert params["upsample"]["kernel"].shape == (4, 1, 512)
    out = mod.apply({"params": params["upsample"]}, x)
    assert out.shape == ref.shape == (2, 26, 512)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


def test_downsample_replicate_padding_differs_from_zeros(rng):
    mod = ConvDownsample1d(2, 3)
    x = jnp.asarray(rng.standard_normal((1, 4, 3)).astype(np.float32)) + 5.0
    variables = mod.init(jax.random.PRNGKey(0), x)
    kernel = np.asarray(variables["params"]["kernel"])
    # Output 0 = x0 @ (k0 + k1 + k2) + x1 @ k3 (frames -2, -1 replicate x0).
    expected = (
        np.asarray(x[0, 0]) @ (kernel[0] + kernel[1] + kernel[2]) + np.asarray(x[0, 1]) @ kernel[3]
    )
    np.testing.assert_allclose(np.asarray(mod.apply(variables, x))[0, 0], expected, atol=1e-5)


def test_upsample_full_kernel_shape_and_causality(rng):
    mod = ConvTrUpsample1d(2, 3, depthwise=False)
    x = jnp.asarray(rng.standard_normal((1, 5, 3)).astype(np.float32))
    variables = mod.init(jax.random.PRNGKey(0), x)
    assert variables["params"]["kernel"].shape == (4, 3, 3)
    grad = jax.grad(lambda x_: mod.apply(variables, x_)[0, 5].sum())(x)  # frame 2's block
    assert np.all(np.asarray(grad)[0, 3:] == 0)


def test_jit_equals_eager(rng):
    down, up = ConvDownsample1d(2, 4), ConvTrUpsample1d(2, 4)
    x = jnp.asarray(rng.standard_normal((2, 8, 4)).astype(np.float32))
    vd, vu = down.init(jax.random.PRNGKey(0), x), up.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(jax.jit(down.apply)(vd, x), down.apply(vd, x), atol=1e-6)
    np.testing.assert_allclose(jax.jit(up.apply)(vu, x), up.apply(vu, x), atol=1e-6)
