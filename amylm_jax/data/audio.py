"""Audio loading and resampling for the offline feature pipeline.

Every clip is read once, downmixed to mono and resampled with soxr (high quality) to the two
rates the system needs: 16 kHz for WavLM and 24 kHz for the codec. Unreadable, empty or
non-finite audio raises :class:`AudioError` naming the file, so a bad clip is either reported
or skipped by the caller, never silently turned into silence.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf
import soxr

from amylm_jax import paths

CODEC_RATE = 24000
WAVLM_RATE = 16000


class AudioError(ValueError):
    """A clip's audio cannot be used (unreadable, empty, too short, non-finite)."""


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Downmix ``[N]`` or ``[N, C]`` audio to mono float32 by averaging channels."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1:
        raise AudioError(f"audio must be [N] or [N, channels], got shape {wave.shape}")
    return wave


def check_wave(wave: np.ndarray, name: str) -> np.ndarray:
    """Reject empty or non-finite audio with an error naming ``name``."""
    if wave.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name}: audio contains NaN or Inf samples")
    return wave


def load_audio(
    source: str | os.PathLike | bytes, span: tuple[float, float] | None = None
) -> tuple[np.ndarray, int]:
    """Read any format soundfile reads (path or encoded bytes) as mono float32 and its rate.

    ``span = (offset_s, duration_s)`` reads only that part of the file (a segment of a long
    recording); a span reaching more than 10 ms past the end of the file is an error.
    Errors name the file so a manifest with thousands of clips points at the bad one.
    """
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes) and paths.is_url(name):
        try:
            source = paths.read_bytes(name)
        except FileNotFoundError:
            raise AudioError(f"{name}: audio file not found") from None
    if not isinstance(source, bytes) and not os.path.isfile(name):
        raise AudioError(f"{name}: audio file not found")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else name
        with sf.SoundFile(handle) as f:
            rate = int(f.samplerate)
            if span is None:
                wave = f.read(dtype="float32", always_2d=True)
            else:
                start, count = round(span[0] * rate), round(span[1] * rate)
                if span[0] < 0 or count <= 0 or start + count > f.frames + rate // 100:
                    raise AudioError(
                        f"{name}: segment at {span[0]:.3f} s for {span[1]:.3f} s lies outside "
                        f"the file ({f.frames / rate:.3f} s)"
                    )
                f.seek(start)
                wave = f.read(count, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{name}: cannot read audio ({err})") from err
    except ValueError as err:
        if isinstance(err, AudioError):
            raise
        raise AudioError(f"{name}: cannot read audio ({err})") from err
    return check_wave(to_mono(wave), name), rate


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono float32 audio with soxr's high-quality filter (identity if rates match)."""
    wave = to_mono(wave)
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    if rate_in == rate_out:
        return wave
    return np.asarray(soxr.resample(wave, rate_in, rate_out, quality="HQ"), dtype=np.float32)


def to_int16(wave: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16 PCM (clipped, rounded): the store's audio format."""
    return np.round(np.clip(np.asarray(wave, np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def int16_to_float(pcm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_int16` (up to rounding)."""
    return np.asarray(pcm, dtype=np.float32) / 32767.0


def load_resampled(
    source: str | os.PathLike | bytes,
    rates: tuple[int, ...] = (WAVLM_RATE, CODEC_RATE),
    span: tuple[float, float] | None = None,
) -> dict[int, np.ndarray]:
    """Load once (``span``: a part of the file, see :func:`load_audio`) and resample from the
    source rate to each of ``rates`` (no double resampling)."""
    wave, rate = load_audio(source, span)
    return {r: resample(wave, rate, r) for r in rates}


def write_wav(path: str | os.PathLike, audio: np.ndarray, rate: int = CODEC_RATE) -> None:
    """Write float audio as 16-bit PCM wav to a local path or URL (folders are created)."""
    buf = io.BytesIO()
    wave = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    sf.write(buf, wave, rate, subtype="PCM_16", format="WAV")
    paths.write_bytes(path, buf.getvalue())
