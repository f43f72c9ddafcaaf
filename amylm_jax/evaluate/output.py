"""Presentation of an evaluation result: JSON-safe copy, flat scalars, TensorBoard, table.

The result dict is built by :func:`amylm_jax.evaluate.run.evaluate`; these helpers only read it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from amylm_jax.evaluate.metrics import METRICS
from amylm_jax.metrics import tensorboard_writer


def _finite(tree: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite(v) for v in tree]
    if isinstance(tree, (float, np.floating)):
        return float(tree) if math.isfinite(tree) else None
    if isinstance(tree, np.integer):
        return int(tree)
    return tree


def scalars(result: dict[str, Any]) -> dict[str, float]:
    """The flat ``eval/...`` scalars of a result (what goes to TensorBoard)."""
    out: dict[str, float] = {}
    for name, v in result["variants"].items():
        for metric in (*METRICS, "wer", "bitrate_bps"):
            if v.get(metric) is not None:
                out[f"eval/{name}/{metric}"] = float(v[metric])
    if "original" in result["wer"]:
        out["eval/original/wer"] = float(result["wer"]["original"]["wer"])
    for cb in result["codebooks"]:
        for key in ("usage", "entropy", "ema_usage"):
            if cb.get(key) is not None:
                out[f"eval/codebook/{key}_{cb['index']}"] = float(cb[key])
    return out


def write_tensorboard(logdir, result: dict[str, Any]) -> None:
    """Append the result's scalars at the checkpoint step to the run's TensorBoard log."""
    writer = tensorboard_writer(logdir)
    try:
        for tag, value in scalars(result).items():
            writer.add_scalar(tag, value, result["step"])
    finally:
        writer.close()


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of a result."""

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        f"step {result['step']}: {result['clips']['evaluated']} of "
        f"{result['clips']['validation_total']} validation clips, "
        f"{result['audio_seconds']:.1f} s of audio ({result['store']})",
        "",
        f"{'variant':<8} {'K':>2} {'bps':>7} {'SI-SDR':>7} {'mel':>6} {'STFT':>6} "
        f"{'STOI':>5} {'PESQ':>5} {'WER':>6}",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"{name:<8} {v['num_codebooks']:>2} {v['bitrate_bps']:>7.1f} "
            f"{f(v['si_sdr'], '7.2f'):>7} {f(v['mel_distance'], '6.3f'):>6} "
            f"{f(v['stft_distance'], '6.3f'):>6} {f(v['stoi'], '5.3f'):>5} "
            f"{f(v['pesq'], '5.2f'):>5} {f(v['wer'], '6.3f'):>6}"
        )
    notes = {(m, n) for v in result["variants"].values() for m, n in v["notes"].items()}
    for metric, note in sorted(notes):
        lines.append(f"  {metric}: {note}")
    if "original" in result["wer"]:
        lines.append(f"  ASR on the original audio: WER {result['wer']['original']['wer']:.3f}")
    lines += ["", f"{'codebook':>8} {'usage':>6} {'entropy':>7} {'EMA usage':>9}"]
    for cb in result["codebooks"]:
        lines.append(
            f"{cb['index']:>8} {cb['usage']:>6.3f} {cb['entropy']:>7.3f} "
            f"{f(cb['ema_usage'], '9.3f'):>9}"
        )
    return "\n".join(lines)
