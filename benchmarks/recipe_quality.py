"""Which recipe tools help this codec: the demo codec trained on the demo corpus for one fixed
CPU budget, once with the original recipe, once per recipe tool and once with all of them.

    python benchmarks/recipe_quality.py --out=runs/recipe_quality --budget_s=1200 --parallel=2

Each variant is ``python -m amylm_jax.train --config=configs/demo.py:<tools>`` (the tools of
docs/recipes.md: ema, balancer, schedule, adamw, dropout, bypass) with the periodic objective
evaluation on: every ``--eval_every`` steps the first ``--eval_clips`` validation clips are
decoded at full length and scored (mel distance, STFT distance, SI-SDR, STOI, PESQ, codebook
usage), exactly as ``python -m amylm_jax.evaluate`` scores them.

The budget is CPU time, not steps: a tool that makes the step dearer gets fewer steps, as it
would in a user's run. The training process's CPU seconds (user + system, all its threads and
child processes, read from /proc) are polled every second; when they reach ``--budget_s`` the
run gets SIGTERM, checkpoints and stops after the step in flight. With ``--parallel=N`` N
variants run side by side, each pinned to its own share of the CPU cores, so each gets the same
budget whatever the others do. Every metric record is stamped with the run's CPU and wall
seconds when it appeared. A variant whose ``curve.json`` exists is not run again (delete it to
rerun), so a stopped benchmark resumes.

Writes ``OUT/<variant>/curve.json`` (the records), ``OUT/results.json`` (per variant: steps,
CPU and wall seconds, the final and best value of each metric), ``OUT/results.md`` (the
table) and ``OUT/recipe_quality.png`` (each metric against CPU minutes and against steps).
"final" is the mean of the last ``--final_points`` evaluations, and "spread" their standard
deviation: how much the curve still moves at its end, a scale for calling a difference real.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Variant name -> the tools of configs/demo.py:<tools> ("" = the original recipe).
VARIANTS = {
    "original": "",
    "ema": "ema",
    "balancer": "balancer",
    "schedule": "schedule",
    "adamw": "adamw",
    "dropout": "dropout",
    "bypass": "bypass",
    "all": "all",
}

#: Metric -> (label, True when higher is better). Codebook usage is the mean over codebooks.
METRICS = {
    "eval/all/mel_distance": ("mel distance", False),
    "eval/all/stft_distance": ("STFT distance", False),
    "eval/all/si_sdr": ("SI-SDR (dB)", True),
    "eval/all/stoi": ("STOI", True),
    "eval/all/pesq": ("PESQ", True),
    "eval/codebook/usage": ("codebook usage", True),
}
#: Training losses kept beside the evaluations (step values, every log_every_steps).
TRAIN_KEYS = ("train/msspec_step", "train/loss_g_step", "train/loss_d_step")

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------------------------- one run
def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process, all its threads) from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants; on a system
    without /proc, the wall time is all that can be had (the caller says so)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            got = _proc_stat(int(entry.name))
            if got is not None:
                stats[int(entry.name)] = got
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen or p not in stats:
            continue
        seen.add(p)
        total += stats[p][1]
        todo += [c for c, (parent, _) in stats.items() if parent == p]
    return total


def _stamped_records(path: Path, offset: int, cpu_s: float, wall_s: float):
    """The complete JSON lines appended to ``path`` since ``offset``, each stamped."""
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "config" in rec:
            continue
        keep = {k: v for k, v in rec.items() if k.startswith("eval/") or k in TRAIN_KEYS}
        if keep:
            records.append({"step": rec["step"], "cpu_s": cpu_s, "wall_s": wall_s, **keep})
    return records, offset + end


def run_variant(
    cmd: Sequence[str],
    workdir: Path,
    budget_s: float,
    *,
    cores: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
    poll_s: float = 1.0,
    stop_timeout_s: float = 600.0,
    log_path: Path | None = None,
) -> dict:
    """Run ``cmd`` (a training run writing ``workdir/metrics.jsonl``) until it ends or its
    process tree has used ``budget_s`` CPU seconds (then SIGTERM, and SIGKILL after
    ``stop_timeout_s``); returns its stamped records, CPU and wall seconds and how it ended."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics = workdir / "metrics.jsonl"
    log = open(log_path or workdir / "train.log", "w")  # noqa: SIM115 (closed below)

    def pin():
        if cores:
            os.sched_setaffinity(0, cores)

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), cwd=ROOT, env=dict(env or os.environ), stdout=log, stderr=log, preexec_fn=pin
    )
    records, offset, cpu_s, stopped = [], 0, 0.0, None
    try:
        while True:
            done = proc.poll() is not None
            if not done:
                cpu_s = max(cpu_s, tree_cpu_seconds(proc.pid))
            wall_s = time.perf_counter() - t0
            new, offset = _stamped_records(metrics, offset, cpu_s, wall_s)
            records += new
            if done:
                break
            if stopped is None and cpu_s >= budget_s:
                stopped = wall_s
                proc.send_signal(signal.SIGTERM)
            if stopped is not None and wall_s - stopped > stop_timeout_s:
                proc.kill()
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return {
        "records": records,
        "cpu_s": cpu_s,
        "wall_s": time.perf_counter() - t0,
        "returncode": proc.returncode,
        "stopped_by_budget": stopped is not None,
    }


