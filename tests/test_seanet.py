"""SEANet encoder/decoder: parity with moshi (weights through the importer), causality, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from amylm_jax.config import SEANetConfig
from amylm_jax.export.from_torch import torch_to_flax
from amylm_jax.models.seanet import SEANetDecoder, SEANetEncoder
from amylm_jax.reference.mimi import build_mimi, from_torch_bct, state_numpy, to_torch_bct

TINY = SEANetConfig(dimension=8, n_filters=2, ratios=(4, 2))


def _params(tiny: bool = False):
    model, config = build_mimi(tiny)
    variables, report = torch_to_flax(state_numpy(model), config)
    assert not report.unexpected
    return model, config, variables["params"]


@pytest.mark.slow
@pytest.mark.torch
def test_encoder_matches_moshi_full_size(rng):
    model, config, params = _params()
    audio = rng.standard_normal((1, 24000, 1)).astype(np.float32)
    with torch.no_grad():
        ref = from_torch_bct(model.encoder(to_torch_bct(audio)))
    out = SEANetEncoder(config.seanet).apply({"params": params["encoder"]}, audio)
    assert out.shape == (1, 25, 512) == ref.shape
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.torch
def test_decoder_matches_moshi_full_size(rng):
    model, config, params = _params()
    latent = rng.standard_normal((1, 25, 512)).astype(np.float32)
    with torch.no_grad():
        ref = from_torch_bct(model.decoder(to_torch_bct(latent)))
    dec = SEANetDecoder(config.seanet)
    out = dec.apply({"params": params["decoder"]}, latent)
    assert out.shape == (1, 24000, 1) == ref.shape
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


@pytest.mark.torch
def test_tiny_encoder_decoder_match_moshi(rng):
    model, config, params = _params(tiny=True)
    audio = rng.standard_normal((2, 2 * config.seanet.hop_length, 1)).astype(np.float32)
    with torch.no_grad():
        ref_z = from_torch_bct(model.encoder(to_torch_bct(audio)))
        ref_y = from_torch_bct(model.decoder(to_torch_bct(ref_z)))
    z = SEANetEncoder(config.seanet).apply({"params": params["encoder"]}, audio)
    np.testing.assert_allclose(np.asarray(z), ref_z, atol=1e-5, rtol=0)
    for method in ("dilated", "polyphase"):
        dec = SEANetDecoder(config.seanet, transpose_method=method)
        y = dec.apply({"params": params["decoder"]}, ref_z)
        np.testing.assert_allclose(np.asarray(y), ref_y, atol=1e-5, rtol=0)


def test_param_counts_full_size():
    cfg = SEANetConfig()
    enc = jax.eval_shape(SEANetEncoder(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 960, 1)))
    dec = jax.eval_shape(SEANetDecoder(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 1, 512)))

    def count(tree):
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))

    assert count(enc) == 12_628_256  # docs/original.md §2.8
    assert count(dec) == 14_724_641


def test_encoder_is_causal_by_gradient(rng):
    enc = SEANetEncoder(TINY)
    audio = jnp.asarray(rng.standard_normal((1, 64, 1)).astype(np.float32))
    variables = enc.init(jax.random.PRNGKey(0), audio)
    hop = TINY.hop_length
    frame = 3  # covers samples [24, 32); must not see sample 32 or later
    grad = jax.jit(jax.grad(lambda a: enc.apply(variables, a)[0, frame].sum()))(audio)
    grad = np.asarray(grad)[0, :, 0]
    assert np.all(grad[(frame + 1) * hop :] == 0)
    assert np.any(grad[frame * hop : (frame + 1) * hop] != 0)


def test_decoder_is_causal_by_gradient(rng):
    dec = SEANetDecoder(TINY)
    latent = jnp.asarray(rng.standard_normal((1, 6, 8)).astype(np.float32))
    variables = dec.init(jax.random.PRNGKey(0), latent)
    sample = 2 * TINY.hop_length + 3  # inside frame 2
    grad = jax.jit(jax.grad(lambda z: dec.apply(variables, z)[0, sample].sum()))(latent)
    assert np.all(np.asarray(grad)[0, 3:] == 0)
    assert np.any(np.asarray(grad)[0, 2] != 0)


def test_jit_equals_eager_and_shapes(rng):
    enc, dec = SEANetEncoder(TINY), SEANetDecoder(TINY)
    audio = jnp.asarray(rng.standard_normal((2, 32, 1)).astype(np.float32))
    v_enc = enc.init(jax.random.PRNGKey(0), audio)
    z = enc.apply(v_enc, audio)
    assert z.shape == (2, 4, 8)
    np.testing.assert_allclose(np.asarray(jax.jit(enc.apply)(v_enc, audio)), z, atol=1e-6)
    v_dec = dec.init(jax.random.PRNGKey(1), z)
    y = dec.apply(v_dec, z)
    assert y.shape == (2, 32, 1)
    np.testing.assert_allclose(np.asarray(jax.jit(dec.apply)(v_dec, z)), y, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the hop"):
        enc.apply(v_enc, audio[:, :30])
