"""STFT, mel filterbanks and the multi-scale mel-spectrogram loss "msspec" (docs/original.md §6.1).

The original computes these with ``torchaudio`` (``Spectrogram`` / ``MelSpectrogram`` with
``center=False``); here they are written out explicitly so every step is visible and the
arithmetic is always float32, whatever dtype the audio arrives in (a bf16 policy must never
reach an FFT).

The STFT is split into two small functions, :func:`frame` (how windows are cut out of the
signal) and :func:`rfft_frames` (how one-sided spectra are computed from windows), so other
formulations (strided reshapes, a DFT as a matmul) can be benchmarked per backend without
touching the callers. The discriminator (``amylm_jax.models.discriminator``) uses the same
:func:`stft`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import librosa
import numpy as np

RfftMethod = Literal["fft", "matmul"]


def hann_window(win_length: int, n_fft: int | None = None) -> np.ndarray:
    """Periodic Hann window ``0.5 - 0.5 cos(2 pi n / win)`` as float32.

    Matches ``torch.hann_window(win_length)`` (periodic). When ``n_fft > win_length`` the
    window is zero-padded symmetrically to ``n_fft``, as ``torch.stft`` does.
    """
    n = np.arange(win_length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    if n_fft is not None and n_fft > win_length:
        left = (n_fft - win_length) // 2
        w = np.pad(w, (left, n_fft - win_length - left))
    return w.astype(np.float32)


def num_frames(length: int, n_fft: int, hop: int) -> int:
    """Number of ``center=False`` frames: ``1 + floor((N - n_fft) / hop)``."""
    return 1 + (length - n_fft) // hop


def frame(x_BxN: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """Cut ``[B, N]`` into overlapping windows ``[B, M, n_fft]`` (no padding).

    When ``hop`` divides ``n_fft`` (every STFT here: hop = n_fft / 4) the frames are built from
    ``n_fft / hop`` shifted slices of a ``[B, M + r - 1, hop]`` block view: slices and a
    concatenation, whose backward is a cheap pad-and-add. The general case uses a gather,
    whose backward is a scatter-add (slow on CPU and large as an HLO constant).
    """
    b, n = x_BxN.shape
    m = num_frames(n, n_fft, hop)
    if m < 1:
        raise ValueError(f"signal of {n} samples is shorter than n_fft={n_fft}")
    if n_fft % hop == 0:
        r = n_fft // hop
        blocks = x_BxN[:, : (m + r - 1) * hop].reshape(b, m + r - 1, hop)
        return jnp.concatenate([blocks[:, i : i + m] for i in range(r)], axis=-1)
    idx = np.arange(m)[:, None] * hop + np.arange(n_fft)[None, :]
    return x_BxN[:, idx]


@functools.cache
def _dft_matrices(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of the one-sided DFT matrix ``[n_fft, n_fft // 2 + 1]``."""
    n = np.arange(n_fft)[:, None]
    f = np.arange(n_fft // 2 + 1)[None, :]
    angle = 2.0 * np.pi * ((n * f) % n_fft) / n_fft
    return np.cos(angle).astype(np.float32), (-np.sin(angle)).astype(np.float32)


def rfft_frames(frames: jax.Array, method: RfftMethod = "fft") -> jax.Array:
    """One-sided spectra of windowed frames ``[..., n_fft] -> complex64 [..., n_fft//2 + 1]``.

    ``"fft"`` uses ``jnp.fft.rfft``; ``"matmul"`` multiplies by the DFT matrix at HIGHEST
    precision (can be faster for small ``n_fft`` on matrix units). Both are float32.
    """
    frames = frames.astype(jnp.float32)
    if method == "fft":
        return jnp.fft.rfft(frames, axis=-1).astype(jnp.complex64)
    if method == "matmul":
        cos, sin = _dft_matrices(frames.shape[-1])
        hi = jax.lax.Precision.HIGHEST
        re = jnp.matmul(frames, cos, precision=hi)
        im = jnp.matmul(frames, sin, precision=hi)
        return jax.lax.complex(re, im)
    raise ValueError(f"unknown rfft method {method!r}")


def stft(
    x_BxN: jax.Array,
    n_fft: int,
    hop: int,
    win_length: int | None = None,
    normalized: bool = True,
    method: RfftMethod = "fft",
) -> jax.Array:
    """Complex STFT ``[B, N] -> complex64 [B, M, n_fft // 2 + 1]`` (frames first).

    ``center=False`` (no padding), periodic Hann window, one-sided. ``normalized=True`` is the
    torchaudio *window* normalisation ``X / sqrt(sum w^2)`` (not ``torch.stft``'s
    ``1/sqrt(n_fft)``). Always computed in float32.
    """
    win_length = n_fft if win_length is None else win_length
    window = hann_window(win_length, n_fft)
    frames = frame(x_BxN.astype(jnp.float32), n_fft, hop) * window
    spec = rfft_frames(frames, method)
    if normalized:
        spec = spec / np.float32(math.sqrt(float(np.sum(window.astype(np.float64) ** 2))))
    return spec


@functools.cache
def _mel_filterbank_cached(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    with warnings.catch_warnings():  # empty filters at small n_fft are intended (see below)
        warnings.simplefilter("ignore", UserWarning)
        fb = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=True, norm=None
        )
    fb = np.ascontiguousarray(fb.T.astype(np.float32))
    fb.setflags(write=False)
    return fb


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None = None
) -> np.ndarray:
    """Triangular HTK mel filters without area normalisation, float32 ``[n_fft//2 + 1, n_mels]``.

    Equal to torchaudio's ``melscale_fbanks(..., norm=None, mel_scale="htk")`` used by the
    original. Empty (all-zero) filters at small ``n_fft`` are kept: they dilute the loss means
    exactly as in the original. The returned array is read-only (cached).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    return _mel_filterbank_cached(sample_rate, n_fft, n_mels, float(f_min), float(f_max))


@dataclasses.dataclass(frozen=True)
class MelLossConfig:
    """The trainer's ``MultiScaleMelSpectrogramLoss`` arguments (docs/original.md §6.1 REF values).

    Scales ``i = range_start .. range_end - 1`` use ``n_fft = win = 2**i``, ``hop = n_fft//4``.
    ``normalized`` both turns on window normalisation and divides by ``sum(alpha + 1)``;
    ``alphas=True`` weights the log-MSE of scale i by ``sqrt(n_fft - 1)``.
    """

    sample_rate: int = 24000
    range_start: int = 6
    range_end: int = 11
    n_mels: int = 64
    f_min: float = 64.0
    f_max: float | None = None
    normalized: bool = True
    alphas: bool = False
    floor: float = 1e-5

    @property
    def n_ffts(self) -> tuple[int, ...]:
        return tuple(2**i for i in range(self.range_start, self.range_end))

    @property
    def log_weights(self) -> tuple[float, ...]:
        if self.alphas:
            return tuple(math.sqrt(n - 1) for n in self.n_ffts)
        return tuple(1.0 for _ in self.n_ffts)


def _pad_for_msspec(x_BxN: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """Reflect-pad by ``(n_fft - hop) // 2`` per side, then zero-pad right to a full last frame.

    The right zero pad is audiocraft's ``pad_for_conv1d`` rule; together they give
    ``ceil(N / hop)`` frames.
    """
    p = (n_fft - hop) // 2
    x = jnp.pad(x_BxN, ((0, 0), (p, p)), mode="reflect")
    length = x.shape[-1]
    n = (length - n_fft) / hop + 1
    extra = (math.ceil(n) - 1) * hop + n_fft - length
    if extra > 0:
        x = jnp.pad(x, ((0, 0), (0, extra)))
    return x


def mel_spectrogram(
    x_BxN: jax.Array, n_fft: int, cfg: MelLossConfig, method: RfftMethod = "fft"
) -> jax.Array:
    """Linear mel spectrogram ``[B, M, n_mels]`` of one msspec scale (float32)."""
    hop = n_fft // 4
    x = _pad_for_msspec(x_BxN.astype(jnp.float32), n_fft, hop)
    spec = stft(x, n_fft, hop, n_fft, normalized=cfg.normalized, method=method)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    fb = mel_filterbank(cfg.sample_rate, n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    return jnp.matmul(power, fb, precision=jax.lax.Precision.HIGHEST)


def msspec_loss(
    x_BxN: jax.Array,
    y_BxN: jax.Array,
    cfg: MelLossConfig = MelLossConfig(),
    method: RfftMethod = "fft",
) -> jax.Array:
    """Multi-scale mel loss between generated ``x`` and real ``y`` (docs/original.md §6.1), float32
    scalar.

    ``sum_scales [mean|mel_x - mel_y| + alpha * mean (log10(floor + mel_x) - log10(floor +
    mel_y))^2]``, divided by ``sum(alpha + 1)`` when ``cfg.normalized``. Means run over all
    ``B x n_mels x frames`` elements, empty filters included.
    """
    loss = jnp.zeros((), jnp.float32)
    for n_fft, alpha in zip(cfg.n_ffts, cfg.log_weights, strict=True):
        mx = mel_spectrogram(x_BxN, n_fft, cfg, method)
        my = mel_spectrogram(y_BxN, n_fft, cfg, method)
        l1 = jnp.mean(jnp.abs(mx - my))
        lx = jnp.log10(cfg.floor + mx)
        ly = jnp.log10(cfg.floor + my)
        loss = loss + l1 + alpha * jnp.mean((lx - ly) ** 2)
    if cfg.normalized:
        loss = loss / sum(a + 1.0 for a in cfg.log_weights)
    return loss
