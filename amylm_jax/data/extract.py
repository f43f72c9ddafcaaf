"""Offline feature preparation: word alignments + audio -> aligned feature store.

One pass per clip, done once instead of on every epoch (docs/original.md §9.4): the audio is
resampled once
from its source rate to 24 kHz (codec) and 16 kHz (WavLM); WavLM frames are trimmed per clip
(D1) and pooled to ``T_full = ceil(duration * 12.5)``; LLM token features are interval-averaged
with the D4 guard. Both are stored as float16.

Work is resumable: each finished clip is cached as one ``.npz`` (in ``<out>.work/`` unless a
cache directory is given) with a fingerprint of its inputs, so a rerun skips finished clips and
redoes changed ones; the store is then written from the cache. Bad clips (unreadable audio,
missing alignment, out-of-order times, non-finite features) raise :class:`ClipError` naming
the clip, or with ``skip_bad`` are counted and listed in the manifest's ``skipped``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from amylm_jax import paths
from amylm_jax.data import align, audio, teachers
from amylm_jax.data.store import MANIFEST, StoreWriter, merge_stats, open_store

MIN_DURATION_S = 0.1
# Words may end slightly past the last sample (ASR rounding); more than this means the
# alignment belongs to other audio.
ALIGNMENT_SLACK_S = 0.25
# Record fields carried into the store per clip, for a validation split that keeps whole
# speakers or recordings out of training (`data.val_group_by`). ``source`` defaults to the
# record's audio path: the segments cut from one recording share it.
GROUP_FIELDS = ("speaker", "source")
_CACHE_VERSION = 1


class ClipError(ValueError):
    """A clip cannot be prepared; the message starts with the clip id."""

    def __init__(self, clip_id: str, reason: str) -> None:
        super().__init__(f"clip {clip_id!r}: {reason}")
        self.clip_id, self.reason = clip_id, reason


@dataclass(frozen=True)
class ClipSpec:
    """One clip to prepare: resolved audio path and silence-injected words."""

    clip_id: str
    audio: str
    words: list[dict]
    transcript: str
    groups: dict[str, str] = field(default_factory=dict)
    span: tuple[float, float] | None = None  # (offset, duration) s of a segment of the file

    def fingerprint(self) -> str:
        """Hash of everything the cached features depend on (inputs, not teachers)."""
        if paths.is_url(self.audio):
            size = -1  # object storage: the path and the words identify the clip
        else:
            size = os.path.getsize(self.audio) if os.path.isfile(self.audio) else -1
        inputs = [self.audio, size, self.words] + ([list(self.span)] if self.span else [])
        payload = json.dumps(inputs, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()


def read_alignment_records(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL alignment manifest or a JSON list of the same objects (path or URL)."""
    text = paths.read_text(path)
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {n} is not valid JSON ({err})") from err
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected one JSON object per clip")
    return records


def _record_words(record: Mapping[str, Any]) -> Any:
    """The word list of a record: ``words``, or the original's ``alignment_json`` ``word``."""
    words = record.get("words")
    if words is None and record.get("alignment_json") is not None:
        aj = record["alignment_json"]
        aj = json.loads(aj) if isinstance(aj, str) else aj
        words = aj.get("word") if isinstance(aj, dict) else None
    return json.loads(words) if isinstance(words, str) else words


def _transcript(record: Mapping[str, Any], words: Sequence[Mapping]) -> str:
    if record.get("transcript") is not None:
        return str(record["transcript"])
    aj = record.get("alignment_json")
    aj = json.loads(aj) if isinstance(aj, str) else aj
    if isinstance(aj, dict) and aj.get("original_text"):
        return str(aj["original_text"])
    return " ".join(w["word"] for w in words if w["word"] != align.SILENCE)


def record_groups(record: Mapping[str, Any], fields: Sequence[str] = GROUP_FIELDS) -> dict:
    """The grouping fields of one manifest record (``source`` falls back to its audio path)."""
    groups = {}
    for name in fields:
        value = record.get(name)
        if value is None and name == "source":
            value = record.get("audio")
        if isinstance(value, (dict, list)):
            raise ValueError(f"field {name!r} must be a string or number, got {value!r}")
        if value is not None and str(value) != "":
            groups[name] = str(value)
    return groups


