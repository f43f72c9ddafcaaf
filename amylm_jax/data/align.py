"""Frame alignment of teacher features onto the codec's 12.5 Hz grid (docs/original.md §9.1, §9.3).

Two teachers run at their own rates: WavLM at 50 Hz (conv-stack framing of 16 kHz audio) and
the LLM at one row per text token with word-level times. The codec wants one target row per
80 ms frame, so this module turns both into ``[T_full, D]`` arrays computed once per clip:

* WavLM: adaptive average pooling (the collator's ``adaptive_avg_pool1d``), applied to the
  clip's *own* frames — trimming to :func:`wavlm_frame_count` is what fixes defect D1.
* LLM: the collator's prefix-sum interval mean, with the D4 guard (times validated or
  monotonised, ``e_k >= s_k`` clamped) so a bad alignment raises instead of producing a
  negated partial sum.

It also holds the text-side helpers of the offline pipeline: silence injection and the
shared-window token aligner, so extraction and import use one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

FRAME_RATE = 12.5
SILENCE = "<silence>"
# WavLM / wav2vec2 feature-encoder conv stack as (kernel, stride): 16 kHz -> 50 Hz.
WAVLM_CONV_STACK: tuple[tuple[int, int], ...] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
# Float slack when turning a duration into a frame count: L24 / 24000 * 12.5 is not exact in
# binary (e.g. 13440 samples -> 7.000000000000001), and an extra empty frame is a misalignment.
_FRAME_EPS = 1e-9


def full_frame_count(duration_s: float, frame_rate: float = FRAME_RATE) -> int:
    """Frames on the codec grid covering ``duration_s``: ``ceil(duration * frame_rate)``.

    Uses a 1e-9 slack so durations that are exact multiples of the frame length do not gain a
    spurious frame through float rounding (the original's plain ``ceil`` does, rarely).
    """
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration must be a positive finite number of seconds, got {duration_s}")
    return max(1, math.ceil(duration_s * frame_rate - _FRAME_EPS))


def wavlm_frame_count(num_samples_16k: int) -> int:
    """Number of valid WavLM frames for a clip of ``num_samples_16k`` samples at 16 kHz.

    Iterates ``L <- floor((L - k) / s) + 1`` over the conv stack; this is the count the
    extraction must trim each (batch-padded) sequence to (defect D1). Returns 0 for clips
    shorter than the receptive field (400 samples).
    """
    length = int(num_samples_16k)
    for kernel, stride in WAVLM_CONV_STACK:
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def pool_ranges(length: int, n_frames: int) -> np.ndarray:
    """Row index ranges ``[start, stop)`` of adaptive average pooling, shape ``[n_frames, 2]``.

    Frame k averages rows ``floor(k*L/T) .. ceil((k+1)*L/T) - 1`` exactly as PyTorch's
    ``adaptive_avg_pool1d``; exposed so tests and the importer can reason about coverage.
    """
    if length <= 0 or n_frames <= 0:
        raise ValueError(f"pooling needs positive sizes, got length={length} n_frames={n_frames}")
    k = np.arange(n_frames, dtype=np.int64)
    start = (k * length) // n_frames
    stop = -((-(k + 1) * length) // n_frames)  # ceil division
    return np.stack([start, stop], axis=1)


#: How 50 Hz WavLM frames become 12.5 Hz targets (``prepare --wavlm_pooling``).
#: "adaptive": adaptive average pooling of the clip's frames onto its 12.5 Hz frame count
#: (the original's collator). "window": a centred (non-causal) average pool of kernel 8 and
#: stride 4, the pooling Mimi's authors use for their WavLM distillation targets: frame ``t``
#: averages 50 Hz frames ``4t - 2 .. 4t + 5`` (those inside the clip), 160 ms around its own
#: 80 ms.
WAVLM_POOLINGS = ("adaptive", "window")
WINDOW_KERNEL, WINDOW_STRIDE = 8, 4


def window_pool_ranges(length: int, n_frames: int) -> np.ndarray:
    """Row ranges ``[start, stop)`` of the "window" pooling, shape ``[n_frames, 2]``.

    Windows are clipped to the clip's ``length`` frames; a frame whose window falls entirely
    past the end (a clip whose 50 Hz frames stop short of its last 12.5 Hz frame) takes the
    last row.
    """
    if length <= 0 or n_frames <= 0:
        raise ValueError(f"pooling needs positive sizes, got length={length} n_frames={n_frames}")
    pad = (WINDOW_KERNEL - WINDOW_STRIDE) // 2
    start = np.arange(n_frames, dtype=np.int64) * WINDOW_STRIDE - pad
    stop = np.minimum(start + WINDOW_KERNEL, length)
    start = np.clip(start, 0, length - 1)
    stop = np.maximum(stop, start + 1)
    return np.stack([start, stop], axis=1)


def wavlm_to_frames(feats_TxD: np.ndarray, n_frames: int, pooling: str = "adaptive") -> np.ndarray:
    """Average-pool WavLM frames ``[T, D]`` onto ``n_frames`` rows (float32).

    ``pooling`` is one of :data:`WAVLM_POOLINGS`; "adaptive" is the collator's. Callers must
    pass the clip's trimmed frames (D1) so the targets are not time-stretched by batch padding.
    """
    feats = np.asarray(feats_TxD)
    if feats.ndim != 2:
        raise ValueError(f"WavLM features must be [T, D], got shape {feats.shape}")
    if pooling == "adaptive":
        ranges = pool_ranges(feats.shape[0], n_frames)
    elif pooling == "window":
        ranges = window_pool_ranges(feats.shape[0], n_frames)
    else:
        raise ValueError(f"wavlm pooling {pooling!r}: choose one of {', '.join(WAVLM_POOLINGS)}")
    csum = np.concatenate(
        [np.zeros((1, feats.shape[1])), np.cumsum(feats, axis=0, dtype=np.float64)]
    )
    counts = (ranges[:, 1] - ranges[:, 0]).astype(np.float64)[:, None]
    return ((csum[ranges[:, 1]] - csum[ranges[:, 0]]) / counts).astype(np.float32)


def _prepare_times(times: np.ndarray, duration_s: float, repair: bool) -> np.ndarray:
    """Validate token times and resolve the -1 "end of audio" sentinel (D4 guard)."""
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 2 or times.shape[1] != 2:
        raise ValueError(f"token times must be [n_tok, 2], got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError("token times contain NaN or Inf")
    times = times.copy()
    # -1 means "end of audio" (trailing silence); tokens after the last word copy that end
    # into their start, so the sentinel is resolved in both columns.
    times[times == -1.0] = duration_s
    if np.any(times < 0):
        i = int(np.argwhere(times < 0)[0, 0])
        raise ValueError(f"token {i} has a negative time {times[i].tolist()} (only -1 is allowed)")
    # An ASR end a few ms past the last sample is the end of audio, not an ordering error.
    np.minimum(times, duration_s, out=times)
    if repair:
        times[:, 0] = np.maximum.accumulate(times[:, 0])
        times[:, 1] = np.maximum.accumulate(np.maximum(times[:, 1], times[:, 0]))
        return times
    for col, name in ((0, "start"), (1, "end")):
        bad = np.nonzero(np.diff(times[:, col]) < 0)[0]
        if bad.size:
            i = int(bad[0]) + 1
            raise ValueError(
                f"token times out of order: {name} of token {i} ({times[i, col]:.3f}s) is before "
                f"token {i - 1} ({times[i - 1, col]:.3f}s); pass repair=True to monotonise"
            )
    bad = np.nonzero(times[:, 1] < times[:, 0])[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"token times out of order: token {i} ends ({times[i, 1]:.3f}s) before it starts "
            f"({times[i, 0]:.3f}s); pass repair=True to monotonise"
        )
    return times


def llm_token_ranges(
    times_Nx2: np.ndarray, duration_s: float, frame_rate: float = FRAME_RATE, repair: bool = False
) -> np.ndarray:
    """Inclusive token ranges ``[s_k, e_k]`` averaged into each frame, shape ``[T_full, 2]``.

    docs/original.md §9.3 step 5: frame k takes every token from the first one sharing the start of
    the
    window containing the frame start, to the last one sharing the end of the window that
    reaches the frame end. ``e_k`` is clamped to ``>= s_k`` (D4): overlapping windows then give
    the start window instead of a negated partial sum.
    """
    times = _prepare_times(times_Nx2, duration_s, repair)
    n = times.shape[0]
    if n == 0:
        raise ValueError("no LLM tokens to align")
    ts, te = times[:, 0], times[:, 1]
    t_full = full_frame_count(duration_s, frame_rate)
    k = np.arange(t_full, dtype=np.float64)
    g0, g1 = k / frame_rate, (k + 1) / frame_rate
    a = np.clip(np.searchsorted(ts, g0, side="right") - 1, 0, n - 1)
    s = np.searchsorted(ts, ts[a], side="left")
    b = np.clip(np.searchsorted(te, g1, side="left"), 0, n - 1)
    e = np.searchsorted(te, te[b], side="right") - 1
    e = np.maximum(e, s)
    return np.stack([s, e], axis=1).astype(np.int64)


def llm_to_frames(
    feats_NxD: np.ndarray,
    times_Nx2: np.ndarray,
    duration_s: float,
    frame_rate: float = FRAME_RATE,
    repair: bool = False,
) -> np.ndarray:
    """Interval-mean LLM token features onto the ``[T_full, D]`` frame grid (float32).

    ``times`` are per-token ``[start, end]`` seconds with -1 meaning end of audio. Times out
    of order raise ``ValueError`` unless ``repair=True``, which monotonises them (running max
    of starts and ends, ends clamped to starts): a wrong alignment is never silently used.
    """
    feats = np.asarray(feats_NxD)
    if feats.ndim != 2:
        raise ValueError(f"LLM features must be [n_tok, D], got shape {feats.shape}")
    if np.asarray(times_Nx2).shape[0] != feats.shape[0]:
        raise ValueError(
            f"LLM features have {feats.shape[0]} tokens but times have "
            f"{np.asarray(times_Nx2).shape[0]}"
        )
    ranges = llm_token_ranges(times_Nx2, duration_s, frame_rate, repair)
    csum = np.concatenate(
        [np.zeros((1, feats.shape[1])), np.cumsum(feats, axis=0, dtype=np.float64)]
    )
    s, e = ranges[:, 0], ranges[:, 1]
    counts = (e - s + 1).astype(np.float64)[:, None]
    return ((csum[e + 1] - csum[s]) / counts).astype(np.float32)


def word_text(word: Mapping) -> str:
    """Text of one alignment entry; the original uses ``text`` where we use ``word``."""
    text = word.get("word", word.get("text"))
    if text is None:
        raise ValueError(f"alignment entry has neither 'word' nor 'text': {dict(word)}")
    return str(text)


def inject_silence(words: Sequence[Mapping]) -> list[dict]:
    """Insert ``<silence>`` entries into a word alignment exactly as docs/original.md §9.1 step 1.

    Words are sorted by start; any positive gap after the running end gets a silence entry;
    a trailing silence with end -1 ("end of audio") is always appended. The LLM sees this text
    (D11: ``<silence>`` is plain text to it), so parity needs the same rule.
    """
    entries = [
        {"word": word_text(w), "start": float(w["start"]), "end": float(w["end"])} for w in words
    ]
    entries.sort(key=lambda w: w["start"])
    out: list[dict] = []
    cursor = 0.0
    for w in entries:
        if w["start"] > cursor:
            out.append({"word": SILENCE, "start": cursor, "end": w["start"]})
        out.append(w)
        cursor = max(cursor, w["end"])
    out.append({"word": SILENCE, "start": cursor, "end": -1.0})
    return out


def has_silence_injected(words: Sequence[Mapping]) -> bool:
    """True when ``words`` already ends with the trailing ``<silence>`` (end -1) entry."""
    return bool(words) and word_text(words[-1]) == SILENCE and float(words[-1]["end"]) == -1.0


def alignment_text(words: Sequence[Mapping]) -> str:
    """The LLM input text: every entry (words and silence tokens) joined by single spaces."""
    return " ".join(word_text(w) for w in words)


def token_times_shared_window(token_strings: Sequence[str], words: Sequence[Mapping]) -> np.ndarray:
    """Per-token ``[start, end]`` times by the shared-window aligner (docs/original.md §9.1 step 3).

    All tokens of one word share that word's interval; a word's character budget is spent by
    the stripped token lengths. Tokens that strip to nothing get ``[e_prev, e_prev]``; tokens
    after the last word get ``[e_prev, e_prev]`` too (possibly -1, i.e. end of audio).
    """
    times = np.zeros((len(token_strings), 2), dtype=np.float64)
    if not words:
        return times
    w_idx = 0
    start, end = float(words[0]["start"]), float(words[0]["end"])
    chars_left = len(word_text(words[0]))
    prev_end: float | None = None
    for i, tok in enumerate(token_strings):
        n_chars = len(tok.strip())
        if n_chars == 0:
            e = prev_end if prev_end is not None else start
            times[i] = (e, e)
            prev_end = e
            continue
        if chars_left <= 0:
            w_idx += 1
            if w_idx >= len(words):
                e = prev_end if prev_end is not None else 0.0
                times[i] = (e, e)
                prev_end = e
                continue
            start, end = float(words[w_idx]["start"]), float(words[w_idx]["end"])
            chars_left = len(word_text(words[w_idx])) or n_chars
        times[i] = (start, end)
        chars_left -= n_chars
        prev_end = end
    return times
