"""Causal conv primitives: parity with torch.nn.functional, causality, both convT forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amylm_jax.models import conv


def _torch_causal_conv(x_btc, kernel_kio, bias, stride, dilation, pad_mode, groups=1):
    """The original's rule, written with torch ops: left pad k_eff - s, VALID conv."""
    x = torch.from_numpy(np.array(x_btc)).transpose(1, 2)
    w = torch.from_numpy(np.array(kernel_kio)).permute(2, 1, 0)
    k = w.shape[-1]
    pad = (k - 1) * dilation + 1 - stride
    mode = "constant" if pad_mode == "constant" else "replicate"
    x = F.pad(x, (pad, 0), mode=mode)
    b = None if bias is None else torch.from_numpy(np.array(bias))
    y = F.conv1d(x, w, b, stride=stride, dilation=dilation, groups=groups)
    return y.transpose(1, 2).numpy()


def _torch_causal_convtr(x_btc, kernel_kio, bias, stride, groups=1):
    x = torch.from_numpy(np.array(x_btc)).transpose(1, 2)
    # groups 1: [K, I, O] -> [I, O, K]; depthwise: [K, 1, C] -> [C, 1, K].
    order = (1, 2, 0) if groups == 1 else (2, 1, 0)
    w = torch.from_numpy(np.array(kernel_kio)).permute(*order)
    b = None if bias is None else torch.from_numpy(np.array(bias))
    y = F.conv_transpose1d(x, w, b, stride=stride, groups=groups)
    k = w.shape[-1]
    return y[..., : y.shape[-1] - (k - stride)].transpose(1, 2).numpy()


@pytest.mark.parametrize(
    "k,s,d,pad_mode",
    [(7, 1, 1, "constant"), (8, 4, 1, "constant"), (3, 1, 2, "constant"), (4, 2, 1, "replicate")],
)
def test_causal_conv1d_matches_torch(rng, k, s, d, pad_mode):
    x = rng.standard_normal((2, 24, 5)).astype(np.float32)
    mod = conv.CausalConv1d(6, k, stride=s, dilation=d, pad_mode=pad_mode)
    variables = mod.init(jax.random.PRNGKey(0), x)
    params = variables["params"]
    assert params["kernel"].shape == (k, 5, 6) and params["kernel"].dtype == jnp.float32
    y = mod.apply(variables, x)
    assert y.shape == (2, 24 // s, 6)
    ref = _torch_causal_conv(x, params["kernel"], params["bias"], s, d, pad_mode)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=0)


def test_replicate_pad_repeats_first_frame(rng):
    x = rng.standard_normal((1, 4, 3)).astype(np.float32)
    padded = np.asarray(conv.causal_pad(jnp.asarray(x), 2, "replicate"))
    np.testing.assert_array_equal(padded[0, :3], np.repeat(x[0, :1], 3, axis=0))
    with pytest.raises(ValueError, match="pad_mode"):
        conv.causal_pad(jnp.asarray(x), 2, "reflect")


def test_causal_conv1d_rejects_length_not_multiple_of_stride(rng):
    mod = conv.CausalConv1d(4, 8, stride=4)
    x = np.zeros((1, 10, 2), np.float32)
    with pytest.raises(ValueError, match="multiple of the stride 4"):
        mod.init(jax.random.PRNGKey(0), x)


def test_causal_conv1d_is_causal_by_gradient(rng):
    mod = conv.CausalConv1d(3, 8, stride=4)
    x = rng.standard_normal((1, 32, 2)).astype(np.float32)
    variables = mod.init(jax.random.PRNGKey(0), x)
    t_out = 3  # sees inputs up to 4*3 + 3 = 15
    grad = jax.grad(lambda x_: mod.apply(variables, x_)[0, t_out].sum())(x)
    assert np.all(np.asarray(grad)[0, 16:] == 0)
    assert np.any(np.asarray(grad)[0, 12:16] != 0)


@pytest.mark.parametrize("k,s", [(16, 8), (4, 2), (3, 1), (5, 3)])
@pytest.mark.parametrize("method", ["dilated", "polyphase"])
def test_conv_transpose_matches_torch(rng, k, s, method):
    x = rng.standard_normal((2, 6, 5)).astype(np.float32)
    mod = conv.CausalConvTranspose1d(4, k, s, method=method)
    variables = mod.init(jax.random.PRNGKey(1), x)
    params = variables["params"]
    assert params["kernel"].shape == (k, 5, 4)
    y = mod.apply(variables, x)
    assert y.shape == (2, 6 * s, 4)
    ref = _torch_causal_convtr(x, params["kernel"], params["bias"], s)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["dilated", "polyphase"])
def test_depthwise_conv_transpose_matches_torch(rng, method):
    x = rng.standard_normal((2, 7, 6)).astype(np.float32)
    mod = conv.CausalConvTranspose1d(6, 4, 2, use_bias=False, depthwise=True, method=method)
    variables = mod.init(jax.random.PRNGKey(2), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (4, 1, 6) and "bias" not in variables["params"]
    y = mod.apply(variables, x)
    ref = _torch_causal_convtr(x, kernel, None, 2, groups=6)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=0)


def test_polyphase_equals_dilated(rng):
    x = jnp.asarray(rng.standard_normal((3, 9, 8)).astype(np.float32))
    kernel = jnp.asarray(rng.standard_normal((12, 8, 5)).astype(np.float32))
    a = conv.conv_transpose1d(x, kernel, 6, method="dilated")
    b = conv.conv_transpose1d(x, kernel, 6, method="polyphase")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_conv_transpose_is_causal_by_gradient(rng):
    x = jnp.asarray(rng.standard_normal((1, 6, 3)).astype(np.float32))
    kernel = jnp.asarray(rng.standard_normal((8, 3, 2)).astype(np.float32))
    # Output sample 9 lies in input frame 2's block [8, 12): it may only see frames 0..2.
    grad = jax.grad(lambda x_: conv.conv_transpose1d(x_, kernel, 4)[0, 9].sum())(x)
    assert np.all(np.asarray(grad)[0, 3:] == 0)


def test_bf16_compute_keeps_float32_params(rng):
    x = rng.standard_normal((1, 8, 4)).astype(np.float32)
    mod = conv.CausalConv1d(4, 3, dtype=jnp.bfloat16)
    variables = mod.init(jax.random.PRNGKey(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert mod.apply(variables, x).dtype == jnp.bfloat16


def test_pad_for_conv1d():
    x = jnp.ones((2, 24000))
    assert conv.pad_for_conv1d(x, 1920, 1920).shape == (2, 24960)
    assert conv.pad_for_conv1d(jnp.ones((1, 13445)), 1920, 1920).shape == (1, 15360)
    y = conv.pad_for_conv1d(jnp.ones((1, 48000, 1)), 1920, 1920)
    assert y.shape == (1, 48000, 1)
    padded = conv.pad_for_conv1d(x, 1920, 1920)
    assert float(padded[:, 24000:].sum()) == 0.0


def test_jit_equals_eager(rng):
    x = rng.standard_normal((2, 16, 3)).astype(np.float32)
    mod = conv.CausalConvTranspose1d(5, 8, 4)
    variables = mod.init(jax.random.PRNGKey(0), x)
    eager = mod.apply(variables, x)
    jitted = jax.jit(mod.apply)(variables, x)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-6, rtol=0)
