"""Plots of a training run's quick-reference metrics with their status bands shaded.

Used by ``python -m amylm_jax.report --plots`` (a local folder or a URL); matplotlib, an
optional dependency, is imported only when plotting.
"""

from __future__ import annotations

import math
from typing import Any

from amylm_jax import paths
from amylm_jax.report.rules import CRITICAL, GOOD, RULES, WARNING
from amylm_jax.report.runlog import RunLog

_BAND_COLOURS = {GOOD: "#2ca02c", WARNING: "#ff7f0e", CRITICAL: "#d62728"}


def write_plots(log: RunLog, out_dir: paths.PathLike) -> list[Any]:
    """One PNG per quick-reference metric (steps left, epochs right), status bands shaded."""
    from matplotlib.figure import Figure  # optional dependency, only needed for plots
    from matplotlib.ticker import MaxNLocator  # optional dependency, only needed for plots

    out = paths.as_path(out_dir)
    written = []
    for name, rule in RULES.items():
        series = {"step": log.steps.get(name, []), "epoch": log.epochs.get(name, [])}
        if not any(series.values()):
            continue
        values = [v for pts in series.values() for _, v in pts if math.isfinite(v)]
        edges = [e for b in rule.bands for e in (b.lo, b.hi) if math.isfinite(e)]
        lo, hi = min(values + edges), max(values + edges)
        pad = 0.1 * (hi - lo) or 0.1
        lo, hi = lo - pad, hi + pad
        fig = Figure(figsize=(10, 3.5))
        for i, (axis, pts) in enumerate(series.items()):
            ax = fig.add_subplot(1, 2, i + 1)
            for band in rule.bands:
                colour = _BAND_COLOURS[band.status]
                ax.axhspan(max(band.lo, lo), min(band.hi, hi), color=colour, alpha=0.15, lw=0)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if axis == "epoch" else None)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_ylim(lo, hi)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(axis)
            ax.set_title(f"train/{name.removesuffix('_epoch')}_{axis}")
        fig.tight_layout()
        path = out / f"{name}.png"
        paths.save_figure(fig, path)
        written.append(path)
    for plot, name in ((_eval_plot, "objective_eval.png"), (_share_plot, "grad_share.png")):
        path = plot(log, out / name)
        if path is not None:
            written.append(path)
    return written


def _share_plot(log: RunLog, path: Any) -> Any | None:
    """``train/grad_share/<loss>`` against the step: the audio losses' panel (shares at the
    decoded audio) and the distillation losses' (shares at their latents)."""
    from matplotlib.figure import Figure  # optional dependency, only needed for plots

    groups = {"audio losses (at the decoded audio)": ("adv_g", "feat", "msspec"),
              "distillation losses (at their latents)": ("wavlm", "llm")}  # fmt: skip
    present = {
        title: {
            k: log.curves[f"train/grad_share/{k}"]
            for k in names
            if log.curves.get(f"train/grad_share/{k}")
        }  # fmt: skip
        for title, names in groups.items()
    }
    present = {t: lines for t, lines in present.items() if lines}
    if not present:
        return None
    fig = Figure(figsize=(5 * len(present), 3.5))
    for i, (title, lines) in enumerate(present.items()):
        ax = fig.add_subplot(1, len(present), i + 1)
        for loss, pts in lines.items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=loss)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("step")
        ax.set_title(f"train/grad_share: {title}", fontsize="small")
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.save_figure(fig, path)
    return path


def _eval_plot(log: RunLog, path: Any) -> Any | None:
    """The periodic objective evaluation against the step: a panel per metric with a line
    per decode (``eval/<decode>/<metric>``), and a panel per codebook statistic with a line
    per codebook (``eval/codebook/<stat>_<k>``)."""
    from matplotlib.figure import Figure  # optional dependency, only needed for plots

    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, pts in log.curves.items():
        if not name.startswith("eval/") or name.count("/") != 2 or not pts:
            continue
        variant, metric = name.removeprefix("eval/").split("/")
        if variant == "codebook":
            metric, _, index = metric.rpartition("_")
            variant = f"codebook {index}"
        panels.setdefault(metric, {})[variant] = pts
    if not panels:
        return None
    fig = Figure(figsize=(4.5 * len(panels), 3.5))
    for i, (metric, lines) in enumerate(sorted(panels.items())):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for variant, pts in sorted(lines.items()):
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=variant)
        ax.set_xlabel("step")
        ax.set_title(f"eval/{metric}")
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.save_figure(fig, path)
    return path