def parse_record(
    record: Mapping[str, Any],
    base_dir: str | os.PathLike,
    index: int,
    group_fields: Sequence[str] = GROUP_FIELDS,
) -> ClipSpec:
    """Validate one manifest record and turn it into a :class:`ClipSpec` (or raise ClipError)."""
    cid = record.get("clip_id", record.get("segment_id"))
    if cid is None:
        raise ValueError(f"manifest record {index} has no clip_id")
    cid = str(cid)
    if not record.get("audio"):
        raise ClipError(cid, "no audio path in the manifest")
    audio_ref = str(record["audio"])
    if paths.is_url(audio_ref):
        path = audio_ref
    elif paths.is_url(base_dir):
        path = f"{os.fspath(base_dir).rstrip('/')}/{audio_ref}"
    else:
        path = os.path.join(base_dir, os.path.expanduser(audio_ref))
    if not (paths.exists(path) if paths.is_url(path) else os.path.isfile(path)):
        raise ClipError(cid, f"audio file not found: {record['audio']}")
    span = None
    if record.get("offset") is not None or record.get("duration") is not None:
        try:
            span = (float(record.get("offset") or 0.0), float(record["duration"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ClipError(cid, f"a segment needs numeric offset and duration ({err!r})") from err
        if not (np.isfinite(span).all() and span[0] >= 0 and span[1] > 0):
            raise ClipError(cid, f"bad segment offset/duration {span}")
    words = _record_words(record)
    if not words:
        raise ClipError(cid, "missing alignment (no words)")
    try:
        entries = [
            {"word": align.word_text(w), "start": float(w["start"]), "end": float(w["end"])}
            for w in words
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ClipError(cid, f"malformed word entry ({err!r})") from err
    for n, w in enumerate(entries):
        if not (np.isfinite(w["start"]) and np.isfinite(w["end"])) or w["start"] < 0:
            raise ClipError(cid, f"word {n} {w['word']!r} has invalid times {w}")
        if w["end"] < w["start"] and not (w["end"] == -1.0 and n == len(entries) - 1):
            raise ClipError(cid, f"word {n} {w['word']!r} ends before it starts {w}")
    if not align.has_silence_injected(entries):
        entries = align.inject_silence(entries)
    try:
        groups = record_groups(record, group_fields)
    except ValueError as err:
        raise ClipError(cid, str(err)) from err
    return ClipSpec(cid, path, entries, _transcript(record, entries), groups, span)


def _cache_name(clip_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", clip_id)[:80]
    return f"{safe}-{hashlib.sha1(clip_id.encode()).hexdigest()[:10]}.npz"


def clip_record(
    spec: ClipSpec,
    audio_24k: np.ndarray,
    wavlm_frames: np.ndarray,
    llm_feats: np.ndarray,
    llm_times: np.ndarray,
    dims: tuple[int, int],
    repair_times: bool = False,
    wavlm_pooling: str = "adaptive",
) -> dict[str, Any]:
    """Align one clip's teacher outputs onto its 12.5 Hz grid; ClipError on bad features."""
    duration = len(audio_24k) / audio.CODEC_RATE
    t_full = align.full_frame_count(duration)
    checked = [("wavlm", wavlm_frames, dims[0])] + ([("llm", llm_feats, dims[1])] * (dims[1] > 0))
    for name, feats, dim in checked:
        if feats.ndim != 2 or feats.shape[1] != dim or feats.shape[0] == 0:
            raise ClipError(
                spec.clip_id, f"{name} features have shape {feats.shape}, want [*, {dim}]"
            )
        if not np.all(np.isfinite(feats)):
            raise ClipError(spec.clip_id, f"{name} features contain NaN or Inf")
    last_end = max(max(w["start"], w["end"]) for w in spec.words)
    if last_end > duration + ALIGNMENT_SLACK_S:
        raise ClipError(
            spec.clip_id, f"alignment reaches {last_end:.2f} s but the audio is {duration:.2f} s"
        )
    try:
        if dims[1] > 0:
            llm = align.llm_to_frames(llm_feats, llm_times, duration, repair=repair_times)
        else:  # a store without LLM features (no LLM teacher)
            llm = np.zeros((t_full, 0), np.float32)
    except ValueError as err:
        raise ClipError(spec.clip_id, str(err)) from err
    record = {
        "clip_id": spec.clip_id,
        "audio": audio.to_int16(audio_24k),
        "wavlm": align.wavlm_to_frames(wavlm_frames, t_full, wavlm_pooling).astype(np.float16),
        "llm": llm.astype(np.float16),
        "duration": duration,
        "transcript": spec.transcript,
    }
    for name in ("wavlm", "llm"):
        if not np.all(np.isfinite(record[name])):
            raise ClipError(spec.clip_id, f"{name} features overflow float16")
    return record


def _save_npz(path: Path, record: Mapping[str, Any], fingerprint: str) -> None:
    """Write atomically so an interrupted run never leaves a truncated cache entry."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            audio=record["audio"],
            wavlm=record["wavlm"],
            llm=record["llm"],
            duration=np.float64(record["duration"]),
            transcript=np.str_(record["transcript"]),
            fingerprint=np.str_(fingerprint),
        )
    os.replace(tmp, path)


def _load_npz(path: Path, clip_id: str) -> dict[str, Any]:
    with np.load(path) as z:
        return {
            "clip_id": clip_id,
            "audio": z["audio"],
            "wavlm": z["wavlm"],
            "llm": z["llm"],
            "duration": float(z["duration"]),
            "transcript": str(z["transcript"]),
        }


def _cached_fingerprint(path: Path) -> str | None:
    try:
        with np.load(path) as z:
            return str(z["fingerprint"])
    except (OSError, KeyError, ValueError):
        return None


def _teacher_name(teacher: Any) -> str:
    return teacher if isinstance(teacher, str) else teacher.name


def _open_cache(cache: Path, wavlm: Any, llm: Any, pooling: str) -> dict[str, Any]:
    """Create or check the cache's metadata: features from other teachers or another WavLM
    pooling must not mix."""
    cache.mkdir(parents=True, exist_ok=True)
    meta_path = cache / "cache.json"
    want = {
        "version": _CACHE_VERSION,
        "wavlm": _teacher_name(wavlm),
        "llm": _teacher_name(llm),
        "wavlm_pooling": pooling,
    }
    if meta_path.is_file():
        meta = {"wavlm_pooling": "adaptive", **json.loads(meta_path.read_text())}
        if {k: meta.get(k) for k in want} != want:
            raise ValueError(
                f"feature cache {cache} was built with teachers {meta.get('wavlm')!r} / "
                f"{meta.get('llm')!r} and WavLM pooling {meta.get('wavlm_pooling')!r}; "
                "delete it or pass another cache_dir"
            )
        return meta
    meta_path.write_text(json.dumps(want) + "\n")
    return want


_POOLING_TEXT = {
    "adaptive": "adaptive average of per-clip trimmed frames (D1 fixed)",
    "window": "centred average pool, kernel 8, stride 4, of per-clip trimmed frames",
}


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _extract_batch(batch, wavlm, llm, cache, dims, repair_times, pooling, on_bad) -> None:
    """Load audio, run both teachers on a batch, align and cache each clip."""
    loaded = []
    for spec in batch:
        try:
            waves = audio.load_resampled(spec.audio, span=spec.span)
        except audio.AudioError as err:
            on_bad(ClipError(spec.clip_id, str(err)))
            continue
        seconds = len(waves[audio.CODEC_RATE]) / audio.CODEC_RATE
        if seconds < MIN_DURATION_S:
            on_bad(
                ClipError(spec.clip_id, f"audio too short ({seconds:.3f} s < {MIN_DURATION_S} s)")
            )
            continue
        loaded.append((spec, waves))
    if not loaded:
        return
    wavlm_out = wavlm.extract([w[audio.WAVLM_RATE] for _, w in loaded])
    llm_out = llm.extract([s.words for s, _ in loaded])
    for (spec, waves), w_feats, (l_feats, l_times) in zip(loaded, wavlm_out, llm_out, strict=True):
        try:
            rec = clip_record(spec, waves[audio.CODEC_RATE], w_feats, l_feats, l_times, dims,
                              repair_times, pooling)  # fmt: skip
        except ClipError as err:
            on_bad(err)
            continue
        _save_npz(cache / _cache_name(spec.clip_id), rec, spec.fingerprint())


def build_store(
    manifest: str | os.PathLike | Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    wavlm: Any = "tiny-random",
    llm: Any = "tiny-random",
    batch_size: int = 8,
    device: str = "cpu",
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    repair_times: bool = False,
    overwrite: bool = False,
    keep_cache: bool = True,
    progress: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
    wavlm_pooling: str = "adaptive",
    group_fields: Sequence[str] = GROUP_FIELDS,
) -> dict[str, Any]:
    """Build an aligned feature store from an alignment manifest; returns its manifest.

    ``manifest`` is a JSONL/JSON path (audio paths relative to it) or a list of records (paths
    relative to ``base_dir``, default the working directory). ``wavlm``/``llm`` are teacher
    names (hub id, local path, ``tiny-random``) or already loaded teachers. ``wavlm_pooling``
    is one of :data:`~amylm_jax.data.align.WAVLM_POOLINGS`. The record fields named in
    ``group_fields`` (default speaker and source file) are kept per clip in the store's
    ``clip_groups`` for grouped validation splits (`data.val_group_by`).

    With ``num_shards > 1`` this process handles only the contiguous block ``shard_index`` of
    the manifest's clips and writes it as a part store ``OUT/parts/IIIII-of-NNNNN`` (its own
    per-clip cache beside it); :func:`join_parts` then writes ``OUT/manifest.json`` over all
    parts, in manifest order, so the joined store holds exactly the records of a one-process
    build.
    """
    if isinstance(manifest, (str, os.PathLike)):
        records = read_alignment_records(manifest)
        base = os.fspath(manifest).rsplit("/", 1)[0] if paths.is_url(manifest) else None
        base = base or Path(manifest).parent
    else:
        records, base = list(manifest), Path(base_dir or os.getcwd())
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must lie in [0, num_shards={num_shards})")
    if wavlm_pooling not in align.WAVLM_POOLINGS:
        raise ValueError(
            f"wavlm_pooling={wavlm_pooling!r}: choose one of {', '.join(align.WAVLM_POOLINGS)}"
        )
    first = 0
    if num_shards > 1:
        first, last = shard_bounds(len(records), num_shards, shard_index)
        records = records[first:last]
        out_dir = os.path.join(os.fspath(out_dir), PARTS_DIR, part_name(shard_index, num_shards))
    remote = paths.is_url(out_dir)
    out_dir = os.fspath(out_dir) if remote else Path(out_dir)
    exists = paths.exists(paths.join(out_dir, MANIFEST)) if remote else out_dir.exists()
    if exists and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite to replace it")
    skipped: dict[str, str] = {}

    def on_bad(err: ClipError) -> None:
        if not skip_bad:
            raise err
        skipped[err.clip_id] = err.reason

    specs: list[ClipSpec] = []
    seen: set[str] = set()
    for i, rec in enumerate(records, start=first):
        try:
            spec = parse_record(rec, base, i, group_fields)
        except ClipError as err:
            on_bad(err)
            continue
        if spec.clip_id in seen:
            raise ValueError(f"clip {spec.clip_id!r}: duplicate clip_id in the manifest")
        seen.add(spec.clip_id)
        specs.append(spec)

    if cache_dir is None:  # beside the store; a store on object storage caches locally
        local = Path(os.fspath(out_dir).split("://", 1)[-1]) if remote else out_dir
        cache_dir = (Path(".amylm_prepare_cache") / local) if remote else local
        cache_dir = cache_dir.with_name(cache_dir.name + ".work")
    cache = Path(cache_dir)
    meta = _open_cache(cache, wavlm, llm, wavlm_pooling)
    pending = [
        s for s in specs if _cached_fingerprint(cache / _cache_name(s.clip_id)) != s.fingerprint()
    ]
    if pending or "wavlm_dim" not in meta:
        if isinstance(wavlm, str):
            wavlm = teachers.load_wavlm(wavlm, device=device)
        if isinstance(llm, str):
            llm = teachers.load_llm(llm, device=device)
        meta.update(wavlm_dim=wavlm.dim, llm_dim=llm.dim)
        (cache / "cache.json").write_text(json.dumps(meta) + "\n")
    dims = (int(meta["wavlm_dim"]), int(meta["llm_dim"]))
    with tqdm(
        total=len(pending), desc="teacher features", unit="clip", disable=not progress
    ) as bar:
        for batch in _batches(pending, batch_size):
            _extract_batch(batch, wavlm, llm, cache, dims, repair_times, wavlm_pooling, on_bad)
            bar.update(len(batch))

    extra = {
        "source": "alignment manifest",
        "wavlm_pooling": _POOLING_TEXT[wavlm_pooling],
        "llm_alignment": "prefix-sum interval mean over word windows (D4 guarded)",
        "times_repaired": bool(repair_times),
        "num_input_clips": len(records),
    }
    if num_shards == 1 and all(s.clip_id in skipped for s in specs):
        raise ValueError(f"no clip left to store: all {len(records)} were skipped ({skipped})")
    writer = StoreWriter(
        out_dir,
        wavlm_dim=dims[0],
        llm_dim=dims[1],
        teachers={"wavlm": _teacher_name(wavlm), "llm": _teacher_name(llm)},
        extra_manifest=extra,
        overwrite=overwrite,
    )
    with writer as w:
        for spec in specs:
            if spec.clip_id in skipped:
                continue
            record = _load_npz(cache / _cache_name(spec.clip_id), spec.clip_id)
            w.add({**record, "groups": spec.groups})
        for cid, reason in skipped.items():
            w.skip(cid, reason)
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    return open_store(out_dir).manifest


# ------------------------------------------------------------------------------- many hosts
PARTS_DIR = "parts"


def part_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


def shard_bounds(n: int, num_shards: int, index: int) -> tuple[int, int]:
    """Records ``[first, last)`` of shard ``index``: contiguous blocks, sizes differ by <= 1."""
    return index * n // num_shards, (index + 1) * n // num_shards


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(num_shards, shard_index)`` from the job environment, ``(1, 0)`` outside a job.

    SLURM array jobs (``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_ID``, counted from
    ``SLURM_ARRAY_TASK_MIN``), multi-task SLURM steps (``SLURM_NTASKS`` / ``SLURM_PROCID``) and
    Cloud TPU VM workers (``TPU_WORKER_HOSTNAMES`` / ``TPU_WORKER_ID``).
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_COUNT" in env and "SLURM_ARRAY_TASK_ID" in env:
        low = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_COUNT"]), int(env["SLURM_ARRAY_TASK_ID"]) - low
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1 and "TPU_WORKER_ID" in env:
        return len(hosts), int(env["TPU_WORKER_ID"])
    return 1, 0


def resolve_shards(
    num_shards: int | None, shard_index: int | None, env: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """``(num_shards, shard_index)`` from the command line when given, else from the job
    environment (:func:`shard_from_env`). Both flags or neither: one alone is an error."""
    if num_shards is None and shard_index is None:
        return shard_from_env(env)
    if num_shards is None or shard_index is None:
        raise ValueError("give both --num_shards and --shard_index")
    return num_shards, shard_index


def join_parts(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``OUT/manifest.json`` over the part stores in ``OUT/parts``; returns it.

    Every part ``IIIII-of-NNNNN`` must be complete (have its manifest); records keep the
    manifest order (part 0's, then part 1's, ...); clip ids must be unique across parts and
    the parts must agree on teachers and feature dims. The part files stay where they are.
    """
    root = paths.as_path(out_dir)
    folder = root / PARTS_DIR
    names = paths.list_names(folder)
    parts = [n for n in names if re.fullmatch(r"\d{5}-of-\d{5}", n)]
    if not parts:
        raise FileNotFoundError(f"{folder}: no part stores (run prepare with --num_shards first)")
    count = int(parts[0].split("-of-")[1])
    want = [part_name(i, count) for i in range(count)]
    missing = [n for n in want if n not in parts or not paths.exists(folder / n / MANIFEST)]
    if missing or len(parts) != count:
        raise ValueError(
            f"{folder}: parts {missing or sorted(set(parts) - set(want))} are missing, "
            f"unfinished or from another shard count; rerun those shards, then --join"
        )
    manifests = [json.loads(paths.read_text(folder / n / MANIFEST)) for n in want]
    first = manifests[0]
    shards, clip_ids, skipped, seen = [], [], [], set()
    fields = sorted({f for m in manifests for f in m.get("clip_groups") or {}})
    groups: dict[str, list] = {f: [] for f in fields}
    for name, m in zip(want, manifests, strict=True):
        for key in ("version", "wavlm_dim", "llm_dim", "teachers"):
            if m[key] != first[key]:
                raise ValueError(f"{folder}/{name}: {key} {m[key]!r} differs from part 0's")
        for spec in m["shards"]:
            shards.append(
                {**spec, **{k: f"{PARTS_DIR}/{name}/{spec[k]}" for k in ("file", "index")}}
            )
        dup = seen.intersection(m["clip_ids"])
        if dup:
            raise ValueError(
                f"{folder}/{name}: clip ids also in an earlier part: {sorted(dup)[:5]}"
            )
        seen.update(m["clip_ids"])
        clip_ids += m["clip_ids"]
        for f in fields:  # a part without a field has no value for its clips
            groups[f] += (m.get("clip_groups") or {}).get(f) or [None] * len(m["clip_ids"])
        skipped += m["skipped"]
    if not clip_ids:
        raise ValueError(f"no clip left to store: all were skipped ({skipped})")
    joined = {
        **first,
        "num_clips": len(clip_ids),
        "total_seconds": round(sum(m["total_seconds"] for m in manifests), 6),
        "num_input_clips": sum(m.get("num_input_clips", 0) for m in manifests),
        "shards": shards,
        "skipped": skipped,
        "clip_ids": clip_ids,
        "joined_parts": count,
    }
    joined.pop("clip_groups", None)
    if all("feature_stats" in m for m in manifests):
        joined["feature_stats"] = {
            name: merge_stats([m["feature_stats"][name] for m in manifests])
            for name in first["feature_stats"]
        }
    if fields:
        joined["clip_groups"] = groups
    paths.write_text(root / MANIFEST, json.dumps(joined, indent=2) + "\n")
    return joined
