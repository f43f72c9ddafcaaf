"""Metric aggregation and writers with the cheat-sheet names (SPEC §7.4, LOSS_CHEATSHEET.md).

Per step the trainer emits ``train/<name>`` scalars; :class:`MetricWriter` writes them as
``train/<name>_step`` and, at the end of each epoch, the batch-size-weighted means as
``train/<name>_epoch`` (``sum_i v_i B_i / sum_i B_i``). Everything goes to
``WORKDIR/metrics.jsonl`` (one JSON object per record, with ``step`` and, for epoch records,
``epoch``), to TensorBoard event files and optionally to Weights & Biases. Only process 0
writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("amylm_jax.metrics")

METRICS_FILE = "metrics.jsonl"


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
    """``train/x`` -> ``train/x_step`` for the seven loss names and the D accuracies."""
    return {_suffixed(k, "_step"): v for k, v in metrics.items()}


def epoch_record(means: Mapping[str, float]) -> dict[str, float]:
    return {_suffixed(k, "_epoch"): v for k, v in means.items()}


def _suffixed(key: str, suffix: str) -> str:
    if key.startswith("train/") and key.count("/") == 1:
        return key + suffix
    return key


def truncate_after(workdir: str, step: int) -> int:
    """Drop records with ``step`` > ``step`` (re-run after a resume); returns how many."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                dropped += 1
                continue
            if int(rec.get("step", 0)) > step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return dropped


def read_metrics(path: str) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a workdir is accepted too)."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Writes records to metrics.jsonl, TensorBoard and (optionally) W&B on process 0."""

    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        self._file = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError(
                    "config.wandb_project is set but wandb is not installed (pip install wandb)"
                ) from err
            self._wandb = wandb.init(project=wandb_project, config=dict(config or {}))

    def write(self, step: int, record: Mapping[str, Any], epoch: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in record.items()}
        line = {"step": int(step), **({"epoch": int(epoch)} if epoch is not None else {}), **clean}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        for k, v in clean.items():
            if isinstance(v, float) and math.isfinite(v):
                if self._tb is not None:
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if isinstance(v, float)}, step=step)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """A ``{"step": 0, "config": ...}`` record (read by the health report)."""
        if self.enabled:
            self._file.write(json.dumps({"step": 0, "config": config}) + "\n")
            self._file.flush()

    def audio(self, step: int, tag: str, wave: np.ndarray, rate: int = 24000) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_audio(tag, np.clip(wave, -1, 1), step, sample_rate=rate)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)) or (hasattr(v, "ndim") and v.ndim == 0):
        v = float(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return v
