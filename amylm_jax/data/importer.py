"""Import the original on-disk dataset (HF ``datasets.load_from_disk`` layout) into a feature store.

The original trainer read ``audio``, ``wavlm_feat``, ``llm_feat`` and ``llm_times``
(docs/original.md §9.2) and aligned them per item on every epoch. This importer does the
collator's alignment once per clip (WavLM adaptive pooling, LLM interval means with the D4
guard) and writes the store.

Defect D1: the stored WavLM sequences keep their batch's padded length. By default each is
trimmed to its own conv-stack frame count before pooling (``repair_d1=True``);
``repair_d1=False`` (``prepare --norepair_d1``) pools the whole stored sequence as the original
did, for parity runs. The manifest reports how many clips were padded
(``d1_padded``) and how many were trimmed (``d1_repaired``).
"""

from __future__ import annotations

import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from amylm_jax.data import align, audio
from amylm_jax.data.extract import ClipError
from amylm_jax.data.store import StoreWriter, open_store

REQUIRED_COLUMNS = ("audio", "wavlm_feat", "llm_feat", "llm_times")
_FEATURE_COLUMNS = ("wavlm_feat", "llm_feat", "llm_times")
_TRANSCRIPT_COLUMNS = ("transcript", "original_text", "text")
# Stored WavLM shorter than the audio implies by more than this many frames means the features
# belong to other audio: an error, not something to stretch over the clip.
_SHORT_FRAMES_TOLERANCE = 2


def load_original(path: str | os.PathLike, split: str | None = None) -> Any:
    """Load the dataset and check its columns; a DatasetDict needs one split or ``split``."""
    import datasets  # optional: only to read the original dataset

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"{path}: choose a split with split=... among {sorted(ds)}")
        ds = ds[split]
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{path}: dataset lacks column(s) {missing}; the original layout has "
            f"{list(REQUIRED_COLUMNS)} (+ optional segment_id), found {ds.column_names}"
        )
    if isinstance(ds.features["audio"], datasets.Audio):
        ds = ds.cast_column("audio", datasets.Audio(decode=False))  # decoded with soundfile
    return ds.with_format("numpy", columns=list(_FEATURE_COLUMNS), output_all_columns=True)


def _row_audio(value: Any, clip_id: str) -> tuple[np.ndarray, int]:
    """Waveform and rate from an ``{array, sampling_rate}`` struct or an undecoded Audio cell."""
    try:
        if isinstance(value, dict) and "array" in value:
            wave = audio.to_mono(np.asarray(value["array"], dtype=np.float32))
            return audio.check_wave(wave, "audio column"), int(value["sampling_rate"])
        if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            return audio.load_audio(value.get("bytes") or value["path"])
    except audio.AudioError as err:
        raise ClipError(clip_id, str(err)) from err
    raise ClipError(clip_id, f"unrecognised audio cell {type(value).__name__}")


