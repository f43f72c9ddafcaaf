"""Aligned feature store: one record per clip, features already on the 12.5 Hz grid.

Why a store: the original recomputed WavLM pooling and LLM interval means for every item on
every epoch (docs/original.md §9.4) and kept untrimmed WavLM sequences (D1). Here the offline
step (`amylm_jax.data.extract`) aligns each clip once and writes the result with
`StoreWriter`; the training pipeline only crops. A store is a folder, local or on object
storage (``gs://bucket/stores/amy``):

    manifest.json          version, rates, counts, dims, teachers, shards, clip ids, skipped,
                           per-dimension mean/std of each teacher feature, and per-clip
                           grouping fields (speaker, source file) when known
    shard-00000.records    the records of up to 256 clips, back to back (`encode_record`)
    shard-00000.index      their byte offsets: num_records + 1 little-endian uint64

Reading record `i` is one ranged read of its bytes (`os.pread` locally, one HTTP range request
on object storage), so training reads only the clips its batches use and a store of many TB
never has to be copied to a worker's disk. Records are serialised without pickle: a
length-prefixed JSON header followed by the raw array buffers, so decoding one is a few
`np.frombuffer` calls.

Writes are atomic: locally the store is written to a temporary sibling folder renamed into
place at close; on object storage the shards are uploaded first and the manifest last, so a
store without its manifest is never opened, and a failed write deletes what it uploaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amylm_jax import paths

STORE_VERSION = 2
_INDEX_DTYPE = np.dtype("<u8")
SAMPLE_RATE = 24000
FRAME_RATE = 12.5
SAMPLES_PER_FRAME = 1920  # SAMPLE_RATE / FRAME_RATE
MANIFEST = "manifest.json"
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


def stats_from_sums(count: int, total: np.ndarray, squares: np.ndarray) -> dict[str, Any]:
    """``{"frames", "mean", "std"}`` (per dimension, population std) from running sums."""
    count = int(count)
    mean = total / max(count, 1)
    var = np.maximum(squares / max(count, 1) - np.square(mean), 0.0)
    return {"frames": count, "mean": mean.tolist(), "std": np.sqrt(var).tolist()}


def merge_stats(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The `stats_from_sums` of several stores' features taken together."""
    count = sum(int(p["frames"]) for p in parts)
    total = sum(int(p["frames"]) * np.asarray(p["mean"], np.float64) for p in parts)
    squares = sum(int(p["frames"]) * (np.square(p["std"]) + np.square(p["mean"])) for p in parts)
    return stats_from_sums(count, np.asarray(total), np.asarray(squares))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StoreWriter:
    """Context manager that writes a store atomically; see the module docstring.

    Use `add(record)` per clip and `skip(clip_id, reason)` for clips that were dropped (they are
    listed in the manifest so a run can say what it did not train on). A record may carry
    ``groups``, a mapping of grouping fields (``speaker``, ``source``, ...) to its value; the
    manifest lists them per clip under ``clip_groups`` so a validation split can keep whole
    speakers or recordings out of training (`Store.clip_groups`). `overwrite=True` replaces
    an existing store at close; otherwise an existing `out_dir` is an error. `out_dir` may be a
    URL: the store is then built in a local temporary folder and uploaded at close.
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
        self.remote = paths.is_url(out_dir)
        self.out_dir = paths.as_path(out_dir) if self.remote else Path(out_dir)
        if paths.exists(self.out_dir / MANIFEST) if self.remote else self.out_dir.exists():
            if not overwrite:
                raise FileExistsError(f"{self.out_dir} exists; pass overwrite=True to replace it")
        self.wavlm_dim, self.llm_dim = int(wavlm_dim), int(llm_dim)
        self.teachers = dict(teachers)
        self.extra_manifest = dict(extra_manifest or {})
        self.records_per_shard = records_per_shard
        self.overwrite = overwrite
        self._tmp: Path | None = None
        self._file: Any = None
        self._offsets: list[int] = []
        self._shards: list[dict[str, Any]] = []
        self._skipped: list[dict[str, str]] = []
        self._ids: dict[str, None] = {}  # insertion-ordered set: record order
        self._groups: dict[str, list[str | None]] = {}  # field -> value per record
        # Per-dimension frame count, sum and sum of squares of each feature (float64) for
        # the manifest's `feature_stats` (distillation target normalisation).
        self._sums = {
            name: [0, np.zeros(dim), np.zeros(dim)]
            for name, dim in (("wavlm", self.wavlm_dim), ("llm", self.llm_dim))
        }
        self._total_seconds = 0.0

    def __enter__(self) -> StoreWriter:
        if self.remote:
            self._tmp = Path(tempfile.mkdtemp(prefix="amylm-store-"))
        else:
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
        if self._file is None or self._shards[-1]["num_records"] >= self.records_per_shard:
            self._open_shard()
        data = encode_record(record)
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self._shards[-1]["num_records"] += 1
        self._ids[cid] = None
        self._total_seconds += float(record["duration"])
        self._add_groups(record.get("groups") or {})
        for name, acc in self._sums.items():
            # The stored float16 values, as training reads them.
            feat = np.asarray(record[name], np.float16).astype(np.float64)
            acc[0] += feat.shape[0]
            acc[1] += feat.sum(axis=0)
            acc[2] += np.square(feat).sum(axis=0)

    def _add_groups(self, groups: Mapping[str, Any]) -> None:
        n = len(self._ids)  # this record is number n - 1
        for field, value in groups.items():
            column = self._groups.setdefault(str(field), [])
            column.extend([None] * (n - 1 - len(column)))  # a field first seen now
            column.append(None if value is None or value == "" else str(value))
        for column in self._groups.values():
            column.extend([None] * (n - len(column)))  # a field this record lacks

    def skip(self, clip_id: str, reason: str) -> None:
        """Record that a clip was left out, and why."""
        self._skipped.append({"clip_id": str(clip_id), "reason": str(reason)})

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        shard = self._shards[-1]
        index = np.asarray(self._offsets, _INDEX_DTYPE)
        (self._tmp / shard["index"]).write_bytes(index.tobytes())
        shard["num_bytes"] = int(index[-1])

    def _open_shard(self) -> None:
        self._finish_shard()
        stem = f"shard-{len(self._shards):05d}"
        self._file = open(self._tmp / f"{stem}.records", "wb")  # noqa: SIM115
        self._offsets = [0]
        self._shards.append({"file": f"{stem}.records", "index": f"{stem}.index", "num_records": 0})

    def close(self) -> paths.PathLike:
        """Finish the last shard, write the manifest and move the store into place."""
        if self._tmp is None:
            raise RuntimeError("StoreWriter is not open")
        self._finish_shard()
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
        if self._groups:
            manifest["clip_groups"] = self._groups
        manifest["feature_stats"] = {
            name: stats_from_sums(*acc) for name, acc in self._sums.items()
        }
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if self.remote:
            self._upload()
            return self.out_dir
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

    def _upload(self) -> None:
        """Shards first, the manifest last; on failure remove what was uploaded."""
        names = [n for s in self._shards for n in (s["file"], s["index"])]
        done: list[str] = []
        try:
            if self.overwrite and paths.exists(self.out_dir / MANIFEST):
                (self.out_dir / MANIFEST).unlink()  # the old store is gone from here on
            for name in [*names, MANIFEST]:
                paths.upload(self._tmp / name, self.out_dir / name)
                done.append(name)
        except BaseException:
            for name in done:
                try:
                    (self.out_dir / name).unlink()
                except OSError:
                    pass
            raise
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class Store:
    """Random-access view of a store: `len(store)`, `store[i]` -> record dict.

    Picklable (grain ships it to worker processes): shard indexes and file handles are opened
    lazily in each process. `bytes_read` counts the record bytes this process has read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.remote = paths.is_url(path)
        self.path = paths.as_path(path) if self.remote else Path(path)
        manifest_file = self.path / MANIFEST
        try:
            text = paths.read_text(manifest_file)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no feature store at {self.path} (missing {MANIFEST})"
            ) from None
        except Exception as err:  # object storage: no bucket, no credentials, ...
            raise paths.StorageError(
                f"store {self.path}: cannot read {MANIFEST}: {paths.explain(err, self.path)}"
            ) from None
        self.manifest: dict[str, Any] = json.loads(text)
        version = self.manifest.get("version")
        if version != STORE_VERSION:
            raise ValueError(
                f"store {self.path} has format version {version}; this version of amylm_jax "
                f"reads version {STORE_VERSION}. Rebuild it with `python -m amylm_jax.prepare` "
                "(the per-clip feature cache makes a rebuild quick)."
            )
        self._clip_ids: list[str] | None = None
        self._starts = np.cumsum([0] + [int(s["num_records"]) for s in self.manifest["shards"]])
        self._reset()

    def _reset(self) -> None:
        self._indexes: dict[int, np.ndarray] = {}
        self._handles: dict[int, int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0

    def __getstate__(self) -> dict[str, Any]:
        keep = ("remote", "path", "manifest", "_clip_ids", "_starts")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def shard_paths(self) -> list[Any]:
        """Record files of the shards, in record order."""
        return [self.path / s["file"] for s in self.manifest["shards"]]

    def _index(self, shard: int) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is None:
            spec = self.manifest["shards"][shard]
            try:
                raw = paths.read_bytes(self.path / spec["index"])
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"store {self.path} is missing shard index {spec['index']}"
                ) from None
            index = np.frombuffer(raw, _INDEX_DTYPE)
            if index.size != int(spec["num_records"]) + 1:
                raise ValueError(
                    f"store {self.path}: {spec['index']} lists {index.size - 1} records, "
                    f"manifest says {spec['num_records']}"
                )
            with self._lock:
                self._indexes[shard] = index
        return index

    def _read(self, shard: int, start: int, end: int) -> bytes:
        target = self.path / self.manifest["shards"][shard]["file"]
        if self.remote:
            data = paths.read_range(target, start, end)
        else:
            with self._lock:
                fd = self._handles.get(shard)
                if fd is None:
                    try:
                        fd = os.open(target, os.O_RDONLY)
                    except FileNotFoundError:
                        raise FileNotFoundError(
                            f"store {self.path} is missing shard {target.name}"
                        ) from None
                    self._handles[shard] = fd
            data = os.pread(fd, end - start, start)
        if len(data) != end - start:
            raise ValueError(f"store {self.path}: {target.name} is truncated")
        with self._lock:
            self.bytes_read += len(data)
        return data

    def __len__(self) -> int:
        return int(self.manifest["num_clips"])

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, position in the shard)`` of record ``index``."""
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def read_bytes(self, index: int) -> bytes:
        """Raw serialised record `index` (0-based across shards)."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for a store of {len(self)} clips")
        shard, pos = self.locate(index)
        offsets = self._index(shard)
        return self._read(shard, int(offsets[pos]), int(offsets[pos + 1]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self.read_bytes(int(index)))

    def size_bytes(self) -> int:
        """Total bytes of the record files (from the manifest)."""
        return sum(int(s.get("num_bytes", 0)) for s in self.manifest["shards"])

    @property
    def clip_ids(self) -> list[str]:
        """Clip ids in record order (from the manifest, so no record is read)."""
        if self._clip_ids is None:
            ids = self.manifest.get("clip_ids") or [self[i]["clip_id"] for i in range(len(self))]
            self._clip_ids = [str(c) for c in ids]
        return self._clip_ids

    @property
    def group_fields(self) -> list[str]:
        """The grouping fields the manifest lists per clip (e.g. ``speaker``, ``source``)."""
        return sorted(self.manifest.get("clip_groups") or {})

    def clip_groups(self, field: str) -> list[str | None]:
        """Value of grouping field ``field`` per record (None where a clip lacks it).

        Raises KeyError naming the fields the store has when it has no ``field``.
        """
        groups = self.manifest.get("clip_groups") or {}
        if field not in groups:
            have = ", ".join(sorted(groups)) or "none"
            raise KeyError(
                f"store {self.path} lists no grouping field {field!r} per clip (it has: {have}); "
                "add the field to the alignment manifest's records and rebuild the store"
            )
        values = groups[field]
        if len(values) != len(self):
            raise ValueError(
                f"store {self.path}: clip_groups[{field!r}] has {len(values)} values "
                f"for {len(self)} clips"
            )
        return values

    def feature_stats(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension ``(mean, std)`` (float32) of teacher feature ``name`` over every frame
        of every clip, written by the store's builder."""
        stats = (self.manifest.get("feature_stats") or {}).get(name)
        if stats is None:
            raise ValueError(
                f"store {self.path} has no feature statistics (it was built before they were "
                "written); rebuild it with `python -m amylm_jax.prepare` (the per-clip feature "
                "cache makes this quick) to normalise distillation targets"
            )
        return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)

    @property
    def wavlm_dim(self) -> int:
        return int(self.manifest["wavlm_dim"])

    @property
    def llm_dim(self) -> int:
        return int(self.manifest["llm_dim"])

    def __del__(self) -> None:
        for fd in getattr(self, "_handles", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def open_store(path: str | os.PathLike) -> Store:
    """Open an existing store directory (see ``data.demo.resolve_store`` for "demo")."""
    return Store(path)


def check_store(path: str | os.PathLike) -> dict[str, Any]:
    """Read every record and verify the store against its manifest (local path or URL).

    Returns a report (clips, seconds, dims, shards, skipped); raises `ValueError` naming the
    first bad clip or the inconsistent count/shard, `FileNotFoundError` for a missing store.
    """
    store = open_store(path)
    m = store.manifest
    for key in ("version", "num_clips", "wavlm_dim", "llm_dim", "shards", "skipped", "clip_ids"):
        if key not in m:
            raise ValueError(f"store {store.path}: manifest lacks {key!r}")
    for spec in m["shards"]:
        for key in ("file", "index"):
            if not paths.exists(store.path / spec[key]):
                raise ValueError(f"store {store.path}: missing shard {spec[key]}")
    seen: list[str] = []
    seen_set: set[str] = set()
    total = 0.0
    n = 0
    for shard, spec in enumerate(m["shards"]):
        offsets = store._index(shard)  # noqa: SLF001 - checks the count against the manifest
        data = paths.read_bytes(store.path / spec["file"])
        if len(data) != int(offsets[-1]):
            raise ValueError(
                f"store {store.path}: shard {spec['file']} has {len(data)} bytes, its index "
                f"says {int(offsets[-1])}"
            )
        for pos in range(int(spec["num_records"])):
            rec = decode_record(data[int(offsets[pos]) : int(offsets[pos + 1])])
            validate_record(rec, store.wavlm_dim, store.llm_dim)
            if rec["clip_id"] in seen_set:
                raise ValueError(f"clip {rec['clip_id']!r}: duplicate clip_id")
            seen.append(rec["clip_id"])
            seen_set.add(rec["clip_id"])
            total += rec["duration"]
            n += 1
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


def locate_store(path: str | os.PathLike) -> Any:
    """The store folder at ``path`` (local or URL); a clear error if there is no store there."""
    if paths.is_url(path):
        where = paths.check_readable(path, "store")
        if not paths.exists(where / MANIFEST):
            raise FileNotFoundError(
                f"no feature store at {str(where)!r} (no {MANIFEST}). Pass a folder written by "
                "`python -m amylm_jax.prepare`."
            )
        return str(where)
    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no feature store at {str(path)!r} (no {MANIFEST}). Pass the directory written by "
            "`python -m amylm_jax.prepare` (an aligned feature store), or 'demo' for the "
            "bundled demo corpus."
        )
    return path