# ------------------------------------------------------------------------------- summaries
def _value(record: Mapping, metric: str) -> float | None:
    if metric == "eval/codebook/usage":
        usage = [v for k, v in record.items() if k.startswith("eval/codebook/usage_")]
        return sum(usage) / len(usage) if usage else None
    v = record.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def curve(records: Sequence[Mapping], metric: str) -> list[tuple[int, float, float]]:
    """(step, CPU seconds, value) of every evaluation that has ``metric``."""
    out = []
    for r in records:
        v = _value(r, metric) if any(k.startswith("eval/") for k in r) else None
        if v is not None:
            out.append((int(r["step"]), float(r["cpu_s"]), v))
    return out


def summarise(run: Mapping, final_points: int = 3) -> dict:
    """Steps, seconds and per metric the final (mean of the last ``final_points``
    evaluations), their spread (standard deviation) and the best value."""
    steps = max((int(r["step"]) for r in run["records"]), default=0)
    out = {
        "steps": steps,
        "cpu_s": round(run["cpu_s"], 1),
        "wall_s": round(run["wall_s"], 1),
        "cpu_s_per_step": round(run["cpu_s"] / steps, 3) if steps else None,
        "evaluations": len(curve(run["records"], "eval/all/mel_distance")),
        "stopped_by_budget": run["stopped_by_budget"],
        "returncode": run["returncode"],
        "metrics": {},
    }
    for metric, (_, higher) in METRICS.items():
        points = [v for _, _, v in curve(run["records"], metric)]
        if not points:
            continue
        tail = points[-final_points:]
        mean = sum(tail) / len(tail)
        spread = math.sqrt(sum((x - mean) ** 2 for x in tail) / len(tail))
        out["metrics"][metric] = {
            "final": mean,
            "spread": spread,
            "best": max(points) if higher else min(points),
        }
    return out


def verdicts(summaries: Mapping[str, Mapping], baseline: str = "original") -> dict[str, dict]:
    """Per variant and metric, the final value's change from the baseline's, and whether that
    is better, worse or within noise (within the larger of the two spreads, or 1 % of the
    baseline's magnitude)."""
    base = summaries.get(baseline, {}).get("metrics", {})
    out: dict[str, dict] = {}
    for name, summary in summaries.items():
        if name == baseline:
            continue
        out[name] = {}
        for metric, (_, higher) in METRICS.items():
            mine, ref = summary["metrics"].get(metric), base.get(metric)
            if mine is None or ref is None:
                continue
            delta = mine["final"] - ref["final"]
            noise = max(mine["spread"], ref["spread"], 0.01 * abs(ref["final"]))
            gain = delta if higher else -delta
            verdict = "within noise" if abs(delta) <= noise else ("better" if gain > 0 else "worse")
            out[name][metric] = {"delta": delta, "noise": noise, "verdict": verdict}
    return out


def markdown(summaries: Mapping[str, Mapping], judged: Mapping[str, Mapping]) -> str:
    shown = [m for m in METRICS if any(m in s["metrics"] for s in summaries.values())]
    head = ["variant", "steps", "CPU s/step"] + [METRICS[m][0] for m in shown]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summaries.items():
        cells = [name, str(s["steps"]), f"{s['cpu_s_per_step']}"]
        for m in shown:
            got = s["metrics"].get(m)
            if got is None:
                cells.append("-")
                continue
            mark = {"better": " (+)", "worse": " (-)"}.get(
                judged.get(name, {}).get(m, {}).get("verdict"), ""
            )
            cells.append(f"{got['final']:.3f} ± {got['spread']:.3f}{mark}")
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("")
    rows.append(
        "Final = mean of the last evaluations ± their standard deviation; (+)/(-): better/worse "
        "than the original recipe by more than the larger spread (or 1 %)."
    )
    return "\n".join(rows) + "\n"


