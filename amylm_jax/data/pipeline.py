"""Grain input pipeline: split by clip, crop, batch, shard per process, checkpointable.

The original collator (docs/original.md §9.3) drew an arbitrary sample start and started the
features at
`floor(start / 1920)`, so targets led the audio by up to 80 ms (D3). By default the start is a
multiple of 1920 samples (one 12.5 Hz frame) and audio and features line up exactly;
`frame_aligned_crops=False` restores the original draw for parity runs.

Determinism without hidden state, and the same data for any number of processes: there is
one global example order, a pure function of `(cfg, j)` for global example index `j`: epoch
`e = j // n_train`, a permutation of the training clips seeded by `(seed, shuffle tag, e)`
and a crop start seeded by `(seed, crop tag, e, clip_index)`. Epochs follow each other in
this stream with nothing dropped: every clip is used exactly once per epoch, as in the
original (whose last batch of an epoch was smaller). Batches keep one static shape instead: a
batch that straddles two epochs takes its last rows from the next epoch's order, and
`steps_per_epoch = ceil(n_train / batch_size)` is the trainer's epoch length for its means.
Global step `s` is global examples
`[s B, (s + 1) B)`; process `p` of `P` takes rows `[p B/P, (p + 1) B/P)` of it, so the P
per-process batches of a step, concatenated in process order, are exactly the single-process
batch of that step (multi-host training sees the same data as one host), and within an epoch
the processes get disjoint clips.

Grain maps global step indices to per-process batches (workers parallelise over batches). The
training iterator's state is the next global step, `{"step": s}`, the same on every process:
`get_state()`/`set_state()` (saved by orbax through grain's checkpoint handler) resume at the
exact next batch, with or without worker processes, and `start_step=s` rejoins the same data
position after a restore with a different process count.

Batches (docs/CONTRACTS.md): `audio [B, N]`, `wavlm [B, T, Dw]`, `llm [B, T, Dl]`,
`mask [B, T]` (1 = frame inside the clip) and `weight [B]` (0 = padding example), all float32,
with `B = batch_size // process_count` per process.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from amylm_jax.config import DataConfig
from amylm_jax.data.audio import int16_to_float
from amylm_jax.data.demo import resolve_store
from amylm_jax.data.store import (
    FRAME_RATE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Store,
    open_store,
)

# Distinct tags keep the shuffle and crop random streams independent of each other.
_SHUFFLE_TAG, _CROP_TAG = 1, 2


def segment_samples(cfg: DataConfig) -> int:
    """Crop length N in 24 kHz samples (24000 for the 1 s default)."""
    return round(cfg.segment_seconds * SAMPLE_RATE)


def segment_frames(cfg: DataConfig) -> int:
    """Crop length T in 12.5 Hz frames, `ceil(segment_seconds * 12.5)` (13 for 1 s)."""
    return math.ceil(round(cfg.segment_seconds * FRAME_RATE, 6))


def _open(store: Store | str) -> Store:
    return store if isinstance(store, Store) else open_store(resolve_store(store))


def split_clips(store: Store, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation record indices (sorted int64 arrays), split by clip or by group.

    With `cfg.val_clips` the validation set is exactly those clips (unknown ids are an error);
    otherwise `round(n * val_fraction)` clips drawn with `split_seed` (at least one when the
    fraction is positive and the store has two or more clips).

    With `cfg.val_group_by` (a grouping field of the store, see `Store.clip_groups`) the split
    is over groups: listed `val_clips` bring their whole groups into validation; otherwise
    groups drawn in `split_seed` order join validation until it holds at least
    `round(n * val_fraction)` clips (never every group). A clip without a value for the field
    is a group of its own.
    """
    n = len(store)
    groups = _group_ids(store, cfg.val_group_by) if cfg.val_group_by else np.arange(n)
    if cfg.val_clips:
        where = {cid: i for i, cid in enumerate(store.clip_ids)}
        unknown = [c for c in cfg.val_clips if c not in where]
        if unknown:
            raise ValueError(f"val_clips not in store {store.path}: {unknown[:5]}")
        chosen = groups[[where[c] for c in cfg.val_clips]]
        val = np.flatnonzero(np.isin(groups, chosen)).astype(np.int64)
    else:
        if not 0.0 <= cfg.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
        n_val = round(n * cfg.val_fraction)
        if cfg.val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        if not cfg.val_group_by:
            perm = np.random.default_rng(cfg.split_seed).permutation(n)
            val = np.sort(perm[:n_val]).astype(np.int64)
        else:
            unique, sizes = np.unique(groups, return_counts=True)
            order = np.random.default_rng(cfg.split_seed).permutation(len(unique))
            taken = np.cumsum(sizes[order])
            count = int(np.searchsorted(taken, n_val)) + 1 if n_val else 0
            count = min(count, len(unique) - 1)  # training keeps at least one group
            val = np.flatnonzero(np.isin(groups, unique[order[:count]])).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val)
    return train, val


