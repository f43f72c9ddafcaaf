"""The accelerator measurement in one command, sized for a few minutes of scarce GPU time.

    python benchmarks/gpu_suite.py --out=gpu_results            # on a GPU machine
    python benchmarks/gpu_suite.py --cpu-smoke --out=/tmp/smoke  # the same plumbing on CPU

On a GPU it first makes sure the CUDA builds are there (``jax[cuda12]`` at the installed jax
version, and a CUDA PyTorch wheel of the installed version; ``--no-install`` skips this, and
a machine without a package index keeps what it has), then runs, each in its own process with
its own time limit so one failure (an out-of-memory at batch 64, a cuDNN algorithm that does
not exist for bf16) is recorded and the rest still runs:

* ``benchmarks/throughput.py`` on the full-size adaptation config, 1 s crops, at batch 16 and
  64: JAX fp32 against PyTorch fp32 (JAX lets XLA use TF32 for fp32 matmuls/convs on Ampere and
  later by default, PyTorch's fp32 here does not: the JSON records ``jax_default_matmul
  precision`` and ``torch_precision``), and JAX bf16 against PyTorch bf16 autocast;
* ``benchmarks/formulations.py`` (each formulation's alternatives timed side by side), which
  sets the GPU ``"auto"`` choices.

The persistent compilation cache (``--cache``, default ``OUT/jax_cache``) keeps compiled
executables and autotuning results between runs. Everything lands in ``OUT/gpu_suite.json``
(one object: device, versions, one row per run with its figures or its error) and
``OUT/gpu_suite.md`` (the same as a markdown table for benchmarks/RESULTS.md).

``--cpu-smoke`` runs the same sequence on the demo config at batch 2 of 0.5 s crops, one timed
step, no installs (PyTorch in fp32 beside JAX bf16, as its bf16 autocast needs CUDA; two
formulation sections): what CI runs to keep this script working between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _python(args: list[str], timeout: float, env: dict[str, str]) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return 124, out + f"\ntimed out after {timeout:.0f} s", time.perf_counter() - start


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    code = (
        "import json, jax, torch; cuda = torch.cuda.is_available(); print(json.dumps({"
        "'jax': jax.__version__, 'jax_backend': jax.default_backend(), "
        "'devices': [str(d) for d in jax.devices()], 'torch': torch.__version__, "
        "'torch_cuda': cuda, 'gpu': torch.cuda.get_device_name(0) if cuda else None}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if proc.returncode == 0:
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        out["error"] = proc.stderr[-2000:]
    return out


def ensure_cuda_builds(timeout: float = 300) -> list[str]:
    """Install the CUDA jax plugin and a CUDA PyTorch of the installed versions where missing;
    returns what was done (an install that cannot reach an index is reported, not fatal)."""
    notes = []
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    if probe.stdout.strip() != "gpu":
        import jax  # noqa: PLC0415 (only to read the version)

        spec = f"jax[cuda12]=={jax.__version__}"
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        notes.append(f"pip install {spec}: " + ("ok" if proc.returncode == 0 else
                                               proc.stderr.strip()[-300:]))  # fmt: skip
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    if probe.stdout.strip() != "True":
        import torch  # noqa: PLC0415

        version = torch.__version__.split("+")[0]
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"torch=={version}",
                               "--index-url", "https://download.pytorch.org/whl/cu126"],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        notes.append(f"CUDA torch {version}: " + ("ok" if proc.returncode == 0 else
                                                  proc.stderr.strip()[-300:]))  # fmt: skip
    return notes


def plan(smoke: bool) -> list[dict[str, Any]]:
    """The runs, in order: throughput (JAX vs PyTorch, two precisions, two batches), then the
    formulations table."""
    if smoke:
        config, batches, seconds, steps, warmup = "configs/demo.py", (2,), 0.5, 1, 0
    else:
        config, batches, seconds, steps, warmup = "configs/adapt.py", (16, 64), 1.0, 5, 2
    runs = []
    # PyTorch's bf16 autocast runs on CUDA only: the CPU smoke pairs JAX bf16 with its fp32.
    pairs = (("fp32", "fp32"), ("bf16", "fp32" if smoke else "bf16"))
    for batch in batches:
        for jax_p, torch_p in pairs:
            runs.append({
                "name": f"throughput b{batch} jax-{jax_p} torch-{torch_p}",
                "kind": "throughput",
                "args": [str(HERE / "throughput.py"), f"--config={config}", f"--batch={batch}",
                         f"--seconds={seconds}", f"--steps={steps}", f"--warmup={warmup}",
                         f"--precision={jax_p}", f"--torch_precision={torch_p}"],
                "batch": batch, "jax_precision": jax_p, "torch_precision": torch_p,
            })  # fmt: skip
    form_batch = 2 if smoke else 16
    runs.append({
        "name": f"formulations b{form_batch}", "kind": "formulations",
        "args": [str(HERE / "formulations.py"), f"--config={config}", f"--batch={form_batch}",
                 f"--seconds={seconds}", f"--reps={1 if smoke else 5}"]
                + (["--only=stft,vq"] if smoke else []),
        "batch": form_batch,
    })  # fmt: skip
    return runs


def _row_of(run: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    if run["kind"] != "throughput":
        return {}
    jax_side, torch_side = result.get("jax", {}), result.get("torch", {})
    return {
        "jax_audio_s_per_s": jax_side.get("audio_s_per_s"),
        "torch_audio_s_per_s": torch_side.get("audio_s_per_s"),
        "ratio": result.get("ratio"),
        "jax_step_ms": jax_side.get("step_ms"),
        "torch_step_ms": torch_side.get("step_ms"),
        "jax_peak_mem_mb": jax_side.get("peak_mem_mb"),
        "torch_peak_mem_mb": torch_side.get("peak_mem_mb"),
        "jax_mfu": jax_side.get("mfu"),
        "compile_s": jax_side.get("compile_s"),
    }


def markdown(report: dict[str, Any]) -> str:
    v = report["versions"]
    lines = [
        f"Device: {v.get('gpu') or v.get('devices')}; jax {v.get('jax')} "
        f"({v.get('jax_backend')}), torch {v.get('torch')}; {report['date']}; "
        f"{'CPU smoke run' if report['smoke'] else 'full size'}.",
        "",
        "| run | JAX audio-s/s | PyTorch audio-s/s | JAX / PyTorch | JAX step ms | "
        "JAX peak MB | PyTorch peak MB | JAX MFU | compile s | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, spec=".1f"):
        return "" if x is None else format(x, spec)

    for row in report["runs"]:
        status = "ok" if row["returncode"] == 0 else f"failed ({row['returncode']})"
        if row["kind"] == "throughput":
            lines.append(
                f"| {row['name']} | {f(row.get('jax_audio_s_per_s'))} | "
                f"{f(row.get('torch_audio_s_per_s'))} | {f(row.get('ratio'), '.2f')} | "
                f"{f(row.get('jax_step_ms'))} | {f(row.get('jax_peak_mem_mb'), '.0f')} | "
                f"{f(row.get('torch_peak_mem_mb'), '.0f')} | {f(row.get('jax_mfu'), '.3f')} | "
                f"{f(row.get('compile_s'))} | {status} |"
            )
        else:
            lines.append(f"| {row['name']} | | | | | | | | | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder for the JSON, markdown and logs.")
    parser.add_argument("--cpu-smoke", action="store_true", help="Demo-size run on CPU.")
    parser.add_argument("--no-install", action="store_true", help="Do not install CUDA builds.")
    parser.add_argument("--budget_s", type=float, default=480.0, help="Time for all runs.")
    parser.add_argument("--cache", default=None, help="Persistent compilation cache folder.")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    notes = [] if (args.cpu_smoke or args.no_install) else ensure_cuda_builds()
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(Path(args.cache or out / "jax_cache").resolve())
    if args.cpu_smoke:
        env["JAX_PLATFORMS"] = "cpu"
        env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "smoke": args.cpu_smoke,
        "versions": _versions(),
        "install_notes": notes,
        "jax_default_matmul_precision": env.get("JAX_DEFAULT_MATMUL_PRECISION", "default"),
        "runs": [],
    }
    runs = plan(args.cpu_smoke)
    for i, run in enumerate(runs):
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 10:
            report["runs"].append({**run, "returncode": None, "error": "time budget spent"})
            continue
        # An equal share of what is left, so a slow run cannot starve the ones after it.
        limit = max(left / (len(runs) - i), 10.0)
        result_path = out / f"run_{i}.json"
        rc, log, wall = _python([*run["args"], f"--json={result_path}"], limit, env)
        (out / f"run_{i}.log").write_text(log)
        row = {k: v for k, v in run.items() if k != "args"}
        row.update(returncode=rc, wall_s=round(wall, 1), command=" ".join(run["args"]))
        if rc == 0 and result_path.is_file():
            result = json.loads(result_path.read_text())
            row.update(_row_of(run, result), result=result)
        else:
            row["error"] = log.strip()[-1500:]
        report["runs"].append(row)
        print(f"{run['name']}: {'ok' if rc == 0 else 'failed'} in {wall:.0f} s", flush=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_suite.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r.get("returncode") == 0 for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