def _features(row: dict, name: str, clip_id: str, dim: int | None) -> np.ndarray:
    """A feature matrix as float32 with shape, dim and finiteness checked."""
    feats = np.asarray(row[name])
    if feats.dtype == object:  # ragged rows: the dims disagree inside the clip
        raise ClipError(clip_id, f"{name} rows have different lengths")
    feats = feats.astype(np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0 or (dim is not None and feats.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, D]"
        raise ClipError(clip_id, f"{name} has shape {feats.shape}, expected {want}")
    if not np.all(np.isfinite(feats)):
        raise ClipError(clip_id, f"{name} contains NaN or Inf")
    if not np.any(feats):
        raise ClipError(clip_id, f"{name} is all zeros (failed extraction in the original)")
    return feats


def import_row(
    row: dict,
    clip_id: str,
    dims: tuple[int | None, int | None],
    repair_d1: bool = True,
    repair_times: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Align one original row into a store record; returns ``(record, wavlm_was_padded)``."""
    wave, rate = _row_audio(row["audio"], clip_id)
    wave24 = audio.resample(wave, rate, audio.CODEC_RATE)
    duration = len(wave24) / audio.CODEC_RATE
    t_full = align.full_frame_count(duration)
    wavlm = _features(row, "wavlm_feat", clip_id, dims[0])
    llm = _features(row, "llm_feat", clip_id, dims[1])
    n_valid = align.wavlm_frame_count(round(len(wave) * audio.WAVLM_RATE / rate))
    if n_valid < 1:
        raise ClipError(clip_id, f"audio too short for WavLM ({len(wave)} samples at {rate} Hz)")
    if wavlm.shape[0] < n_valid - _SHORT_FRAMES_TOLERANCE:
        raise ClipError(
            clip_id,
            f"wavlm_feat has {wavlm.shape[0]} frames but the audio implies {n_valid}: "
            "the features do not belong to this audio",
        )
    padded = wavlm.shape[0] > n_valid
    if padded and repair_d1:
        wavlm = wavlm[:n_valid]
    times = np.asarray(row["llm_times"], dtype=np.float64)
    try:
        llm_full = align.llm_to_frames(llm, times, duration, repair=repair_times)
    except ValueError as err:
        raise ClipError(clip_id, f"llm_times: {err}") from err
    record = {
        "clip_id": clip_id,
        "audio": audio.to_int16(wave24),
        "wavlm": align.wavlm_to_frames(wavlm, t_full).astype(np.float16),
        "llm": llm_full.astype(np.float16),
        "duration": duration,
        "transcript": _row_transcript(row),
    }
    for name in ("wavlm", "llm"):
        if not np.all(np.isfinite(record[name])):
            raise ClipError(clip_id, f"{name} features overflow float16")
    return record, padded


def row_groups(row: dict, clip_id: str) -> dict[str, str]:
    """Grouping fields of one original row: its ``speaker`` column when present, and its source
    recording, the part of a GigaSpeech segment id before ``_S<n>`` (``POD0000000001_S0000008``
    is a segment of podcast ``POD0000000001``). Segments of one recording share speakers, so a
    split by ``source`` keeps them on one side."""
    groups = {}
    if row.get("speaker") not in (None, ""):
        groups["speaker"] = str(row["speaker"])
    match = re.fullmatch(r"(.+)_S\d+", clip_id)
    if match:
        groups["source"] = match.group(1)
    return groups


def _row_transcript(row: dict) -> str:
    for col in _TRANSCRIPT_COLUMNS:
        if row.get(col) is not None:
            return str(row[col])
    return ""


def import_hf_dataset(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    repair_d1: bool = True,
    skip_bad: bool = False,
    *,
    repair_times: bool = False,
    split: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Import the original dataset at ``path`` into a store at ``out_dir``; returns its manifest.

    Bad rows raise :class:`ClipError` naming the clip, or with ``skip_bad`` are counted and
    listed in the manifest. Feature dims are taken from the first good row.
    """

    ds = load_original(path, split)
    has_ids = "segment_id" in ds.column_names
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    counts = {"d1_padded": 0, "d1_repaired": 0}
    extra = {
        "source": "original HF dataset",
        "source_name": Path(path).name,
        "wavlm_pooling": "adaptive average of per-clip trimmed frames (D1 fixed)"
        if repair_d1
        else "adaptive average of the stored (batch-padded) frames: D1 parity",
        "llm_alignment": "prefix-sum interval mean over word windows (D4 guarded)",
        "d1_repair": bool(repair_d1),
        "times_repaired": bool(repair_times),
        "num_input_clips": len(ds),
    }
    with ExitStack() as stack:
        writer = None  # opened at the first good row, which fixes the feature dims
        for i in tqdm(range(len(ds)), desc="import", unit="clip", disable=not progress):
            row = ds[i]
            clip_id = str(row["segment_id"]) if has_ids else f"{i:06d}"
            if clip_id in seen:
                raise ValueError(f"clip {clip_id!r}: duplicate segment_id in {path}")
            seen.add(clip_id)
            dims = (writer.wavlm_dim, writer.llm_dim) if writer else (None, None)
            try:
                record, padded = import_row(row, clip_id, dims, repair_d1, repair_times)
            except ClipError as err:
                if not skip_bad:
                    raise
                skipped.append((clip_id, err.reason))
                continue
            if writer is None:
                # The manifest is written at close: the D1 counts are added to it below.
                writer = StoreWriter(
                    out_dir,
                    wavlm_dim=record["wavlm"].shape[1],
                    llm_dim=record["llm"].shape[1],
                    teachers={"wavlm": "imported (wavlm_feat)", "llm": "imported (llm_feat)"},
                    extra_manifest=extra,
                    overwrite=overwrite,
                )
                stack.enter_context(writer)
            counts["d1_padded"] += int(padded)
            counts["d1_repaired"] += int(padded and repair_d1)
            writer.add({**record, "groups": row_groups(row, clip_id)})
        if writer is None:
            raise ValueError(
                f"{path}: no clip left to store ({len(skipped)} skipped: {skipped[:5]})"
            )
        writer.extra_manifest.update(counts)
        for clip_id, reason in skipped:
            writer.skip(clip_id, reason)
    return open_store(out_dir).manifest
