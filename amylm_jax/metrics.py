"""Metric aggregation and writers with the public metric names (docs/metrics.md).

Per step the trainer emits ``train/<name>`` scalars; :class:`MetricWriter` writes them as
``train/<name>_step`` and, at the end of each epoch, the batch-size-weighted means as
``train/<name>_epoch`` (``sum_i v_i B_i / sum_i B_i``), the names and averaging of the original
trainer, so its metric bands apply unchanged. Everything goes to the workdir's metric log
(:class:`MetricLog`: ``metrics.jsonl`` locally, rolling part files on object storage; each
record one JSON object with ``step`` and, for epoch records, ``epoch``), to TensorBoard event
files and optionally to Weights & Biases. Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorboardX import record_writer

from amylm_jax import paths
from amylm_jax.config import TrainConfig

log = logging.getLogger("amylm_jax.metrics")

METRICS_FILE = "metrics.jsonl"
PARTS_DIR = "metrics"
TENSORBOARD_DIR = "tensorboard"


class EpochAccumulator:
    """Batch-size-weighted running sums of per-step scalars (checkpointable as a dict)."""

    def __init__(self, state: Mapping[str, Any] | None = None):
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.weight: float = float(state.get("weight", 0.0))

    def add(self, metrics: Mapping[str, float], batch_size: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * batch_size
        self.weight += batch_size

    def means(self) -> dict[str, float]:
        if self.weight == 0:
            return {}
        return {k: v / self.weight for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "weight": self.weight}


def step_record(metrics: Mapping[str, float]) -> dict[str, float]:
    """``train/x`` -> ``train/x_step`` (``train/codebook/usage_0`` -> ``..._step`` too)."""
    return {_suffixed(k, "_step"): v for k, v in metrics.items()}


def epoch_record(means: Mapping[str, float]) -> dict[str, float]:
    """``train/x`` -> ``train/x_epoch``: epoch means never share a name with step values."""
    return {_suffixed(k, "_epoch"): v for k, v in means.items()}


def _suffixed(key: str, suffix: str) -> str:
    return key + suffix if key.startswith("train/") else key


def truncate_after(workdir: paths.PathLike, step: int) -> int:
    """Drop records with ``step`` > ``step`` (re-run after a resume); returns how many."""
    log = MetricLog(workdir, background=False)
    try:
        return log.truncate_after(step)
    finally:
        log.close()


def _parse_lines(text: str) -> tuple[list[str], int]:
    """Whole JSON lines of ``text`` (newline-terminated) and the count of broken ones."""
    good, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            bad += 1
            continue
        good.append(line + "\n")
    return good, bad


class MetricLog:
    """The durable, line-per-record metric log of a workdir, local or on object storage.

    Local workdirs keep one ``metrics.jsonl``, appended and flushed at every write. Object
    stores cannot append, so there the log is a folder of rolling part files,
    ``metrics/part-NNNNN.jsonl`` of at most ``part_records`` lines each: the current part is
    re-uploaded whole after each write by a background thread (so the step never waits for the
    network), and :meth:`flush` waits for the upload (the trainer calls it before every
    checkpoint and at exit, so no record at or before a checkpoint can be lost). Both forms
    read back the same through :func:`metric_log_text`.
    """

    def __init__(self, workdir: paths.PathLike, part_records: int = 200, background: bool = True):
        self.root = paths.as_path(workdir)
        self.remote = paths.is_url(self.root)
        self.part_records = part_records
        self._file = None
        self._lines: list[str] = []
        self._part = 0
        self._dirty = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread = None
        if not self.remote:  # created at once: a run's log exists from its first moment
            self.root.mkdir(parents=True, exist_ok=True)
            self._file = open(self.root / METRICS_FILE, "a")  # noqa: SIM115
            return
        existing = _part_files(self.root)
        self._part = _part_index(existing[-1]) + 1 if existing else 0
        if background:
            self._thread = threading.Thread(target=self._uploader, daemon=True)
            self._thread.start()

    # -- writing
    def append(self, lines: Sequence[str]) -> None:
        if not self.remote:
            self._file.writelines(lines)
            self._file.flush()
            return
        with self._cond:
            self._raise_pending()
            for line in lines:
                if len(self._lines) >= self.part_records:
                    self._upload_locked()  # the full part is final; start the next one
                    self._part += 1
                    self._lines = []
                self._lines.append(line)
            self._dirty = True
            self._cond.notify()
        if self._thread is None:
            self.flush()

    def flush(self) -> None:
        """Make every appended line durable (waits for the upload on object storage)."""
        if not self.remote:
            if self._file is not None:
                self._file.flush()
            return
        with self._cond:
            self._raise_pending()
            if self._dirty:
                self._upload_locked()

    def _upload_locked(self) -> None:
        paths.write_text(self.root / PARTS_DIR / _part_name(self._part), "".join(self._lines))
        self._dirty = False

    def _uploader(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                try:
                    self._upload_locked()
                except Exception as err:  # re-raised in the training thread
                    self._error = err
                    return

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise OSError(f"writing metrics to {self.root} failed: {err}") from err

    # -- resume
    def truncate_after(self, step: int) -> int:
        """Drop records of steps after ``step`` and cut lines; returns how many were dropped."""
        if not self.remote:
            path = self.root / METRICS_FILE
            if not path.exists():
                return 0
            kept, dropped = _split_after(path.read_text(), step)
            if dropped:
                paths.write_text(path, "".join(kept))
            return dropped
        dropped = 0
        for part in _part_files(self.root):
            kept, n = _split_after(paths.read_text(part), step)
            if n:
                dropped += n
                if kept:
                    paths.write_text(part, "".join(kept))
                else:
                    part.unlink()
        return dropped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.remote:
            self.flush()
            with self._cond:
                self._closing = True
                self._cond.notify()
            if self._thread is not None:
                self._thread.join()


def _split_after(text: str, step: int) -> tuple[list[str], int]:
    lines, dropped = _parse_lines(text)
    kept = [ln for ln in lines if int(json.loads(ln).get("step", 0)) <= step]
    return kept, dropped + len(lines) - len(kept)


def _part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def _part_index(path: Any) -> int:
    """The number of a part file, from its path or its name (``part-00012.jsonl`` -> 12)."""
    name = path if isinstance(path, str) else path.name
    return int(name.removeprefix("part-").removesuffix(".jsonl"))


def _part_files(root: Any) -> list[Any]:
    """The part files of a metric log, in order, listed fresh (the trainer may be adding)."""
    names = paths.list_names(root / PARTS_DIR)
    return [
        root / PARTS_DIR / n
        for n in sorted(
            (n for n in names if n.startswith("part-") and n.endswith(".jsonl")),
            key=_part_index,
        )
    ]


def has_metric_log(workdir: paths.PathLike) -> bool:
    root = paths.as_path(workdir)
    return paths.exists(root / METRICS_FILE) or bool(_part_files(root))


def metric_log_text(workdir: paths.PathLike) -> str:
    """All lines of a workdir's metric log (``metrics.jsonl`` or its part files), in order."""
    root = paths.as_path(workdir)
    texts = []
    if paths.exists(root / METRICS_FILE):
        texts.append(paths.read_text(root / METRICS_FILE))
    for part in _part_files(root):
        texts.append(paths.read_text(part))
    if not texts:
        raise FileNotFoundError(
            f"{root} is a directory without {METRICS_FILE} (or {PARTS_DIR}/ part files)"
        )
    return "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts)


