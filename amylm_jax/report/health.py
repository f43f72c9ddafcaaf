"""The loss health report of a run: status of each metric, phase, ratios, diagnoses.

:func:`build_report` turns a :class:`~amylm_jax.report.runlog.RunLog` into a JSON-ready dict
and :func:`format_report` into a table. Thresholds and fixes live in
:mod:`amylm_jax.report.rules`. When a metric has no epoch record yet, the mean of its last step
values stands in (and the report says so); a metric absent from the log is reported missing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from amylm_jax.report.rules import (
    AUDIO_TIP,
    CRITICAL,
    DEFAULT_ALPHAS,
    RULES,
    SEVERITY,
    Diagnosis,
    discriminator_balance,
    loss_g_cause,
    match_band,
    metric_diagnosis,
    trend_diagnosis,
    trend_of,
)
from amylm_jax.report.runlog import RunLog, _number

ADAPTATION, ADVERSARIAL, UNKNOWN = "adaptation", "adversarial fine-tuning", "unknown"
STEP_WINDOW = 50  # step values averaged when no epoch value exists yet
TREND_WINDOW = 5  # epochs the trend looks at
_DISC_METRICS = ("adv_g_epoch", "loss_d_epoch", "feat_epoch")
_ACC_METRICS = ("d_real_acc_epoch", "d_fake_acc_epoch")


def _config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """``config["loss"]["alpha_msspec"]`` or a flat ``config["loss.alpha_msspec"]``."""
    if dotted in config:
        return config[dotted]
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _alphas(config: Mapping[str, Any]) -> dict[str, float]:
    out = dict(DEFAULT_ALPHAS)
    for name in out:
        value = _number(_config_value(config, f"loss.alpha_{name}"))
        if value is not None:
            out[name] = value
    if _config_value(config, "loss.adversarial_only") is True:
        out["msspec"] = 0.0
    return out


def _llm_off(config: Mapping[str, Any]) -> bool:
    dim = _number(_config_value(config, "heads.llm_dim"))
    return dim is not None and dim <= 0


def detect_phase(log: RunLog) -> tuple[str, str]:
    """Training phase and the evidence for it: the config when logged, else the msspec values."""
    adv_only = _config_value(log.config, "loss.adversarial_only")
    alpha = _number(_config_value(log.config, "loss.alpha_msspec"))
    if adv_only is not None or alpha is not None:
        if adv_only is True:
            return ADVERSARIAL, "config loss.adversarial_only=True"
        if alpha == 0.0:
            return ADVERSARIAL, "config loss.alpha_msspec=0"
        shown = f"{alpha:g}" if alpha is not None else f"{DEFAULT_ALPHAS['msspec']:g} (default)"
        return ADAPTATION, f"config loss.adversarial_only=False, loss.alpha_msspec={shown}"
    if log.epochs.get("msspec_epoch"):
        value = log.epochs["msspec_epoch"][-1][1]
        if value == 0.0:
            return ADVERSARIAL, "msspec is 0 throughout the latest epoch"
        return ADAPTATION, f"msspec in use (latest epoch value {value:.4g})"
    recent = [v for _, v in log.steps.get("msspec_epoch", [])[-STEP_WINDOW:]]
    if recent:
        if all(v == 0.0 for v in recent):
            return ADVERSARIAL, "msspec is 0 in the latest step values"
        return ADAPTATION, "msspec in use (step values)"
    return UNKNOWN, "no config and no msspec values logged"


def _latest(log: RunLog, name: str) -> tuple[float | None, str, str]:
    """(value, source, note) with source ``epoch``, ``step_mean`` or ``missing``."""
    if log.epochs.get(name):
        epoch, value = log.epochs[name][-1]
        return value, "epoch", f"epoch {epoch}" if log.epochs_numbered else "epoch value"
    if log.steps.get(name):
        recent = [v for _, v in log.steps[name][-STEP_WINDOW:]]
        note = f"mean of the last {len(recent)} step values (no epoch record yet)"
        return sum(recent) / len(recent), "step_mean", note
    return None, "missing", "not logged"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0.0:
        return None
    return num / den


_SETTING = re.compile(r"--config\.([\w.]+)=(\S+)")


def _same_setting(current: Any, suggested: str) -> bool:
    """Whether the run's ``current`` value already equals a fix's ``suggested`` text."""
    if isinstance(current, bool):
        return suggested.lower() == str(current).lower()
    number = _number(current)
    if number is not None:
        try:
            return math.isclose(number, float(suggested), rel_tol=1e-9)
        except ValueError:
            return False
    return isinstance(current, str) and current == suggested


def _fixes_not_in_force(fixes: tuple[str, ...], config: Mapping[str, Any]) -> tuple[str, ...]:
    """``fixes`` without the ones whose ``--config.X=V`` the run already has.

    A run whose config is unknown keeps every fix. When the first alternative goes, the next
    one loses its leading "or ".
    """
    kept = []
    for fix in fixes:
        match = _SETTING.search(fix)
        if match and config:
            current = _config_value(config, match.group(1))
            if current is not None and _same_setting(current, match.group(2)):
                continue
        kept.append(fix)
    if kept and fixes and kept[0] != fixes[0]:
        kept[0] = kept[0].removeprefix("or ")
    return tuple(kept)


def build_report(log: RunLog) -> dict[str, Any]:
    """The report as a JSON-ready dict (metric names without the ``train/`` prefix)."""
    phase, phase_reason = detect_phase(log)
    if log.curriculum_phase is not None:
        phase_reason += f"; curriculum phase {log.curriculum_phase!r}"
    alphas = _alphas(log.config)
    disc_off = bool(log.config) and alphas["adv"] == 0.0 and alphas["feat"] == 0.0
    metrics: dict[str, dict[str, Any]] = {}
    trend: dict[str, str] = {}
    diagnosis: list[Diagnosis] = []
    for name, rule in RULES.items():
        value, source, note = _latest(log, name)
        history = [v for _, v in log.epochs.get(name, [])][-TREND_WINDOW:]
        trend[name] = trend_of(history, rule.target, TREND_WINDOW)
        entry: dict[str, Any] = {"value": value, "source": source, "note": note}
        if value is None and name == "llm_epoch" and _llm_off(log.config):
            entry["status"], entry["note"] = "disabled", "no LLM branch (heads.llm_dim <= 0)"
        elif value is None:
            entry["status"] = "missing"
        elif disc_off and name in _DISC_METRICS:
            entry["status"], entry["note"] = "disabled", note + "; discriminator not trained"
        else:
            band = match_band(name, value)
            entry["status"] = band.status if band else CRITICAL
            entry["band"] = band.label if band else "not finite"
            if band and band.note:
                entry["note"] = f"{note}; {band.note}"
            if name == "msspec_epoch" and phase == ADVERSARIAL and value == 0.0:
                entry["note"] = f"{note}; reconstruction disabled (adversarial_only)"
            diag = metric_diagnosis(name, value, entry["status"], phase)
            if diag is not None:
                diagnosis.append(diag)
        if rule.similarity and value is not None:
            entry["similarity"] = 1.0 - value
        entry["history"] = history
        metrics[name] = entry
        extra = trend_diagnosis(name, trend[name])
        if extra is not None:
            diagnosis.append(extra)
    for i, diag in enumerate(diagnosis):
        if diag.metric == "loss_g_epoch":
            values = {n.removesuffix("_epoch"): e["value"] for n, e in metrics.items()}
            diagnosis[i] = dataclasses.replace(diag, cause=loss_g_cause(values, alphas))
    for name in _ACC_METRICS:
        value, _, _ = _latest(log, name)
        diag = discriminator_balance(name, value) if value is not None else None
        if diag is not None:
            diagnosis.append(diag)
    if phase == ADVERSARIAL:
        diagnosis.append(AUDIO_TIP)
    diagnosis = [
        dataclasses.replace(d, fixes=_fixes_not_in_force(d.fixes, log.config)) for d in diagnosis
    ]
    diagnosis.sort(key=lambda d: -SEVERITY.get(d.severity, -1))
    value_of = {name: entry["value"] for name, entry in metrics.items()}
    adv_ratio = _ratio(value_of["adv_g_epoch"], value_of["loss_g_epoch"])
    ratios = {
        "adv_g/loss_g": {
            "value": adv_ratio,
            "expected": "0.3 - 0.5",
            "in_range": None if adv_ratio is None else 0.3 <= adv_ratio <= 0.5,
        },
        "wavlm/llm": {
            "value": _ratio(value_of["wavlm_epoch"], value_of["llm_epoch"]),
            "expected": "~1.0",
        },
    }
    return {
        "source": log.source,
        "metrics": metrics,
        "ratios": ratios,
        "phase": phase,
        "phase_reason": phase_reason,
        "trend": trend,
        "diagnosis": [d.to_dict() for d in diagnosis],
        "validation": dict(log.validation),
        "curves": {name: pts[-1][1] for name, pts in sorted(log.curves.items()) if pts},
        "skipped_lines": log.skipped_lines,
    }


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable table of a :func:`build_report` result."""
    lines = [f"Loss health report: {report['source']}"]
    lines.append(f"Phase: {report['phase']} ({report['phase_reason']})")
    if report.get("skipped_lines"):
        lines.append(f"(skipped {report['skipped_lines']} partly written line)")
    lines.append("")
    header = f"{'metric':<14}{'value':>10}  {'status':<9}{'band':<12}{'similarity':>10}  "
    lines.append(header + f"{'trend':<11}source")
    for name, entry in report["metrics"].items():
        sim = _fmt(entry.get("similarity"), ".3f") if "similarity" in entry else ""
        lines.append(
            f"{name:<14}{_fmt(entry['value']):>10}  {entry['status']:<9}"
            f"{entry.get('band', ''):<12}{sim:>10}  {report['trend'][name]:<11}{entry['note']}"
        )
    lines += ["", "Ratios"]
    for name, ratio in report["ratios"].items():
        verdict = ""
        if ratio.get("in_range") is not None:
            verdict = ": in range" if ratio["in_range"] else ": out of range"
        expected = f"expected {ratio['expected']}{verdict}"
        lines.append(f"  {name:<13} = {_fmt(ratio['value'])}  ({expected})")
    latest = {k: v for k, v in report.get("curves", {}).items() if k.startswith("eval/")}
    scores = {k: v for k, v in latest.items() if not k.startswith("eval/codebook/")}
    if scores:
        lines += ["", "Objective evaluation (latest)"]
        lines += [f"  {name:<28} {_fmt(value)}" for name, value in scores.items()]
    lines += ["", "Diagnosis"]
    if not report["diagnosis"]:
        lines.append("  all quick-reference metrics in their good range")
    for diag in report["diagnosis"]:
        lines.append(f"  [{diag['severity']}] {diag['issue']}")
        lines.append(f"      cause: {diag['cause']}")
        lines += [f"      fix:   {fix}" for fix in diag["fixes"]]
    return "\n".join(lines)
