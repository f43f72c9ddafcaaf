"""Aligned feature store: one ArrayRecord record per clip, features already on the 12.5 Hz grid.

Why a store: the original recomputed WavLM pooling and LLM interval means for every item on
every epoch (SPEC §9.4) and kept untrimmed WavLM sequences (D1). Here the offline step
(`amylm_jax.data.prepare`) aligns each clip once and writes the result with `StoreWriter`;
the training pipeline only crops. A store is a directory:

    manifest.json                 version, rates, counts, dims, teachers, shards, clip ids,
                                  skipped clips
    shard-00000.array_record ...  one record per clip (`encode_record`)

Records are serialised without pickle: a length-prefixed JSON header followed by the raw
array buffers, so reading one is a few `np.frombuffer` calls. Writes go to a temporary sibling
directory renamed into place at close, so a crash never leaves a store that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

STORE_VERSION = 1
SAMPLE_RATE = 24000
FRAME_RATE = 12.5
SAMPLES_PER_FRAME = 1920  # SAMPLE_RATE / FRAME_RATE
MANIFEST = "manifest.json"
DEMO_NAME = "demo"
_HEADER = struct.Struct("<I")
_ARRAYS = {"audio": np.int16, "wavlm": np.float16, "llm": np.float16}


def frames_for_duration(duration: float) -> int:
    """`T_full = ceil(duration * 12.5)`, robust to float error at exact frame boundaries.

    `L/24000*12.5` can land a hair above an integer (e.g. L = 13440), so the product is
    rounded to 1e-6 frames before the ceiling; the validators accept either convention.
    """
    return math.ceil(round(duration * FRAME_RATE, 6))


def _valid_frame_counts(duration: float) -> set[int]:
    return {math.ceil(duration * FRAME_RATE), frames_for_duration(duration)}


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Serialise one clip record (the dict `StoreWriter.add` takes) to bytes."""
    header: dict[str, Any] = {
        "clip_id": str(record["clip_id"]),
        "duration": float(record["duration"]),
        "transcript": str(record.get("transcript", "")),
        "arrays": {},
    }
    buffers = []
    offset = 0
    for name, dtype in _ARRAYS.items():
        arr = np.ascontiguousarray(record[name], dtype=dtype)
        header["arrays"][name] = {"shape": list(arr.shape), "offset": offset}
        buffers.append(arr.tobytes())
        offset += arr.nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([_HEADER.pack(len(head)), head, *buffers])


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of `encode_record`: numpy arrays (views on `data`, read-only) plus metadata."""
    (n,) = _HEADER.unpack_from(data, 0)
    header = json.loads(bytes(data[_HEADER.size : _HEADER.size + n]).decode("utf-8"))
    base = _HEADER.size + n
    out: dict[str, Any] = {
        "clip_id": header["clip_id"],
        "duration": header["duration"],
        "transcript": header["transcript"],
    }
    for name, dtype in _ARRAYS.items():
        spec = header["arrays"][name]
        count = int(np.prod(spec["shape"], dtype=np.int64))
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=base + spec["offset"])
        out[name] = flat.reshape(spec["shape"])
    return out


def validate_record(record: Mapping[str, Any], wavlm_dim: int, llm_dim: int) -> None:
    """Raise `ValueError` naming the clip if the record breaks the store contract.

    Checked: non-empty 1-D audio, 2-D features with the store's dims, both with
    `T_full = ceil(duration * 12.5)` rows, duration matching the 24 kHz audio length
    (1 ms tolerance) and finite feature values.
    """
    cid = record.get("clip_id", "<no clip_id>")
    audio = np.asarray(record["audio"])
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"clip {cid!r}: audio must be non-empty 1-D, got shape {audio.shape}")
    if audio.dtype != np.int16:
        raise ValueError(f"clip {cid!r}: audio must be int16 PCM, got {audio.dtype}")
    duration = float(record["duration"])
    if not math.isfinite(duration) or abs(duration - audio.size / SAMPLE_RATE) > 1e-3:
        raise ValueError(
            f"clip {cid!r}: duration {duration} s does not match {audio.size} samples at 24 kHz"
        )
    frames = _valid_frame_counts(duration)
    for name, dim in (("wavlm", wavlm_dim), ("llm", llm_dim)):
        feat = np.asarray(record[name])
        if feat.ndim != 2 or feat.shape[1] != dim:
            raise ValueError(f"clip {cid!r}: {name} must be [T_full, {dim}], got {feat.shape}")
        if feat.shape[0] not in frames:
            raise ValueError(
                f"clip {cid!r}: {name} has {feat.shape[0]} frames, expected "
                f"T_full = ceil({duration} * 12.5) = {frames_for_duration(duration)}"
            )
        if not np.all(np.isfinite(feat)):
            raise ValueError(f"clip {cid!r}: {name} contains NaN or Inf")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StoreWriter:
    """Context manager that writes a store atomically; see the module docstring.

    Use `add(record)` per clip and `skip(clip_id, reason)` for clips that were dropped (they are
    listed in the manifest so a run can say what it did not train on). `overwrite=True` replaces
    an existing store at close; otherwise an existing `out_dir` is an error.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        wavlm_dim: int,
        llm_dim: int,
        teachers: Mapping[str, str],
        extra_manifest: Mapping[str, Any] | None = None,
        records_per_shard: int = 256,
        overwrite: bool = False,
    ) -> None:
        if records_per_shard < 1:
            raise ValueError("records_per_shard must be >= 1")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} exists; pass overwrite=True to replace it")
        self.wavlm_dim, self.llm_dim = int(wavlm_dim), int(llm_dim)
        self.teachers = dict(teachers)
        self.extra_manifest = dict(extra_manifest or {})
        self.records_per_shard = records_per_shard
        self.overwrite = overwrite
        self._tmp: Path | None = None
        self._writer: Any = None
        self._shards: list[dict[str, Any]] = []
        self._skipped: list[dict[str, str]] = []
        self._ids: dict[str, None] = {}  # insertion-ordered set: record order
        self._total_seconds = 0.0

    def __enter__(self) -> StoreWriter:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent)
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def add(self, record: Mapping[str, Any]) -> None:
        """Validate and append one clip record (see `validate_record`)."""
        if self._tmp is None:
            raise RuntimeError("StoreWriter must be used as a context manager")
        cid = str(record["clip_id"])
        if cid in self._ids:
            raise ValueError(f"clip {cid!r}: duplicate clip_id")
        validate_record(record, self.wavlm_dim, self.llm_dim)
        if self._writer is None or self._shards[-1]["num_records"] >= self.records_per_shard:
            self._open_shard()
        self._writer.write(encode_record(record))
        self._shards[-1]["num_records"] += 1
        self._ids[cid] = None
        self._total_seconds += float(record["duration"])

    def skip(self, clip_id: str, reason: str) -> None:
        """Record that a clip was left out, and why."""
        self._skipped.append({"clip_id": str(clip_id), "reason": str(reason)})

    def _open_shard(self) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if self._writer is not None:
            self._writer.close()
        name = f"shard-{len(self._shards):05d}.array_record"
        # group_size:1 keeps every record independently seekable for grain's random access.
        self._writer = ArrayRecordWriter(str(self._tmp / name), "group_size:1")
        self._shards.append({"file": name, "num_records": 0})

    def close(self) -> Path:
        """Finish the last shard, write the manifest and move the store into place."""
        if self._tmp is None:
            raise RuntimeError("StoreWriter is not open")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        manifest = {
            **self.extra_manifest,
            "version": STORE_VERSION,
            "sample_rate": SAMPLE_RATE,
            "frame_rate": FRAME_RATE,
            "num_clips": sum(s["num_records"] for s in self._shards),
            "total_seconds": round(self._total_seconds, 6),
            "wavlm_dim": self.wavlm_dim,
            "llm_dim": self.llm_dim,
            "teachers": self.teachers,
            "shards": self._shards,
            "skipped": self._skipped,
            "clip_ids": list(self._ids),
        }
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(self._tmp, 0o777 & ~_umask())  # mkdtemp made it private; use normal perms
        old = None
        if self.out_dir.exists():
            if not self.overwrite:
                self._abort()
                raise FileExistsError(f"{self.out_dir} appeared while writing")
            old = self.out_dir.with_name(f".{self.out_dir.name}.old-{os.getpid()}")
            os.replace(self.out_dir, old)
        os.replace(self._tmp, self.out_dir)
        self._tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out_dir

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class Store:
    """Random-access view of a store: `len(store)`, `store[i]` -> record dict.

    Picklable (grain ships it to worker processes); the ArrayRecord readers are opened lazily
    in each process.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file():
            raise FileNotFoundError(f"no feature store at {self.path} (missing {MANIFEST})")
        self.manifest: dict[str, Any] = json.loads(manifest_file.read_text())
        self._source: Any = None
        self._clip_ids: list[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "_clip_ids": self._clip_ids}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._source = None

    def shard_paths(self) -> list[Path]:
        """Shard files in record order."""
        return [self.path / s["file"] for s in self.manifest["shards"]]

    def _reader(self) -> Any:
        if self._source is None:
            import grain

            missing = [str(p) for p in self.shard_paths() if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"store {self.path} is missing shard(s): {missing}")
            paths = [str(p) for p in self.shard_paths()]
            self._source = grain.sources.ArrayRecordDataSource(paths) if paths else []
        return self._source

    def __len__(self) -> int:
        return int(self.manifest["num_clips"])

    def read_bytes(self, index: int) -> bytes:
        """Raw serialised record `index` (0-based across shards)."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for a store of {len(self)} clips")
        return self._reader()[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self.read_bytes(int(index)))

    @property
    def clip_ids(self) -> list[str]:
        """Clip ids in record order (from the manifest, so no record is read)."""
        if self._clip_ids is None:
            ids = self.manifest.get("clip_ids") or [self[i]["clip_id"] for i in range(len(self))]
            self._clip_ids = [str(c) for c in ids]
        return self._clip_ids

    @property
    def wavlm_dim(self) -> int:
        return int(self.manifest["wavlm_dim"])

    @property
    def llm_dim(self) -> int:
        return int(self.manifest["llm_dim"])


