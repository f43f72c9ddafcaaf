"""Tests of audio loading / resampling: formats, downmix, rates, and clear errors."""

import numpy as np
import pytest
import soundfile as sf

from amylm_jax.data import audio


def _tone(rate, seconds=0.5, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_load_formats_stereo_downmix(tmp_path, fmt, subtype):
    left = _tone(16000)
    stereo = np.stack([left, 0.5 * left], axis=1)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, stereo, 16000, format=fmt, subtype=subtype)
    wave, rate = audio.load_audio(path)
    assert rate == 16000 and wave.ndim == 1 and wave.dtype == np.float32
    tol = 0.05 if fmt == "OGG" else 1e-3
    assert abs(len(wave) - len(left)) <= 1024
    np.testing.assert_allclose(wave[:1000], 0.75 * left[:1000], atol=tol)
    same, _ = audio.load_audio(path.read_bytes())
    np.testing.assert_array_equal(same, wave)


def test_resample_rates_and_content():
    tone = _tone(16000, seconds=1.0)
    out = audio.resample(tone, 16000, 24000)
    assert abs(len(out) - 24000) <= 1
    ref = _tone(24000, seconds=1.0)
    np.testing.assert_allclose(out[500:-500], ref[500:-500], atol=2e-3)
    np.testing.assert_array_equal(audio.resample(tone, 16000, 16000), tone)


def test_load_resampled_from_source_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(48000, seconds=0.5), 48000, subtype="FLOAT")
    waves = audio.load_resampled(path)
    assert sorted(waves) == [16000, 24000]
    assert abs(len(waves[16000]) - 8000) <= 1 and abs(len(waves[24000]) - 12000) <= 1


def test_int16_round_trip():
    wave = np.array([0.0, 0.5, -0.5, 1.2, -1.5], np.float32)
    pcm = audio.to_int16(wave)
    assert pcm.dtype == np.int16 and pcm[3] == 32767 and pcm[4] == -32767
    np.testing.assert_allclose(audio.int16_to_float(pcm)[:3], wave[:3], atol=1e-4)


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(audio.AudioError, match="nope.wav: audio file not found"):
        audio.load_audio(missing)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(audio.AudioError, match="junk.wav: cannot read audio"):
        audio.load_audio(junk)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), 16000)
    with pytest.raises(audio.AudioError, match="empty.wav: audio is empty"):
        audio.load_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="nan.wav: audio contains NaN"):
        audio.load_audio(nan)