def read_metrics(path: paths.PathLike) -> list[dict[str, Any]]:
    """All whole records of a workdir's metric log, or of one ``metrics.jsonl`` file."""
    p = paths.as_path(path)
    is_file = p.name.endswith(".jsonl") and paths.exists(p) and not p.is_dir()
    text = paths.read_text(p) if is_file else None
    lines, _ = _parse_lines(text if text is not None else metric_log_text(p))
    return [json.loads(line) for line in lines]


class MetricWriter:
    """Writes records to the metric log, TensorBoard and (optionally) W&B on process 0."""

    def __init__(
        self,
        workdir: paths.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.tags: dict[str, Any] = {}
        self._tb = None
        self._wandb = None
        self._log: MetricLog | None = None
        if not enabled:
            return
        root = paths.as_path(workdir)
        self._log = MetricLog(root)
        if tensorboard:
            self._tb = tensorboard_writer(root / TENSORBOARD_DIR)
        if wandb_project:
            try:
                import wandb  # optional dependency: only with config.wandb_project
            except ImportError as err:
                raise ImportError(
                    "config.wandb_project is set but wandb is not installed (pip install wandb)"
                ) from err
            self._wandb = wandb.init(project=wandb_project, config=dict(config or {}))

    def write(self, step: int, record: Mapping[str, Any], epoch: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in record.items()}
        line = {"step": int(step), **({"epoch": int(epoch)} if epoch is not None else {})}
        line.update(self.tags)  # e.g. the curriculum phase, in the JSON log only
        line.update(clean)
        self._log.append([json.dumps(line) + "\n"])
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """A ``{"step": 0, "config": ...}`` record (read by the health report)."""
        if self.enabled:
            self._log.append([json.dumps({"step": 0, "config": config}) + "\n"])

    def audio(self, step: int, tag: str, wave: np.ndarray, rate: int = 24000) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_audio(tag, np.clip(wave, -1, 1), step, sample_rate=rate)

    def flush(self) -> None:
        """Make everything written so far durable (before a checkpoint, at exit)."""
        if self._log is not None:
            self._log.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class _UrlEventFile:
    """A TensorBoard event file on object storage: buffered, uploaded whole at each flush."""

    def __init__(self, path: str):
        self.path, self.buffer = path, io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        paths.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _UrlEventFileFactory:
    def open(self, path: str) -> _UrlEventFile:
        return _UrlEventFile(path)

    def directory_check(self, path: str) -> None:
        del path  # object stores have no folders to create


class TensorBoardFile:
    """A TensorBoard event file written in the caller's thread (``add_scalar``/``add_audio``
    as tensorboardX's ``SummaryWriter``).

    tensorboardX's own writer hands each event to a background thread through a bounded
    queue; if that thread stops, the training loop blocks forever on the eleventh event. Here
    an event is encoded and appended where it is made (microseconds for a scalar), and
    :meth:`flush` makes the file durable at the trainer's own flush points.
    """

    def __init__(self, logdir: paths.PathLike):
        from tensorboardX.event_file_writer import EventsWriter

        if paths.is_url(logdir):
            _register_url_event_writer(str(logdir).split("://", 1)[0])
            logdir = str(logdir)
        else:
            logdir = str(paths.as_path(logdir))
        record_writer.directory_check(logdir)
        self._events = EventsWriter(f"{logdir.rstrip('/')}/events")

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX import summary

        self._write(step, summary.scalar(tag, float(value)))

    def add_audio(self, tag: str, wave: np.ndarray, step: int, sample_rate: int) -> None:
        from tensorboardX import summary

        self._write(step, summary.audio(tag, np.asarray(wave), sample_rate=sample_rate))

    def _write(self, step: int, value: Any) -> None:
        from tensorboardX.proto import event_pb2

        event = event_pb2.Event(summary=value, step=int(step), wall_time=time.time())
        self._events.write_event(event)

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()


def tensorboard_writer(logdir: paths.PathLike) -> TensorBoardFile:
    """The TensorBoard event file of a local folder or a URL (object storage)."""
    return TensorBoardFile(logdir)


def _register_url_event_writer(scheme: str) -> None:
    """Route tensorboardX's event files for ``scheme://`` through :mod:`amylm_jax.paths`."""
    record_writer.register_writer_factory(scheme, _UrlEventFileFactory())


def codebook_usage(codebooks: Any, cfg: TrainConfig) -> dict[str, float]:
    """``val/codebook/usage_g``: fraction of codes with EMA usage > 0.1 x mean (active slots)."""
    q = cfg.codec.quantizer
    out = {}
    for name, _, offset, n in q.sub_quantizers():
        for layer in range(n):
            usage = np.asarray(codebooks["quantizer"][name][f"layers_{layer}"]["cluster_usage"])
            out[f"val/codebook/usage_{offset + layer}"] = float(np.mean(usage > 0.1 * usage.mean()))
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)) or (hasattr(v, "ndim") and v.ndim == 0):
        v = float(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return v
