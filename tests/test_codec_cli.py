"""`python -m amylm_jax.codec` on real files with moshi-imported (Kyutai-layout) weights.

The weights file is moshi's random-weight Mimi (32 slots, Kyutai's layout) with random,
initialised codebooks. Imported into Amy's 33-slot model, the prosody slot 1 is missing and
stays uninitialised: its centroids are all zero, every code ties and the lowest index (0)
wins, contributing nothing. So our 9-codebook decode(encode(x)) must equal moshi's own
8-codebook decode(encode(x)).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from amylm_jax.codec import main  # noqa: E402
from amylm_jax.data.audio import load_audio, resample  # noqa: E402
from amylm_jax.reference.mimi import randomize_codebooks  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]


@pytest.fixture(scope="module")
def kyutai(tmp_path_factory):
    from moshi.models.loaders import get_mimi
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = get_mimi(None, device="cpu", num_codebooks=8)
    gen = torch.Generator().manual_seed(1)
    randomize_codebooks(model.quantizer, gen)
    path = tmp_path_factory.mktemp("weights") / "mimi.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), path


def _moshi_roundtrip(model, audio_24k: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(audio_24k)[None, None])
        return model.decode(codes).numpy()[0, 0, : audio_24k.shape[0]]


def _speechlike(rate: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave = mono[:, None] + 0.02 * rng.standard_normal((t.size, channels))
    return wave.astype(np.float32)


@pytest.mark.parametrize("rate,channels", [(16000, 2), (24000, 1)])
def test_encode_decode_equals_moshi(kyutai, tmp_path, rate, channels):
    model, weights = kyutai
    wav = tmp_path / "in.wav"
    sf.write(wav, _speechlike(rate, 1.3, channels, seed=rate), rate, subtype="FLOAT")
    npz, out = tmp_path / "codes.npz", tmp_path / "out.wav"
    assert main(["encode", f"--weights={weights}", str(wav), str(npz)]) == 0
    with np.load(npz) as data:
        codes, n = data["codes"], int(data["num_samples"])
        assert codes.shape == (9, -(-n // 1920)) and codes.dtype == np.int32
        assert int(data["orig_sample_rate"]) == rate
    assert np.all(codes[1] == 0)  # the uninitialised prosody slot: all ties -> code 0
    assert main(["decode", f"--weights={weights}", str(npz), str(out)]) == 0
    decoded, out_rate = sf.read(out, dtype="float32")
    assert out_rate == 24000 and decoded.shape == (n,)
    wave, src_rate = load_audio(str(wav))
    reference = _moshi_roundtrip(model, resample(wave, src_rate, 24000))
    # The wav is 16-bit PCM: compare within its quantisation step plus the 1e-4 parity bound.
    np.testing.assert_allclose(decoded, np.clip(reference, -1, 1), atol=1e-4 + 1 / 32767)


def test_swap_takes_content_codes_from_one_file(kyutai, tmp_path):
    model, weights = kyutai
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, _speechlike(24000, 1.0, 1, seed=1), 24000)
    sf.write(b, _speechlike(24000, 1.5, 1, seed=2) * 0.5, 24000)
    za, zb = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["encode", f"--weights={weights}", str(a), str(za)]) == 0
    assert main(["encode", f"--weights={weights}", str(b), str(zb)]) == 0
    out = tmp_path / "swap.wav"
    args = ["swap", f"--weights={weights}", f"--content={za}", f"--voice={zb}", str(out)]
    assert main(args) == 0
    with np.load(za) as da, np.load(zb) as db:
        ca, cb = da["codes"], db["codes"]
    t = min(ca.shape[1], cb.shape[1])
    mixed = np.concatenate([ca[:1, :t], cb[1:, :t]])
    # Same decode as moshi for the mixed codes (slot 1 is silent, so drop it for moshi).
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(np.delete(mixed, 1, axis=0))[None]).numpy()[0, 0]
    swapped, _ = sf.read(out, dtype="float32")
    assert swapped.shape == (24000,)
    np.testing.assert_allclose(swapped, np.clip(ref[:24000], -1, 1), atol=1e-4 + 1 / 32767)


def test_bad_inputs_give_clear_errors(kyutai, tmp_path, capsys):
    _, weights = kyutai
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), 24000)
    assert main(["encode", f"--weights={weights}", str(empty), str(tmp_path / "x.npz")]) == 2
    assert "empty" in capsys.readouterr().err
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file")
    assert main(["encode", f"--weights={weights}", str(junk), str(tmp_path / "x.npz")]) == 2
    assert "junk.wav" in capsys.readouterr().err
    assert main(["decode", f"--weights={weights}", str(tmp_path / "none.npz"), "o.wav"]) == 2
    assert "not found" in capsys.readouterr().err
    missing = tmp_path / "missing.safetensors"
    assert main(["encode", f"--weights={missing}", str(junk), str(tmp_path / "x.npz")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
