"""Whole-codec parity against moshi's PyTorch Mimi in the Amy 33-slot configuration.

The PyTorch model is moshi's random-weight Mimi whose quantizer is replaced by
``SplitResidualVectorQuantizer(n_q=33, n_q_semantic=2)`` (Amy's layout: semantic + prosody
residual in ``rvq_first``, 31 acoustic slots) with every codebook set to random values and
marked initialised. Its state dict goes through our importer (the path users take), so these
tests check the import and the model together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from amylm_jax.config import CodecConfig  # noqa: E402
from amylm_jax.export.from_torch import torch_to_flax  # noqa: E402
from amylm_jax.models.amy_codec import AmyCodec  # noqa: E402
from amylm_jax.reference.mimi import randomize_codebooks  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]


def build_moshi_amy(seed: int = 0, num_codebooks: int = 9):
    """moshi Mimi with Amy's 33-slot split quantizer and random, initialised codebooks."""
    from moshi.models.loaders import get_mimi
    from moshi.quantization.vq import SplitResidualVectorQuantizer

    torch.manual_seed(seed)
    model = get_mimi(None, device="cpu")
    model.quantizer = SplitResidualVectorQuantizer(
        n_q=33, n_q_semantic=2, dimension=256, input_dimension=512, output_dimension=512, bins=2048
    )
    gen = torch.Generator().manual_seed(seed + 1)
    randomize_codebooks(model.quantizer, gen)
    model.set_num_codebooks(num_codebooks)
    return model.eval()


def moshi_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    model = build_moshi_amy()
    variables, report = torch_to_flax(moshi_state(model), CodecConfig())
    assert report.missing == () and report.unexpected == ()
    return model, variables


@pytest.fixture(scope="module")
def jitted():
    codec = AmyCodec(CodecConfig())
    encode = jax.jit(lambda v, x: codec.apply(v, x, method=AmyCodec.encode))
    decode = jax.jit(lambda v, c: codec.apply(v, c, method=AmyCodec.decode))
    return encode, decode


def _audio(batch: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 24000.0
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400, (batch, 1)) * t)
    return (tone + 0.05 * rng.standard_normal((batch, n))).astype(np.float32)


@pytest.mark.parametrize("n", [24000, 48000, 13445])
def test_codes_and_decode_match_moshi(reference, jitted, n):
    model, variables = reference
    encode, decode = jitted
    x = _audio(2, n, seed=n)
    with torch.no_grad():
        codes_ref = model.encode(torch.from_numpy(x)[:, None]).numpy()
        audio_ref = model.decode(torch.from_numpy(codes_ref)).numpy()[:, 0]
    codes = np.asarray(encode(variables, x))
    assert codes.shape == codes_ref.shape == (2, 9, -(-n // 1920))
    # Integer codes must be identical (no ties occur with continuous random data).
    np.testing.assert_array_equal(codes, codes_ref)
    audio = np.asarray(decode(variables, jnp.asarray(codes)))
    assert audio.shape == audio_ref.shape == (2, codes.shape[-1] * 1920)
    np.testing.assert_allclose(audio, audio_ref, atol=1e-4, rtol=0)


def test_encode_latent_matches_moshi(reference):
    """The unquantised 12.5 Hz latent (encoder + transformer + downsample) within 1e-4."""
    model, variables = reference
    x = _audio(1, 24000, seed=3)
    with torch.no_grad():
        emb_ref = model._encode_to_unquantized_latent(torch.from_numpy(x)[:, None]).numpy()
    codec = AmyCodec(CodecConfig())
    emb = codec.apply(variables, x, method=AmyCodec.encode_to_latent)
    assert emb.shape == (1, 13, 512)
    np.testing.assert_allclose(np.asarray(emb), emb_ref.transpose(0, 2, 1), atol=1e-4, rtol=0)


def test_training_forward_shapes_and_trim(reference):
    """1 s input: padded 24960 -> 13 frames -> 9 codes -> decoded 24960 -> trimmed 24000."""
    _, variables = reference
    codec = AmyCodec(CodecConfig())
    x = _audio(2, 24000, seed=5)
    out, updated = jax.jit(
        lambda v, a: codec.apply(
            v, a, train=True, mutable=["codebooks"], rngs={"quantizer": jax.random.PRNGKey(0)}
        )
    )(variables, x)
    assert out.audio.shape == (2, 24000)
    assert out.codes.shape == (2, 9, 13)
    assert out.quantized.first.x.shape == out.quantized.rest.x.shape == (2, 13, 512)
    # Training-mode codes equal eval-mode codes (same pre-update centroids).
    codes_eval = codec.apply(variables, x, method=AmyCodec.encode)
    np.testing.assert_array_equal(np.asarray(out.codes), np.asarray(codes_eval))
    # EMA moved the active codebooks and left the idle slots alone.
    before = variables["codebooks"]["quantizer"]["rvq_rest"]
    after = updated["codebooks"]["quantizer"]["rvq_rest"]
    assert not np.allclose(before["layers_0"]["cluster_usage"], after["layers_0"]["cluster_usage"])
    np.testing.assert_array_equal(
        before["layers_20"]["embedding_sum"], after["layers_20"]["embedding_sum"]
    )