def _group_ids(store: Store, field: str) -> np.ndarray:
    """Integer group of each record by `field`; clips without a value are groups of their own."""
    try:
        values = store.clip_groups(field)
    except KeyError as err:
        raise ValueError(f"data.val_group_by={field!r}: {err.args[0]}") from None
    ids: dict[str, int] = {}
    out = np.empty(len(values), np.int64)
    for i, value in enumerate(values):
        key = f"value:{value}" if value is not None else f"clip:{i}"
        out[i] = ids.setdefault(key, len(ids))
    return out


def _local_batch(cfg: DataConfig, process_count: int) -> int:
    if process_count < 1 or cfg.batch_size % process_count:
        raise ValueError(
            f"global batch_size {cfg.batch_size} must be divisible by process_count {process_count}"
        )
    return cfg.batch_size // process_count


def _steps(n_train: int, cfg: DataConfig, process_count: int) -> int:
    _local_batch(cfg, process_count)  # the global batch must split evenly over the processes
    if n_train < cfg.batch_size:
        return 0
    return -(-n_train // cfg.batch_size)


def steps_per_epoch(cfg: DataConfig, process_count: int = 1, store: Store | None = None) -> int:
    """Training steps per epoch, `ceil(n_train / batch_size)` for any process count.

    Every clip is used once per epoch (see the module docstring); `process_count` is only
    checked to divide the global batch.
    """
    store = store or _open(cfg.store)
    train, _ = split_clips(store, cfg)
    return _steps(len(train), cfg, process_count)


def crop_start(
    num_samples: int, cfg: DataConfig, rng: np.random.Generator | None, training: bool = True
) -> int:
    """Crop start in samples (docs/original.md §9.3 step 2 with the D3 fix unless switched off).

    Aligned: a uniform frame index k in `[0, (L - N) // 1920]`, start = 1920 k (the crop fits).
    Parity: uniform in `[0, L - N)` as the original. Validation and short clips start at 0.
    """
    n = segment_samples(cfg)
    if not training or num_samples <= n:
        return 0
    if cfg.frame_aligned_crops:
        return int(rng.integers(0, (num_samples - n) // SAMPLES_PER_FRAME + 1)) * SAMPLES_PER_FRAME
    return int(rng.integers(0, num_samples - n))


# Floor of the per-dimension std when standardising targets: a constant dimension maps to 0.
_STD_FLOOR = 1e-5


def target_stats(store: Store, cfg: DataConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{feature: (mean, std)}`` for the targets `cfg` standardises (empty when none)."""
    names = [n for n, on in (("wavlm", cfg.normalize_wavlm_targets),
                             ("llm", cfg.normalize_llm_targets)) if on]  # fmt: skip
    out = {}
    for name in names:
        if name == "llm" and store.llm_dim == 0:
            continue  # a store without LLM features: nothing to standardise
        mean, std = store.feature_stats(name)
        out[name] = (mean, np.maximum(std, _STD_FLOOR))
    return out


def crop_example(
    record: dict[str, Any],
    start: int,
    cfg: DataConfig,
    stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Cut one example from a store record at `start` samples (§9.3 step 6), zero padded.

    Features start at frame `start // 1920`; `mask[t] = 1` for frames inside the clip's
    `T_full` frames, so losses may ignore zero padding (D19 keeps them in by default).
    Features named in `stats` (see `target_stats`) become `(x - mean) / std` on the clip's own
    frames; padding frames stay zero.
    """
    stats = stats or {}
    n, t = segment_samples(cfg), segment_frames(cfg)
    audio = np.zeros(n, np.float32)
    piece = record["audio"][start : start + n]
    audio[: piece.size] = int16_to_float(piece)
    f0 = start // SAMPLES_PER_FRAME
    out = {"audio": audio}
    t_full = record["wavlm"].shape[0]
    for name in ("wavlm", "llm"):
        feat = np.zeros((t, record[name].shape[1]), np.float32)
        rows = record[name][f0 : f0 + t]
        if name in stats:
            mean, std = stats[name]
            rows = (rows.astype(np.float32) - mean) / std
        feat[: rows.shape[0]] = rows
        out[name] = feat
    out["mask"] = (np.arange(f0, f0 + t) < t_full).astype(np.float32)
    out["weight"] = np.float32(1.0)
    return out


def padding_example(cfg: DataConfig, wavlm_dim: int, llm_dim: int) -> dict[str, np.ndarray]:
    """An all-zero example with `weight = 0` (fills the last validation batch)."""
    n, t = segment_samples(cfg), segment_frames(cfg)
    return {
        "audio": np.zeros(n, np.float32),
        "wavlm": np.zeros((t, wavlm_dim), np.float32),
        "llm": np.zeros((t, llm_dim), np.float32),
        "mask": np.zeros(t, np.float32),
        "weight": np.float32(0.0),
    }


class _TrainBatch:
    """Global step -> this process's rows of the global batch (picklable, for grain workers)."""

    def __init__(
        self,
        store: Store,
        clips: np.ndarray,
        cfg: DataConfig,
        process_index: int,
        local_batch: int,
    ):
        self.store, self.clips, self.cfg = store, clips, cfg
        self.stats = target_stats(store, cfg)
        self.per_epoch = len(clips)  # an epoch is one pass over the clips
        self.process_index, self.local_batch = process_index, local_batch
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            if self.cfg.shuffle:
                key = [self.cfg.seed, _SHUFFLE_TAG, epoch]
                order = np.random.default_rng(key).permutation(len(self.clips))
            else:
                order = np.arange(len(self.clips))
            if len(self._orders) > 4:  # reader threads touch at most neighbouring epochs
                self._orders.clear()
            self._orders[epoch] = order
        return order

    def example(self, j: int) -> dict[str, np.ndarray]:
        """Global training example `j` (the same whatever the process count)."""
        epoch, pos = divmod(int(j), self.per_epoch)
        clip = int(self.clips[self._order(epoch)[pos]])
        record = self.store[clip]
        rng = np.random.default_rng([self.cfg.seed, _CROP_TAG, epoch, clip])
        start = crop_start(record["audio"].size, self.cfg, rng, training=True)
        return crop_example(record, start, self.cfg, self.stats)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = int(step) * self.cfg.batch_size + self.process_index * self.local_batch
        examples = [self.example(j) for j in range(first, first + self.local_batch)]
        return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


class _EvalExample:
    """Record index (or -1 for padding) -> validation example cropped at the clip start."""

    def __init__(self, store: Store, cfg: DataConfig):
        self.store, self.cfg = store, cfg
        self.stats = target_stats(store, cfg)

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        if index < 0:
            return padding_example(self.cfg, self.store.wavlm_dim, self.store.llm_dim)
        return crop_example(self.store[int(index)], 0, self.cfg, self.stats)


def _to_plain_arrays(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in batch.items()}


def _finish(ds: Any, cfg: DataConfig) -> Any:
    # Elements are whole batches: a small thread pool and buffer are plenty.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    if cfg.worker_count > 0:
        # Grain's worker processes read absl flags; outside an absl main (tests, notebooks)
        # nothing parsed them, so use their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
        # Workers hand back shared-memory arrays; copy them into ordinary arrays (a few MB per
        # batch) so their segments are released at once, not whenever the caller drops them.
        it_ds = it_ds.map(_to_plain_arrays)
    return it_ds


def make_train_dataset(
    cfg: DataConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    store: Store | None = None,
    start_step: int = 0,
) -> Any:
    """The infinite per-process training `grain.IterDataset` of batches (see module docstring).

    Element i is this process's rows of global step `start_step + i`; grain's own iterator
    state counts from `start_step`. `make_train_iterator` wraps it with an absolute step state.
    """
    store = store or _open(cfg.store)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    local_batch = _local_batch(cfg, process_count)
    train, _ = split_clips(store, cfg)
    steps = _steps(len(train), cfg, process_count)
    if steps == 0:
        raise ValueError(
            f"store {store.path} has {len(train)} training clips: too few for a global batch of "
            f"{cfg.batch_size} over {process_count} process(es); lower batch_size"
        )
    fn = _TrainBatch(store, train, cfg, process_index, local_batch)
    ds = grain.MapDataset.range(start_step, sys.maxsize).map(fn)
    return _finish(ds, cfg)


def make_train_iterator(
    cfg: DataConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    store: Store | None = None,
    start_step: int = 0,
) -> Any:
    """Endless iterator of per-process training batches from global step `start_step`.

    A `grain.DatasetIterator` (so grain's orbax checkpoint handler saves it) whose
    `get_state()` is `{"step": next global step}`, identical on every process and independent
    of `start_step` and `worker_count`: `set_state()` on any iterator of the same config resumes
    exactly, and after a restore with a different process count `start_step=restored_step`
    continues the same global data order.
    """
    store = store or _open(cfg.store)
    kw = {"process_index": process_index, "process_count": process_count, "store": store}
    make_train_dataset(cfg, start_step=start_step, **kw)  # a bad config fails here, not later
    open_at = functools.partial(_open_train_at, cfg, **kw)
    return _train_iterator_type()(open_at, start_step)


def _open_train_at(cfg: DataConfig, step: int, **kw: Any) -> Any:
    return iter(make_train_dataset(cfg, start_step=step, **kw))


@functools.cache
def _train_iterator_type() -> type:
    """The training iterator class (defined lazily: importing grain is slow)."""

    class TrainIterator(grain.DatasetIterator):
        """Next global step + a grain iterator opened there on first use."""

        def __init__(self, open_at: Callable[[int], Any], step: int):
            super().__init__()
            self._open_at, self._step, self._it = open_at, int(step), None

        def __next__(self) -> dict[str, np.ndarray]:
            self._assert_not_closed()
            if self._it is None:
                self._it = self._open_at(self._step)
            batch = next(self._it)
            self._step += 1
            return batch

        def get_state(self) -> dict[str, Any]:
            return {"step": self._step}

        def set_state(self, state: dict[str, Any]) -> None:
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError(f"not a training-iterator state (want {{'step': int}}): {state}")
            step = int(state["step"])
            if step < 0:
                raise ValueError(f"training-iterator step must be >= 0, got {step}")
            if step != self._step and self._it is not None:
                self._it.close()  # stops its worker processes; reopened lazily at `step`
                self._it = None
            self._step = step

        def start_prefetch(self) -> None:
            self._assert_not_closed()
            if self._it is None:
                self._it = self._open_at(self._step)
            self._it.start_prefetch()

        def close(self) -> None:
            if self._it is not None:
                self._it.close()
                self._it = None
            super().close()

    return TrainIterator


def eval_steps(cfg: DataConfig, process_count: int = 1, store: Store | None = None) -> int:
    """Validation batches per pass (the same on every process)."""
    store = store or _open(cfg.store)
    _, val = split_clips(store, cfg)
    return math.ceil(math.ceil(len(val) / process_count) / _local_batch(cfg, process_count))


def make_eval_iterator(
    cfg: DataConfig, *, process_index: int = 0, process_count: int = 1, store: Store | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's validation clips, cropped from the start of each clip.

    The last batch is padded to full size with `weight = 0` examples; every process yields
    `eval_steps(cfg, process_count)` batches so multi-host evaluation stays in lockstep.
    """
    store = store or _open(cfg.store)
    local_batch = _local_batch(cfg, process_count)
    _, val = split_clips(store, cfg)
    steps = eval_steps(cfg, process_count, store)
    items: Sequence[int] = [int(i) for i in val[process_index::process_count]]
    items = list(items) + [-1] * (steps * local_batch - len(items))
    if not items:
        return iter(())
    ds = grain.MapDataset.source(items).map(_EvalExample(store, cfg))
    return _closing(iter(_finish(ds.batch(local_batch, drop_remainder=False), cfg)))


def _closing(it: Any) -> Iterator[dict[str, np.ndarray]]:
    """Yield from a grain iterator and close it (stopping worker processes) when done."""
    try:
        yield from it
    finally:
        it.close()
