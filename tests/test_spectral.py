"""STFT, mel filterbank and msspec loss: counts from docs/original.md §6.1 and parity with
PyTorch."""

import dataclasses

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import torch

from amylm_jax.losses.spectral import (
    MelLossConfig,
    hann_window,
    mel_filterbank,
    mel_spectrogram,
    msspec_loss,
    stft,
)
from amylm_jax.reference.torch_losses import torch_mel_filterbank, torch_msspec_loss, torch_stft

N_FFTS = (64, 128, 256, 512, 1024)


def _audio(rng, b=2, n=24000, scale=0.3):
    return (scale * rng.standard_normal((b, n))).astype(np.float32)


def test_hann_window_is_torch_periodic():
    for n in (64, 1024):
        ref = torch.hann_window(n, dtype=torch.float64).numpy()
        np.testing.assert_allclose(hann_window(n), ref, atol=1e-7)


@pytest.mark.parametrize("n_fft", N_FFTS)
def test_mel_filterbank_matches_librosa_and_torchaudio_formula(n_fft):
    fb = mel_filterbank(24000, n_fft, 64, 64.0)
    assert fb.shape == (n_fft // 2 + 1, 64) and fb.dtype == np.float32
    ref = librosa.filters.mel(sr=24000, n_fft=n_fft, n_mels=64, fmin=64, fmax=12000, htk=True)
    lib = librosa.filters.mel(
        sr=24000, n_fft=n_fft, n_mels=64, fmin=64, fmax=12000, htk=True, norm=None
    )
    assert np.abs(ref.T - fb).max() > 1e-3  # the default (Slaney area norm) is *not* what we use
    assert np.abs(lib.T - fb).max() <= 1e-6
    ta = torch_mel_filterbank(24000, n_fft, 64, 64.0).numpy()
    assert np.abs(ta - fb).max() <= 1e-6


def test_empty_filter_counts():
    counts = [int(np.sum(mel_filterbank(24000, n, 64, 64.0).max(axis=0) == 0)) for n in N_FFTS]
    assert counts == [21, 9, 1, 0, 0]


def test_msspec_frame_counts_for_one_second():
    cfg = MelLossConfig()
    x = jax.ShapeDtypeStruct((2, 24000), jnp.float32)
    frames = [jax.eval_shape(lambda a, n=n: mel_spectrogram(a, n, cfg), x).shape for n in N_FFTS]
    assert frames == [(2, m, 64) for m in (1500, 750, 375, 188, 94)]


@pytest.mark.parametrize("method", ["fft", "matmul"])
def test_stft_matches_torch_and_direct_formula(rng, method):
    x = _audio(rng, 2, 3000)
    n_fft, hop = 256, 64
    got = np.asarray(stft(jnp.asarray(x), n_fft, hop, n_fft, normalized=True, method=method))
    assert got.dtype == np.complex64
    ref = torch_stft(torch.from_numpy(x), n_fft, hop, n_fft).numpy().transpose(0, 2, 1)
    assert got.shape == ref.shape == (2, 1 + (3000 - n_fft) // hop, n_fft // 2 + 1)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # direct float64 DFT of frame 3, window-normalised
    w = hann_window(n_fft).astype(np.float64)
    seg = x[:, 3 * hop : 3 * hop + n_fft].astype(np.float64) * w
    f = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), f) / n_fft)
    np.testing.assert_allclose(got[:, 3], seg @ dft / np.sqrt(np.sum(w**2)), atol=1e-4)


def test_stft_runs_in_float32_for_bf16_input(rng):
    x = jnp.asarray(_audio(rng, 1, 2048)).astype(jnp.bfloat16)
    spec = stft(x, 512, 128)
    assert spec.dtype == jnp.complex64
    ref = stft(x.astype(jnp.float32), 512, 128)
    np.testing.assert_array_equal(np.asarray(spec), np.asarray(ref))


def test_msspec_of_identical_signals_is_zero(rng):
    x = jnp.asarray(_audio(rng))
    assert float(jax.jit(msspec_loss)(x, x)) == 0.0


@pytest.mark.parametrize("alphas", [False, True])
def test_msspec_matches_torch(rng, alphas):
    x, y = _audio(rng), _audio(rng, scale=0.2)
    cfg = dataclasses.replace(MelLossConfig(), alphas=alphas)
    got = float(jax.jit(lambda a, b: msspec_loss(a, b, cfg))(x, y))
    ref = float(
        torch_msspec_loss(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], alphas=alphas)
    )
    assert got > 0.1
    assert abs(got - ref) <= 1e-4 * max(1.0, abs(ref)), (got, ref)


def test_msspec_mel_spectrogram_matches_torch_per_scale(rng):
    from amylm_jax.reference.torch_losses import torch_mel_spectrogram

    x = _audio(rng, 1, 6000)
    cfg = MelLossConfig()
    for n_fft in N_FFTS:
        got = np.asarray(mel_spectrogram(jnp.asarray(x), n_fft, cfg))
        ref = torch_mel_spectrogram(torch.from_numpy(x)[:, None], n_fft).numpy().transpose(0, 2, 1)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_msspec_is_differentiable_and_matmul_stft_agrees(rng):
    x, y = jnp.asarray(_audio(rng, 1, 8000)), jnp.asarray(_audio(rng, 1, 8000))
    g = jax.jit(jax.grad(msspec_loss))(x, y)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
    a = float(jax.jit(msspec_loss)(x, y))
    b = float(jax.jit(lambda p, q: msspec_loss(p, q, method="matmul"))(x, y))
    assert abs(a - b) <= 1e-4 * abs(a)
