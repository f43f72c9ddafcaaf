"""Reading a run's metrics: a workdir (its metric log), a ``metrics.jsonl`` or pasted lines.

A workdir's metrics may live in one local ``metrics.jsonl`` or, on object storage, in rolling
part files (:mod:`amylm_jax.metrics`); both read the same. A text file of
``train/name:value`` lines as pasted from a log is accepted too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from amylm_jax import paths
from amylm_jax.metrics import metric_log_text
from amylm_jax.report.rules import canonical_name


@dataclasses.dataclass
class RunLog:
    """A run's metrics keyed by canonical name (``llm_epoch`` for both step and epoch series).

    ``epochs[name]`` and ``steps[name]`` are ``(epoch or step, value)`` pairs sorted by x, the
    latest write winning for a repeated x (a resumed run re-logs some steps).
    """

    source: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    steps: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    validation: dict[str, float] = dataclasses.field(default_factory=dict)
    # Curves by full metric name, (step, value) sorted by step: the periodic objective
    # evaluation (``eval/<decode>/<metric>``, ``eval/codebook/<stat>_<k>``) and the gradient
    # shares (``train/grad_share/<loss>``, step values).
    curves: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    skipped_lines: int = 0
    epochs_numbered: bool = True  # False when epoch records carry no "epoch" (pasted lines)
    # A curriculum run: the phase of the latest record (``config`` is then that phase's).
    curriculum_phase: str | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _read_jsonl(path: Any, text: str) -> tuple[list[dict[str, Any]], int]:
    lines = text.splitlines()
    records, skipped = [], 0
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):  # a partly written last line of a live run
                skipped += 1
                continue
            raise ValueError(f"{path}:{i}: not a JSON line ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records, skipped


def _read_text(path: Any, text: str) -> list[dict[str, Any]]:
    record: dict[str, Any] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("```"):
            continue
        sep = ":" if ":" in line else "="
        name, _, raw = line.rpartition(sep)
        try:
            record[name.strip()] = float(raw)
        except ValueError:
            raise ValueError(f"{path}:{i}: expected 'train/name:value', got {line!r}") from None
    if not record:
        raise ValueError(f"{path}: no metric lines found")
    return [record]


def phase_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A curriculum run's logged config as phase ``name`` trains: its overrides applied."""
    out = copy.deepcopy(dict(config))
    for phase in out.get("phases") or ():
        if isinstance(phase, Mapping) and phase.get("name") == name:
            overrides = phase.get("overrides") or ()
            items = overrides.items() if isinstance(overrides, Mapping) else overrides
            for key, value in items:
                *parents, leaf = str(key).split(".")
                node = out
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value
    return out


def records_to_log(records: Sequence[Mapping[str, Any]], source: str) -> RunLog:
    """Sort records into epoch, step and validation series; unrelated keys are ignored."""
    log = RunLog(source=source)
    epochs: dict[str, dict[int, float]] = {}
    steps: dict[str, dict[int, float]] = {}
    curves: dict[str, dict[int, float]] = {}
    n_epoch_records = 0
    for index, record in enumerate(records):
        if isinstance(record.get("config"), Mapping):
            log.config = dict(record["config"])
        if isinstance(record.get("phase"), str):
            log.curriculum_phase = record["phase"]
        step = _number(record.get("step"))
        x_step = int(step) if step is not None else index
        has_epoch_key = False
        for key, raw in record.items():
            value = _number(raw)
            if value is None or not isinstance(key, str):
                continue
            if key.startswith("eval/"):
                curves.setdefault(key, {})[x_step] = value
            elif key.startswith("train/grad_share/") and not key.endswith("_epoch"):
                curves.setdefault(key.removesuffix("_step"), {})[x_step] = value
            elif key.startswith("val/"):
                log.validation[key.removeprefix("val/")] = value
            elif key.startswith("train/") and key.endswith("_epoch"):
                has_epoch_key = True
                epoch = _number(record.get("epoch"))
                log.epochs_numbered &= epoch is not None
                x_epoch = int(epoch) if epoch is not None else n_epoch_records
                epochs.setdefault(canonical_name(key), {})[x_epoch] = value
            elif key.startswith("train/") and key.endswith("_step"):
                steps.setdefault(canonical_name(key), {})[x_step] = value
        n_epoch_records += has_epoch_key
    if log.curriculum_phase is not None:
        log.config = phase_config(log.config, log.curriculum_phase)
    log.epochs = {k: sorted(v.items()) for k, v in epochs.items()}
    log.steps = {k: sorted(v.items()) for k, v in steps.items()}
    log.curves = {k: sorted(v.items()) for k, v in curves.items()}
    return log


def load_run(path: paths.PathLike) -> RunLog:
    """Read a workdir (local or URL), a ``metrics.jsonl`` or a ``train/name:value`` text file.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it cannot be read.
    """
    path = paths.as_path(path)
    try:
        if path.is_dir():
            text = metric_log_text(path)
        else:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise FileNotFoundError(str(err)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read metrics of {path}: {err}") from None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if first.startswith("{"):
        records, skipped = _read_jsonl(path, text)
    else:
        records, skipped = _read_text(path, text), 0
    log = records_to_log(records, source=str(path))
    log.skipped_lines = skipped
    return log
