"""Pure metric functions of the codec evaluation (``amylm_jax.evaluate``), numpy on the host.

Every function takes plain arrays and returns plain numbers, so each one can be checked
against a hand-computed value. The exact definitions (the evaluation JSON repeats them under
``settings``):

* **SI-SDR** (dB): both signals made zero-mean, target ``s = <x̂, x> x / |x|^2``,
  ``10 log10(|s|^2 / |x̂ - s|^2)`` (Le Roux et al. 2019).
* **Mel distance**: mean ``|log10(max(M_ref, 1e-5)) - log10(max(M_est, 1e-5))|`` over
  frames and bands of magnitude mel spectrograms: periodic Hann window, ``n_fft = win =
  1024``, ``hop = 256``, centred frames (zero padding of ``n_fft / 2`` per side), 80 HTK
  triangular mel bands (no area normalisation) over 0-12 kHz, 24 kHz audio.
* **Multi-scale STFT distance**: mean over ``n_fft in (2048, 1024, 512, 256, 128, 64)``
  (``win = n_fft``, ``hop = n_fft / 4``, same framing) of the mean
  ``|log10(max(|X_ref|, 1e-5)) - log10(max(|X_est|, 1e-5))|`` over frames and bins.
* **STOI**: ``pystoi.stoi(ref, est, 24000)`` (classic, not extended; pystoi resamples to
  10 kHz itself).
* **PESQ**: ``pesq.pesq(16000, ref, est, "wb")`` after resampling both to 16 kHz with soxr.
* **Codebook usage / entropy** over the evaluated codes: fraction of the ``bins`` codes used
  at least once, and the entropy of the code histogram divided by ``log(bins)``.
* **Bitrate**: ``n_codebooks * log2(bins) * frame_rate`` bits per second.
* **WER**: corpus WER ``sum(S + D + I) / sum(N_ref)`` with a word-level Levenshtein distance
  after :func:`normalize_text`.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from amylm_jax.data.audio import resample
from amylm_jax.losses.spectral import hann_window, mel_filterbank

EPS_LOG = 1e-5
MEL_N_FFT, MEL_HOP, MEL_BANDS, MEL_FMIN, MEL_FMAX = 1024, 256, 80, 0.0, 12000.0
STFT_N_FFTS = (2048, 1024, 512, 256, 128, 64)
PESQ_RATE = 16000


#: Per-clip signal metrics of every decode variant, in report order.
METRICS = ("si_sdr", "mel_distance", "stft_distance", "stoi", "pesq")


def settings() -> dict[str, Any]:
    """The metric parameters, written into every result."""
    return {
        "si_sdr": "zero-mean, scale-invariant, dB; clip mean",
        "mel_distance": {
            "definition": "mean |log10(max(mel_ref,1e-5)) - log10(max(mel_est,1e-5))|",
            "n_fft": MEL_N_FFT,
            "win_length": MEL_N_FFT,
            "hop_length": MEL_HOP,
            "n_mels": MEL_BANDS,
            "f_min": MEL_FMIN,
            "f_max": MEL_FMAX,
            "window": "periodic hann, centred frames (zero padded)",
            "mel": "HTK triangular filters, no area normalisation, magnitude spectrogram",
        },
        "stft_distance": {
            "definition": "mean over scales of mean |log10(max(|X_ref|,1e-5)) - log10(...)|",
            "n_ffts": list(STFT_N_FFTS),
            "hop_length": "n_fft / 4",
            "win_length": "n_fft",
        },
        "stoi": "pystoi.stoi(ref, est, 24000), classic (internally 10 kHz)",
        "pesq": "pesq wideband at 16 kHz (soxr HQ resampling)",
        "codebook_usage": "fraction of codes used at least once on the evaluated frames",
        "codebook_entropy": "entropy of the code histogram / log(bins)",
        "codebook_ema_usage": "fraction of codes with EMA cluster_usage > 0.1 x mean",
        "bitrate_bps": "n_codebooks * log2(bins) * frame_rate",
        "wer": "corpus (S+D+I)/N_ref after lower-casing and punctuation stripping",
    }


# ------------------------------------------------------------------------------- waveforms
def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, np.float64).reshape(-1)
    est = np.asarray(est, np.float64).reshape(-1)
    if ref.shape != est.shape:
        raise ValueError(f"reference and estimate differ in length: {ref.shape} vs {est.shape}")
    if ref.size == 0:
        raise ValueError("empty signals")
    return ref, est


def si_sdr(ref: np.ndarray, est: np.ndarray, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB of ``est`` against ``ref`` (both zero-meaned first).

    A silent reference gives ``-inf`` dB unless the estimate is silent too (``nan`` then:
    nothing to measure); callers average finite values only.
    """
    ref, est = _pair(ref, est)
    ref = ref - ref.mean()
    est = est - est.mean()
    energy = float(np.dot(ref, ref))
    if energy <= eps:
        return float("nan") if float(np.dot(est, est)) <= eps else float("-inf")
    target = (np.dot(est, ref) / energy) * ref
    noise = est - target
    t, n = float(np.dot(target, target)), float(np.dot(noise, noise))
    if n <= 0.0:
        return float("inf")
    if t <= 0.0:
        return float("-inf")
    return 10.0 * math.log10(t / n)


def stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``|STFT|`` ``[frames, n_fft // 2 + 1]``: periodic Hann, centred (zero padded), float64."""
    x = np.asarray(x, np.float64).reshape(-1)
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    m = 1 + (x.size - n_fft) // hop
    idx = np.arange(m)[:, None] * hop + np.arange(n_fft)[None, :]
    frames = x[idx] * hann_window(n_fft).astype(np.float64)
    return np.abs(np.fft.rfft(frames, axis=-1))


def log_mel(x: np.ndarray, sample_rate: int = 24000) -> np.ndarray:
    """``log10(max(mel, 1e-5))`` of the magnitude mel spectrogram (parameters above)."""
    fb = mel_filterbank(sample_rate, MEL_N_FFT, MEL_BANDS, MEL_FMIN, MEL_FMAX)
    mel = stft_magnitude(x, MEL_N_FFT, MEL_HOP) @ fb.astype(np.float64)
    return np.log10(np.maximum(mel, EPS_LOG))


def mel_distance(ref: np.ndarray, est: np.ndarray, sample_rate: int = 24000) -> float:
    """Mean L1 between log-mel spectrograms (0 for identical signals)."""
    ref, est = _pair(ref, est)
    return float(np.mean(np.abs(log_mel(ref, sample_rate) - log_mel(est, sample_rate))))


def stft_distance(ref: np.ndarray, est: np.ndarray, n_ffts: Sequence[int] = STFT_N_FFTS) -> float:
    """Mean over scales of the mean L1 between log-magnitude STFTs (0 for identical signals)."""
    ref, est = _pair(ref, est)
    total = 0.0
    for n_fft in n_ffts:
        a = np.log10(np.maximum(stft_magnitude(ref, n_fft, n_fft // 4), EPS_LOG))
        b = np.log10(np.maximum(stft_magnitude(est, n_fft, n_fft // 4), EPS_LOG))
        total += float(np.mean(np.abs(a - b)))
    return total / len(n_ffts)


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int = 24000) -> tuple[float | None, str]:
    """``(STOI, "")`` or ``(None, reason)`` when pystoi is missing or cannot score the pair."""
    try:
        from pystoi import stoi as _stoi  # optional (the eval extra)
    except ImportError:
        return None, "pystoi not installed (pip install pystoi)"
    ref, est = _pair(ref, est)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(ref, est, sample_rate, extended=False))
    if caught:  # pystoi warns (and returns 1e-5) when too few non-silent frames remain
        return None, f"pystoi: {caught[0].message}"
    if not math.isfinite(value):
        return None, "pystoi returned a non-finite value"
    return value, ""


def pesq_wb(ref: np.ndarray, est: np.ndarray, sample_rate: int = 24000) -> tuple[float | None, str]:
    """Wideband PESQ at 16 kHz: ``(value, "")`` or ``(None, reason)``."""
    try:
        from pesq import pesq as _pesq  # optional (the eval extra)
    except ImportError:
        return None, "pesq not installed (pip install pesq)"
    ref, est = _pair(ref, est)
    if not np.any(ref):
        return None, "pesq: silent reference (nothing to score)"
    r = resample(ref.astype(np.float32), sample_rate, PESQ_RATE).astype(np.float64)
    e = resample(est.astype(np.float32), sample_rate, PESQ_RATE).astype(np.float64)
    try:
        value = float(_pesq(PESQ_RATE, r, e, "wb"))
    except Exception as err:  # pesq raises its own types (NoUtterancesError, ...)
        return None, f"pesq: {type(err).__name__}: {err}"
    return value, ""


# ------------------------------------------------------------------------------- codes
def codebook_stats(codes_KxT: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per codebook: (usage = fraction of codes used at least once, entropy / log(bins)).

    ``codes_KxT`` holds every evaluated frame (clips concatenated along T).
    """
    codes = np.asarray(codes_KxT)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [K, T], got {codes.shape}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    usage = np.zeros(codes.shape[0])
    entropy = np.zeros(codes.shape[0])
    if codes.shape[1] == 0:
        return usage, entropy
    for k, row in enumerate(codes):
        hist = np.bincount(row.astype(np.int64), minlength=bins)[:bins]
        usage[k] = np.count_nonzero(hist) / bins
        p = hist[hist > 0] / hist.sum()
        entropy[k] = float(-(p * np.log(p)).sum() / math.log(bins)) + 0.0  # no -0.0
    return usage, entropy


def bitrate(n_codebooks: int, bins: int, frame_rate: float) -> float:
    """Bits per second of ``n_codebooks`` codebooks of ``bins`` codes at ``frame_rate`` Hz."""
    return n_codebooks * math.log2(bins) * frame_rate


# ------------------------------------------------------------------------------- WER
_TAG = re.compile(r"<[^<>\s]*>")  # GigaSpeech-style <COMMA>, <SIL>, ...
_APOSTROPHES = "'\u2019\u2018\u02bc"


def normalize_text(text: str) -> list[str]:
    """Lower-cased words without punctuation.

    Angle-bracket tags (``<COMMA>``, ``<SIL>``) are dropped, apostrophes are removed inside
    words (``don't`` -> ``dont``), every other punctuation or symbol character separates words
    (``well-known`` -> ``well known``).
    """
    text = _TAG.sub(" ", unicodedata.normalize("NFKC", text)).lower()
    chars = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        cat = unicodedata.category(ch)
        chars.append(" " if cat[0] in "PSZC" else ch)
    return "".join(chars).split()


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum word-level Levenshtein alignment."""
    n, m = len(ref), len(hyp)
    # cost[j] = (edits, S, D, I) for ref[:i] vs hyp[:j]; ties prefer fewer edits, then S.
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            e, s, d, ins = prev[j - 1]
            if ref[i - 1] == hyp[j - 1]:
                best = (e, s, d, ins)
            else:
                best = (e + 1, s + 1, d, ins)
            e, s, d, ins = prev[j]
            if e + 1 < best[0]:
                best = (e + 1, s, d + 1, ins)
            e, s, d, ins = cur[j - 1]
            if e + 1 < best[0]:
                best = (e + 1, s, d, ins + 1)
            cur.append(best)
        prev = cur
    _, s, d, ins = prev[m]
    return s, d, ins


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus WER over pairs of raw strings (normalised here); references must hold words."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    s = d = ins = n = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = normalize_text(ref), normalize_text(hyp)
        es, ed, ei = word_errors(r, h)
        s, d, ins, n = s + es, d + ed, ins + ei, n + len(r)
    if n == 0:
        raise ValueError("the references hold no words")
    return {
        "wer": (s + d + ins) / n,
        "substitutions": s,
        "deletions": d,
        "insertions": ins,
        "reference_words": n,
    }