def open_store(path: str | os.PathLike) -> Store:
    """Open an existing store directory (use `resolve_store` first for names like "demo")."""
    return Store(path)


def check_store(path: str | os.PathLike) -> dict[str, Any]:
    """Read every record and verify the store against its manifest.

    Returns a report (clips, seconds, dims, shards, skipped); raises `ValueError` naming the
    first bad clip or the inconsistent count/shard, `FileNotFoundError` for a missing store.
    """
    store = open_store(path)
    m = store.manifest
    for key in ("version", "num_clips", "wavlm_dim", "llm_dim", "shards", "skipped", "clip_ids"):
        if key not in m:
            raise ValueError(f"store {store.path}: manifest lacks {key!r}")
    if m["version"] != STORE_VERSION:
        raise ValueError(f"store {store.path}: version {m['version']} != {STORE_VERSION}")
    for p in store.shard_paths():
        if not p.is_file():
            raise ValueError(f"store {store.path}: missing shard {p.name}")
    from array_record.python.array_record_module import ArrayRecordReader

    seen: list[str] = []
    seen_set: set[str] = set()
    total = 0.0
    n = 0
    for shard, p in zip(m["shards"], store.shard_paths(), strict=True):
        reader = ArrayRecordReader(str(p))
        try:
            count = reader.num_records()
            if count != shard["num_records"]:
                raise ValueError(
                    f"store {store.path}: shard {p.name} holds {count} records, "
                    f"manifest says {shard['num_records']}"
                )
            for data in reader.read_all():
                rec = decode_record(data)
                validate_record(rec, store.wavlm_dim, store.llm_dim)
                if rec["clip_id"] in seen_set:
                    raise ValueError(f"clip {rec['clip_id']!r}: duplicate clip_id")
                seen.append(rec["clip_id"])
                seen_set.add(rec["clip_id"])
                total += rec["duration"]
                n += 1
        finally:
            reader.close()
    if n != m["num_clips"]:
        raise ValueError(f"store {store.path}: {n} records, manifest num_clips {m['num_clips']}")
    if seen != list(m["clip_ids"]):
        raise ValueError(f"store {store.path}: manifest clip_ids do not match the records")
    return {
        "path": str(store.path),
        "num_clips": n,
        "total_seconds": round(total, 3),
        "wavlm_dim": store.wavlm_dim,
        "llm_dim": store.llm_dim,
        "num_shards": len(m["shards"]),
        "num_skipped": len(m["skipped"]),
        "teachers": m.get("teachers", {}),
    }


def resolve_store(path_or_name: str | os.PathLike) -> Path:
    """Turn a store argument into a store directory.

    "demo" is reserved for the bundled demo corpus: its store is built on first use into the
    cache (see `amylm_jax.data.demo`). Anything else must be an existing store directory.
    """
    if str(path_or_name) == DEMO_NAME:
        from amylm_jax.data.demo import build_demo_store

        return build_demo_store()
    path = Path(path_or_name).expanduser()
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no feature store at {str(path)!r} (no {MANIFEST}). Pass the directory written by "
            "`python -m amylm_jax.prepare` (an aligned feature store), or 'demo' for the "
            "bundled demo corpus."
        )
    return path