def plot(runs: Mapping[str, Mapping], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if any(curve(r["records"], m) for r in runs.values())]
    fig, axes = plt.subplots(2, len(shown), figsize=(3.6 * len(shown), 6.4), squeeze=False)
    for col, metric in enumerate(shown):
        for name, run in runs.items():
            pts = curve(run["records"], metric)
            if not pts:
                continue
            style = {"lw": 2.2, "color": "k"} if name == "original" else {"lw": 1.2}
            axes[0, col].plot(
                [c / 60 for _, c, _ in pts], [v for *_, v in pts], label=name, **style
            )
            axes[1, col].plot([s for s, _, _ in pts], [v for *_, v in pts], label=name, **style)
        axes[0, col].set_title(METRICS[metric][0])
        axes[0, col].set_xlabel("CPU minutes")
        axes[1, col].set_xlabel("steps")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- entry point
def _train_cmd(args, tools: str, workdir: Path) -> list[str]:
    config = "configs/demo.py" + (f":{tools}" if tools else "")
    big = 10**9
    return [
        sys.executable, "-m", "amylm_jax.train", f"--config={config}", f"--workdir={workdir}",
        f"--config.max_steps={args.max_steps}",
        f"--config.eval_every_steps={big}",
        f"--config.checkpoint.every_steps={big}",
        f"--config.objective_eval_every_steps={args.eval_every}",
        f"--config.objective_eval_clips={args.eval_clips}",
        f"--config.optim.decay_steps={args.schedule_steps}",
        f"--config.seed={args.seed}",
        *args.extra,
    ]  # fmt: skip


def _core_groups(parallel: int) -> list[list[int]]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < parallel:
        return [[] for _ in range(parallel)]
    per = len(cores) // parallel
    return [cores[i * per : (i + 1) * per] for i in range(parallel)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Output folder (one workdir per variant).")
    p.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset.")
    p.add_argument("--budget_s", type=float, default=1200.0, help="CPU seconds per variant.")
    p.add_argument("--parallel", type=int, default=1, help="Variants run side by side.")
    p.add_argument(
        "--max_steps", type=int, default=100_000, help="Step cap (the budget stops first)."
    )
    p.add_argument("--eval_every", type=int, default=50, help="Steps between evaluations.")
    p.add_argument("--eval_clips", type=int, default=8, help="Validation clips scored.")
    p.add_argument("--schedule_steps", type=int, default=1000, help="The cosine decay's length.")
    p.add_argument("--final_points", type=int, default=3, help="Evaluations averaged as final.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("extra", nargs="*", help="More --config.* overrides for every variant.")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not Path("/proc/self/stat").exists():
        p.error("the CPU budget is read from /proc: run on Linux")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    todo = [n for n in names if not (out / n / "curve.json").exists()]
    groups = _core_groups(max(args.parallel, 1))
    running: dict[str, tuple] = {}
    import threading

    def work(name: str, cores: list[int]) -> None:
        workdir = out / name
        if workdir.exists():  # an unfinished earlier try: start afresh
            import shutil

            shutil.rmtree(workdir)
        run = run_variant(_train_cmd(args, VARIANTS[name], workdir), workdir, args.budget_s,
                          cores=cores, env=env)  # fmt: skip
        run["tools"] = VARIANTS[name] or "none"
        run["cores"] = len(cores) or os.cpu_count()
        (workdir / "curve.json").write_text(json.dumps(run))
        print(f"{name}: {summarise(run, args.final_points)}", flush=True)

    free = list(range(len(groups)))
    while todo or running:
        while todo and free:
            slot, name = free.pop(0), todo.pop(0)
            print(f"running {name} (cores {groups[slot] or 'all'}) ...", flush=True)
            t = threading.Thread(target=work, args=(name, groups[slot]), daemon=True)
            t.start()
            running[name] = (t, slot)
        for name, (t, slot) in list(running.items()):
            if not t.is_alive():
                del running[name]
                free.append(slot)
        time.sleep(0.5)

    runs = {}
    for name in names:
        path = out / name / "curve.json"
        if path.exists():
            runs[name] = json.loads(path.read_text())
    summaries = {n: summarise(r, args.final_points) for n, r in runs.items()}
    judged = verdicts(summaries)
    result = {
        "budget_cpu_s": args.budget_s,
        "parallel": args.parallel,
        "eval_every": args.eval_every,
        "eval_clips": args.eval_clips,
        "variants": {n: {"tools": runs[n]["tools"], **s} for n, s in summaries.items()},
        "versus_original": judged,
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown(summaries, judged)
    (out / "results.md").write_text(table)
    plot(runs, out / "recipe_quality.png")
    print(table)
    failed = [
        n
        for n, r in runs.items()
        if r["returncode"] not in (0, None) and not r["stopped_by_budget"]
    ]
    if failed:
        print(f"runs that failed: {failed} (see OUT/<variant>/train.log)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
