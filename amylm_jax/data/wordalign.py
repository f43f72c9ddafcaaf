"""From audio files to the word-alignment manifest that ``prepare`` reads.

:func:`align_corpus` runs an aligner (:mod:`amylm_jax.data.aligners`) over audio files, with
their transcripts when there are some, and writes one JSONL record per clip::

    {"clip_id": "book1/ch01_0003", "audio": "book1/ch01.flac", "offset": 41.22,
     "duration": 17.9, "source": "book1/ch01.flac", "transcript": "...",
     "words": [{"word": "It", "start": 0.31, "end": 0.42}, ...], "align_score": -0.21}

* A file longer than ``max_segment_s`` is aligned whole, then cut into segments at the widest
  pauses between words (each segment at least ``min_segment_s`` long and at most
  ``max_segment_s``, except where one word alone is longer). Segments cover the whole file;
  ``offset``/``duration`` say where each lies in it and its word times start from the segment.
  Shorter files are one clip without ``offset``/``duration``.
* Bad input never stops the run: unreadable or empty audio, clips without recognised words and
  transcripts that do not align are counted, logged and listed (with the alignment score where
  there is one) in ``<out>.report.json``; word times out of order or overlapping are repaired
  (running maximum of starts and ends, as ``prepare --repair_times`` does) and counted.
* Resumable file by file: every finished file is appended to a log in ``<out>.work/`` (flushed
  and synced), and a rerun reuses the entries whose inputs and settings are unchanged; a log
  line cut short by a crash is dropped and redone. The manifest is written at the end in one
  atomic step.
* ``num_shards``/``shard_index`` split the (sorted) file list into contiguous blocks, one per
  process or host, each writing ``<out>.parts/IIIII-of-NNNNN.jsonl``; :func:`join_parts`
  concatenates them in order, so the result equals a one-process run.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from amylm_jax import paths
from amylm_jax.data import align, aligners, audio
from amylm_jax.data.extract import part_name, shard_bounds

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
TRANSCRIPT_EXTENSIONS = (".txt", ".lab")
_LOG_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One input: a file (``path``) or encoded audio bytes from a dataset row (``data``)."""

    key: str  # the file path as listed, or "<dataset>#<row>"
    clip_id: str
    path: str | None = None
    data: bytes | None = None
    transcript: str | None = None

    def load(self) -> tuple[np.ndarray, int]:
        return audio.load_audio(self.data if self.data is not None else self.path)

    def fingerprint(self, settings: Mapping[str, Any]) -> str:
        if self.data is not None:
            size = hashlib.sha1(self.data).hexdigest()
        else:
            size = os.path.getsize(self.path) if os.path.isfile(self.path) else -1
        payload = json.dumps([self.key, size, self.transcript, dict(settings)], sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()


# ------------------------------------------------------------------------------------ inputs
def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """A transcript table: JSONL records with ``audio`` (or ``clip_id``) and ``transcript`` (or
    ``text``), or tab-separated ``audio<TAB>text`` lines. Keys are kept as written; lookups try
    the file's path (as listed, relative to the table's folder, relative to the input folder, and
    the latter without extension), its name and its name without extension."""
    text = paths.read_text(path)
    table: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {n} is not valid JSON ({err})") from err
            key = rec.get("audio", rec.get("clip_id"))
            value = rec.get("transcript", rec.get("text"))
        else:
            key, _, value = line.partition("\t")
            value = value if value else None
        if key is None or value is None:
            raise ValueError(
                f"{path}: line {n} needs an audio path (or clip_id) and a transcript: {line[:80]!r}"
            )
        table[str(key)] = str(value)
    return table


def _lookup(table: Mapping[str, str], path: str, root: str, table_dir: str) -> str | None:
    rel = os.path.relpath(path, root)
    name = os.path.basename(path)
    keys = (path, os.path.relpath(path, table_dir), rel, os.path.splitext(rel)[0], name,
            os.path.splitext(name)[0])  # fmt: skip
    for key in keys:
        if key in table:
            return table[key]
    return None


def _sidecar(path: str) -> str | None:
    for ext in TRANSCRIPT_EXTENSIONS:
        side = os.path.splitext(path)[0] + ext
        if os.path.isfile(side):
            return Path(side).read_text(encoding="utf-8").strip()
    return None


def list_sources(
    inputs: str | Sequence[str],
    transcripts: str | None = "auto",
    *,
    audio_column: str = "audio",
    text_column: str | None = None,
    id_column: str | None = None,
) -> list[Source]:
    """The inputs in a fixed order (the same on every host).

    ``inputs``: a folder (its audio files, recursively, sorted), a glob, a text file listing
    one audio path per line, a list of paths, or a Hugging Face dataset saved with
    ``save_to_disk`` (rows in order; ``audio_column``, optional ``text_column``/``id_column``).
    ``transcripts``: ``"auto"`` (a ``.txt``/``.lab`` file beside each audio file, when there
    is one), ``None``/``"none"`` (recognise everything), or a transcript table
    (:func:`read_transcripts`); a table must cover every file.
    """
    if (
        isinstance(inputs, str)
        and os.path.isdir(inputs)
        and (
            os.path.isfile(os.path.join(inputs, "dataset_info.json"))
            or os.path.isfile(os.path.join(inputs, "dataset_dict.json"))
        )
    ):
        return _dataset_sources(inputs, audio_column, text_column, id_column)
    if isinstance(inputs, str):
        if os.path.isdir(inputs):
            root = inputs
            files = sorted(
                str(p) for p in Path(inputs).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
            )
        elif any(ch in inputs for ch in "*?["):
            files = sorted(glob.glob(inputs, recursive=True))
            root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else "."
        elif os.path.isfile(inputs) and not inputs.lower().endswith(AUDIO_EXTENSIONS):
            base = os.path.dirname(inputs)
            files = [
                os.path.join(base, line.strip())
                for line in Path(inputs).read_text().splitlines()
                if line.strip()
            ]
            root = base or "."
        else:
            files, root = [inputs], os.path.dirname(inputs) or "."
    else:
        files = [str(f) for f in inputs]
        root = (
            os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
            if files
            else "."
        )
    if not files:
        raise FileNotFoundError(f"{inputs}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    table = None
    if transcripts not in (None, "none", "auto"):
        table = read_transcripts(transcripts)
    sources, seen = [], set()
    for f in files:
        rel = os.path.relpath(os.path.abspath(f), os.path.abspath(root))
        clip_id = os.path.splitext(rel)[0]
        if clip_id in seen:
            raise ValueError(f"two inputs give the clip id {clip_id!r} (e.g. {f}); rename one")
        seen.add(clip_id)
        if table is not None:
            text = _lookup(table, f, root, os.path.dirname(os.fspath(transcripts)) or ".")
            if text is None:
                raise ValueError(f"{transcripts}: no transcript for {f}")
        elif transcripts == "auto":
            text = _sidecar(f)
        else:
            text = None
        sources.append(Source(key=f, clip_id=clip_id, path=f, transcript=text))
    return sources


def _dataset_sources(path, audio_column, text_column, id_column) -> list[Source]:
    import datasets  # heavy: only for dataset inputs

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path}: a DatasetDict; save one split, or point at it")
    for col in (audio_column, text_column, id_column):
        if col is not None and col not in ds.column_names:
            raise ValueError(f"{path}: no column {col!r} (columns: {ds.column_names})")
    if isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    sources = []
    for i, row in enumerate(ds):
        cell = row[audio_column]
        data = _cell_bytes(cell)
        clip_id = str(row[id_column]) if id_column else f"{i:08d}"
        text = row[text_column] if text_column else None
        sources.append(Source(key=f"{path}#{i}", clip_id=clip_id, data=data,
                              transcript=None if text is None else str(text)))  # fmt: skip
    return sources


def _cell_bytes(cell: Any) -> bytes:
    """Encoded audio of a dataset cell: its bytes, its file, or its decoded array as a wav."""
    if isinstance(cell, dict) and cell.get("bytes"):
        return cell["bytes"]
    if isinstance(cell, dict) and cell.get("path") and os.path.isfile(cell["path"]):
        return Path(cell["path"]).read_bytes()
    if isinstance(cell, dict) and cell.get("array") is not None:
        buf = io.BytesIO()
        import soundfile as sf

        sf.write(buf, np.asarray(cell["array"], np.float32), int(cell["sampling_rate"]),
                 format="WAV", subtype="FLOAT")  # fmt: skip
        return buf.getvalue()
    return b""  # unreadable: reported when it is loaded


# --------------------------------------------------------------------------------- segments
def repair_words(words: Sequence[Mapping], duration: float) -> tuple[list[dict], bool]:
    """Word times monotonised (running max of starts and of ends, ends >= starts) and clipped
    to the audio; returns the words and whether anything changed."""
    if not words:
        return [], False
    times = np.array([[float(w["start"]), float(w["end"])] for w in words], np.float64)
    fixed = np.clip(times, 0.0, duration)
    fixed[:, 0] = np.maximum.accumulate(fixed[:, 0])
    fixed[:, 1] = np.maximum.accumulate(np.maximum(fixed[:, 1], fixed[:, 0]))
    # Overlap with the previous word: start where it ends (words share no time).
    fixed[1:, 0] = np.maximum(fixed[1:, 0], fixed[:-1, 1])
    fixed[:, 1] = np.maximum(fixed[:, 1], fixed[:, 0])
    changed = bool(np.any(np.abs(fixed - times) > 1e-6))
    out = [
        {"word": align.word_text(w), "start": round(float(s), 6), "end": round(float(e), 6)}
        for w, (s, e) in zip(words, fixed, strict=True)
    ]
    return out, changed


def cut_points(
    words: Sequence[Mapping], duration: float, max_s: float, min_s: float
) -> list[tuple[float, float]]:
    """Segments ``[(start, end)]`` covering ``[0, duration]``, cut at the widest pauses.

    Greedy from the start: the next cut is the midpoint of the widest pause between two words
    that leaves the segment between ``min_s`` and ``max_s`` long and the rest at least
    ``min_s`` (the latest such pause on ties). Where no pause qualifies the cut goes at
    ``max_s``, moved to the end of a word that would straddle it.
    """
    if max_s <= 0 or min_s < 0 or min_s >= max_s:
        raise ValueError(f"need 0 <= min_segment_s < max_segment_s, got {min_s}, {max_s}")
    if duration <= max_s:
        return [(0.0, duration)]
    spans = [(float(w["start"]), float(w["end"])) for w in words]
    pauses = [
        (max(spans[i + 1][0] - spans[i][1], 0.0), (spans[i][1] + spans[i + 1][0]) / 2)
        for i in range(len(spans) - 1)
    ]
    cuts, start = [], 0.0
    while duration - start > max_s:
        fits = [
            (width, c)
            for width, c in pauses
            if start + min_s <= c <= start + max_s and c <= duration - min_s
        ]
        if fits:
            cut = max(fits)[1]
        else:
            cut = start + max_s
            for s, e in spans:
                if s < cut < e:
                    cut = e
            if cut >= duration:
                break
        cuts.append((start, cut))
        start = cut
    cuts.append((start, duration))
    return [(round(a, 6), round(b, 6)) for a, b in cuts]


def _records(
    src: Source,
    words: list[dict],
    duration: float,
    score: float | None,
    settings: Mapping[str, Any],
    audio_ref: str,
) -> tuple[list[dict], list[tuple]]:
    """The manifest records of one aligned file (and the segments without words)."""
    segments = cut_points(words, duration, settings["max_segment_s"], settings["min_segment_s"])
    records, empty = [], []
    for k, (a, b) in enumerate(segments):
        clip_id = src.clip_id if len(segments) == 1 else f"{src.clip_id}_{k:04d}"
        inside = [
            {"word": w["word"], "start": round(w["start"] - a, 6), "end": round(w["end"] - a, 6)}
            for w in words
            if a <= w["start"] < b
        ]
        if not inside:
            empty.append((clip_id, "no recognised words"))
            continue
        rec: dict[str, Any] = {"clip_id": clip_id, "audio": audio_ref}
        if len(segments) > 1:
            rec.update(offset=a, duration=round(b - a, 6))
        if len(segments) == 1 and src.transcript is not None:
            text = src.transcript
        else:
            text = " ".join(w["word"] for w in inside)
        rec.update(source=audio_ref, transcript=text, words=inside)
        if score is not None:
            rec["align_score"] = round(float(score), 6)
        records.append(rec)
    return records, empty


# -------------------------------------------------------------------------------- work log
def _read_log(path: Path) -> dict[str, dict]:
    """Finished entries of a work log; a last line cut short by a crash is dropped."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    raw = path.read_bytes()
    good = raw[: raw.rfind(b"\n") + 1]
    if len(good) != len(raw):  # torn tail: cut it so appends start on a clean line
        with open(path, "r+b") as f:
            f.truncate(len(good))
    for line in good.decode("utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if entry.get("version") == _LOG_VERSION:
                done[entry["key"]] = entry
    return done


def _append_log(handle, entries: Sequence[Mapping]) -> None:
    handle.write("".join(json.dumps(e) + "\n" for e in entries))
    handle.flush()
    os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------- run
def align_corpus(
    inputs: str | Sequence[str] | Sequence[Source],
    out: str | os.PathLike,
    *,
    aligner: Any = "pocketsphinx",
    model: str | None = None,
    transcripts: str | None = "auto",
    max_segment_s: float = 20.0,
    min_segment_s: float = 2.0,
    min_score: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    language: str | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    dataset_columns: Mapping[str, str | None] | None = None,
    on_file: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Align ``inputs`` and write the manifest ``out`` (or this shard's part); returns the report.

    ``aligner`` is a back-end name (:data:`~amylm_jax.data.aligners.ALIGNERS`) or a loaded
    aligner; ``min_score`` skips clips whose alignment score (mean log-probability per frame,
    0 = certain) is below it. ``on_file`` is called with each file's key once it is logged
    (for progress hooks and tests).
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must lie in [0, num_shards={num_shards})")
    out = os.fspath(out)
    if paths.is_url(out):
        raise ValueError(f"{out}: write the manifest to a local path (copy it up afterwards)")
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], Source):
        sources = list(inputs)
    else:
        sources = list_sources(inputs, transcripts, **(dataset_columns or {}))
    first, last = shard_bounds(len(sources), num_shards, shard_index)
    sources = sources[first:last]
    part = part_name(shard_index, num_shards)
    target = Path(out) if num_shards == 1 else Path(out + ".parts") / f"{part}.jsonl"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite to replace it")
    name = aligner if isinstance(aligner, str) else aligner.name
    settings = {"aligner": name, "model": model, "language": language,
                "max_segment_s": float(max_segment_s),
                "min_segment_s": float(min_segment_s), "min_score": min_score}  # fmt: skip
    cut_points([], max_segment_s + 1.0, max_segment_s, min_segment_s)  # validate early
    if min_score is not None and name == "pocketsphinx":
        raise ValueError("min_score needs an aligner that scores its alignments (ctc); "
                         "pocketsphinx gives none")  # fmt: skip
    work = Path(out + ".work")
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{part}.log.jsonl"
    done = _read_log(log_path)
    fps = {s.key: s.fingerprint(settings) for s in sources}
    pending = [s for s in sources if done.get(s.key, {}).get("fingerprint") != fps[s.key]]
    audio_root = Path(out).parent  # records name audio relative to the final manifest
    if pending and isinstance(aligner, str):
        aligner = aligners.load_aligner(aligner, model, device, language)
    with open(log_path, "a", encoding="utf-8") as handle, tqdm(
        total=len(sources), initial=len(sources) - len(pending), desc=f"aligning ({name})",
        unit="file", disable=not progress,
    ) as bar:  # fmt: skip
        for i in range(0, len(pending), batch_size):
            batch = pending[i : i + batch_size]
            entries = _align_batch(batch, aligner, settings, audio_root, out)
            for entry, src in zip(entries, batch, strict=True):
                entry.update(version=_LOG_VERSION, key=src.key, fingerprint=fps[src.key])
                for cid, reason in entry["skipped"]:
                    tqdm.write(f"skipped {cid}: {reason}")
            _append_log(handle, entries)
            for entry in entries:
                done[entry["key"]] = entry
                if on_file is not None:
                    on_file(entry["key"])
            bar.update(len(batch))
    entries = [done[s.key] for s in sources]
    records = [r for e in entries for r in e["records"]]
    report = _report(entries, len(sources), settings)
    if num_shards == 1 and not records:
        report_path = Path(out + ".report.json")
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        raise ValueError(f"no clip aligned: all {len(sources)} inputs were skipped "
                         f"(see {report_path})")  # fmt: skip
    _write_atomic(target, "".join(json.dumps(r) + "\n" for r in records))
    report_path = target.with_name(target.name.removesuffix(".jsonl") + ".report.json")
    if num_shards == 1:
        report_path = Path(out + ".report.json")
    _write_atomic(report_path, json.dumps(report, indent=2) + "\n")
    return report


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _audio_ref(src: Source, manifest_dir: Path, out: str) -> str:
    """The audio path a record names, relative to the manifest's folder; dataset audio is
    written out as a file beside the manifest (``<out>.audio/<clip>.wav``) first."""
    path = src.path
    if src.data is not None:
        path = os.path.join(out + ".audio", src.clip_id + ".wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(src.data)
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(manifest_dir))
    return os.path.abspath(path) if rel.startswith("..") else rel  # outside: absolute


SILENCE_DBFS = -60.0


def _silent(wave: np.ndarray, rate: int) -> bool:
    """True when no 20 ms frame of ``wave`` is louder than :data:`SILENCE_DBFS` (RMS)."""
    hop = max(rate // 50, 1)
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop) if len(wave) >= hop else wave[None]
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return bool(np.max(rms) < 10 ** (SILENCE_DBFS / 20))


def _skipped(clip_id: str, reason: str, kind: str, score: float | None = None) -> dict:
    """The work-log entry of a file that gave no record: why, and under which count."""
    return {"records": [], "skipped": [(clip_id, reason)], "kind": kind, "repaired": False,
            "score": score}  # fmt: skip


def _align_batch(batch, aligner, settings, manifest_dir, out) -> list[dict]:
    entries: list[dict | None] = [None] * len(batch)
    waves, texts, where = [], [], []
    durations = {}
    for j, src in enumerate(batch):
        try:
            wave, rate = src.load()
            if len(wave) / rate < 0.1:
                raise audio.AudioError(f"{src.key}: audio too short ({len(wave) / rate:.3f} s)")
        except audio.AudioError as err:
            entries[j] = _skipped(src.clip_id, str(err), "audio")
            continue
        if src.transcript is None and _silent(wave, rate):
            # Recognisers hallucinate words in silence: there is nothing to recognise.
            reason = f"no recognised words (silent: no 20 ms frame above {SILENCE_DBFS} dBFS)"
            entries[j] = _skipped(src.clip_id, reason, "words")
            continue
        if src.transcript is not None and not aligners.transcript_words(src.transcript):
            entries[j] = _skipped(src.clip_id, "empty transcript", "transcript")
            continue
        waves.append(audio.resample(wave, rate, aligners.RATE))
        texts.append(src.transcript)
        where.append(j)
        durations[j] = len(wave) / rate
    results = aligner.align(waves, texts) if waves else []
    for j, result in zip(where, results, strict=True):
        src = batch[j]
        if result.error is not None:
            reason = result.error + ("" if result.score is None else f" (score {result.score:.3f})")
            kind = "transcript" if src.transcript is not None else "words"
            kind = "missing" if result.error == aligners.NO_TRANSCRIPT else kind
            entries[j] = _skipped(src.clip_id, reason, kind, result.score)
            continue
        if settings["min_score"] is not None and (result.score or 0.0) < settings["min_score"]:
            # (an aligner without scores is refused with min_score before the run)
            reason = f"alignment score {result.score:.3f} below min_score {settings['min_score']}"
            entries[j] = _skipped(src.clip_id, reason, "score", result.score)
            continue
        words, repaired = repair_words(result.words, durations[j])
        if not words:
            entries[j] = _skipped(src.clip_id, "no recognised words", "words")
            continue
        ref = _audio_ref(src, manifest_dir, out)
        records, empty = _records(src, words, durations[j], result.score, settings, ref)
        entries[j] = {"records": records, "skipped": empty, "kind": "words" if empty else None,
                      "repaired": repaired, "score": result.score,
                      "seconds": sum(r.get("duration", durations[j]) for r in records)}  # fmt: skip
    return entries  # type: ignore[return-value]


_KINDS = {
    "audio": "unreadable, empty or too short audio",
    "transcript": "transcript does not align",
    "words": "no recognised words",
    "score": "alignment score below min_score",
    "missing": "no transcript for an aligner that needs one",
}


def _report(entries: Sequence[Mapping], n_files: int, settings: Mapping) -> dict[str, Any]:
    skipped = [{"clip_id": cid, "reason": reason} for e in entries for cid, reason in e["skipped"]]
    kinds = Counter(e["kind"] for e in entries for _ in e["skipped"])
    scores = [r.get("align_score") for e in entries for r in e["records"]]
    scores = [s for s in scores if s is not None]
    return {
        **settings,
        "files": n_files,
        "clips": sum(len(e["records"]) for e in entries),
        "seconds": round(sum(e.get("seconds", 0.0) for e in entries), 3),
        "segmented_files": sum(len(e["records"]) > 1 for e in entries),
        "times_repaired": sum(bool(e["repaired"]) for e in entries),
        "skipped_counts": {_KINDS[k]: n for k, n in sorted(kinds.items())},
        "skipped": skipped,
        "score_min": min(scores) if scores else None,
        "score_mean": float(np.mean(scores)) if scores else None,
    }


def join_parts(out: str | os.PathLike) -> dict[str, Any]:
    """Concatenate the finished parts ``<out>.parts/IIIII-of-NNNNN.jsonl`` into ``out``."""
    out = os.fspath(out)
    folder = Path(out + ".parts")
    parts = sorted(p.name for p in folder.glob("*-of-*.jsonl")) if folder.is_dir() else []
    if not parts:
        raise FileNotFoundError(f"{folder}: no parts (run align with --num_shards first)")
    count = int(parts[0].split("-of-")[1].split(".")[0])
    want = [f"{part_name(i, count)}.jsonl" for i in range(count)]
    missing = sorted(set(want) - set(parts))
    if missing or len(parts) != count:
        raise ValueError(f"{folder}: parts {missing or parts} are missing or from another "
                         "shard count; rerun those shards, then join")  # fmt: skip
    text = "".join((folder / p).read_text(encoding="utf-8") for p in want)
    reports = [json.loads((folder / p.replace(".jsonl", ".report.json")).read_text()) for p in want]
    ids = [json.loads(line)["clip_id"] for line in text.splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{folder}: a clip id appears in two parts")
    if not ids:
        raise ValueError(f"no clip aligned in any of the {count} parts")
    _write_atomic(Path(out), text)
    report = dict(reports[0])
    for key in ("files", "clips", "segmented_files", "times_repaired"):
        report[key] = sum(r[key] for r in reports)
    report["seconds"] = round(sum(r["seconds"] for r in reports), 3)
    report["skipped"] = [s for r in reports for s in r["skipped"]]
    counts: Counter = Counter()
    for r in reports:
        counts.update(r["skipped_counts"])
    report["skipped_counts"] = dict(sorted(counts.items()))
    scores = [r["score_min"] for r in reports if r["score_min"] is not None]
    report["score_min"] = min(scores) if scores else None
    report.pop("score_mean", None)
    report["joined_parts"] = count
    _write_atomic(Path(out + ".report.json"), json.dumps(report, indent=2) + "\n")
    return report
