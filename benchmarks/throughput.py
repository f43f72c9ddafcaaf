"""Training-step throughput: the JAX step against the PyTorch original, same batch, same weights.

    python benchmarks/throughput.py --config=configs/adapt.py --batch=4 --seconds=1.0 \\
        --json=/tmp/tp.json [--steps=5] [--warmup=2] [--precision=fp32|bf16] [--skip_torch] \\
        [--torch_precision=fp32|tf32|bf16] [--profile]

Both sides start from the same random weights (no weights file: ``init.mimi_weights`` is
forced to none) with every codebook slot initialised (random centroids, ``initialized = 1``),
so no k-means runs and the measured step is the steady-state one. The batch is random audio
``[B, seconds * 24000]`` with random teacher features of the real dims (WavLM 1024, LLM 2048).

Each side runs in its own subprocess (clean peak-memory figures, no thread contention
between the two runtimes): JAX first (it writes the initial weights in PyTorch layout for the
PyTorch process), then PyTorch. Reported per side: ``audio_s_per_s`` (batch * seconds /
median step), ``step_ms`` (median), ``compile_s`` (JAX), ``peak_mem_mb`` (device peak on a
GPU, else the process's peak RSS), ``flops_per_step`` (JAX: XLA's cost analysis of the compiled
step; PyTorch: ``torch.utils.flop_counter`` over one step, convolutions and matmuls only) and
``mfu`` (against the device's peak FLOP/s for the math mode; null on CPU); top-level
``ratio`` = JAX audio-s/s / PyTorch audio-s/s. ``losses`` are the first step's on each side:
the same weights and batch, so they agree (a check that both sides run the same step).
``disc_conv`` / ``transpose_method`` record the JAX formulations in use (``"auto"`` resolved
for the backend; see ``benchmarks/formulations.py``).

``--profile`` adds per-component timings of the JAX step (codec forward / forward+backward,
each discriminator scale forward / forward+backward on real+fake, msspec) and the same parts
in PyTorch. The formulations are chosen in the config (``--config.disc.conv_method``,
``--config.codec.transpose_method``).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import profile_parts  # a sibling module: run this file as a script
from absl import app, flags
from ml_collections import config_flags

from amylm_jax.reference.inputs import LLM_DIM, WAVLM_DIM, make_batch, train_config

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Command-line flags (only when run as a script, so other tools can import this module)."""
    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
    flags.DEFINE_integer("batch", 4, "Batch size (examples of `seconds` audio).")
    flags.DEFINE_float("seconds", 1.0, "Crop length in seconds.")
    flags.DEFINE_string("json", None, "Write the results here.")
    flags.DEFINE_integer("steps", 5, "Timed steps (median reported).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
    flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "JAX compute precision.")
    flags.DEFINE_enum(
        "torch_precision", None, ["fp32", "tf32", "bf16"], "PyTorch precision (default: as JAX)."
    )
    flags.DEFINE_bool("skip_torch", False, "Measure JAX only.")
    flags.DEFINE_bool("profile", False, "Also time the parts of the step.")
    flags.DEFINE_enum("side", "both", ["both", "jax", "torch"], "Internal: which side to run.")
    flags.DEFINE_string("weights", None, "Internal: initial weights (.npz, PyTorch layout).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and the batch.")


#: Dense peak FLOP/s per math mode (NVIDIA data sheets, SXM parts).
PEAK_FLOPS = {
    "H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
}


# ------------------------------------------------------------------------------ measurement
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_flops(device_name: str, mode: str) -> float | None:
    for key, table in PEAK_FLOPS.items():
        if key in device_name:
            return table.get(mode)
    return None


def _mfu(flops: float | None, step_s: float, device_name: str, mode: str) -> float | None:
    peak = _peak_flops(device_name, mode)
    if not flops or peak is None:
        return None
    return flops / step_s / peak


def lower_and_compile(
    jitted: Any, *args: Any, compiler_options: dict | None = None
) -> tuple[Any, float, float]:
    """``(compiled, lowering seconds, compile seconds)`` of a jitted function for ``args``."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options)
    return compiled, t1 - t0, time.perf_counter() - t1


def _flops_of(compiled: Any) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def run_jax(cfg: Any, weights_out: str | None) -> dict[str, Any]:
    """Compile and time the JAX step; optionally write the initial weights for PyTorch."""
    import jax
    import numpy as np

    # JAX only in the JAX subprocess (the PyTorch one measures its own memory).
    from amylm_jax.reference.jax_setup import jax_setup, step_function

    models, state = jax_setup(cfg, FLAGS.seed)
    if weights_out:
        from amylm_jax.reference.torch_step import trainer_state_from_jax

        np.savez(weights_out, **trainer_state_from_jax(state, cfg))
    batch = jax.device_put(
        make_batch(cfg, FLAGS.batch, FLAGS.seconds, FLAGS.seed, WAVLM_DIM, LLM_DIM)
    )
    step = jax.jit(step_function(models), donate_argnums=0)
    compiled, lower_s, compile_s = lower_and_compile(step, state, batch)
    mem = compiled.memory_analysis()

    first = []

    def one():
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        if not first:
            first.append(jax.device_get(metrics))
        return metrics

    for _ in range(FLAGS.warmup):
        one()
    times = profile_parts.time_calls(one, FLAGS.steps)
    metrics = first[0]
    step_s = statistics.median(times)
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    peak = _peak_rss_mb()
    if on_gpu:
        peak = dev.memory_stats().get("peak_bytes_in_use", 0) / 2**20
    flops = _flops_of(compiled)
    # XLA's default fp32 matmul precision on NVIDIA GPUs uses TF32.
    mode = "bf16" if cfg.precision == "bf16" else ("tf32" if on_gpu else "fp32")
    result = {
        "device": dev.device_kind,
        "precision": cfg.precision,
        "disc_conv": cfg.disc.resolved_conv_method(),
        "transpose_method": cfg.codec.resolved_transpose_method(),
        "audio_s_per_s": FLAGS.batch * FLAGS.seconds / step_s,
        "step_ms": step_s * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "lower_s": lower_s,
        "compile_s": compile_s,
        "peak_mem_mb": peak,
        "xla_memory_mb": _memory_dict(mem),
        "flops_per_step": flops,
        "mfu": _mfu(flops, step_s, dev.device_kind, mode) if on_gpu else None,
        "losses": {k: float(metrics[f"train/{k}"]) for k in ("loss_g", "loss_d", "msspec")},
    }
    if FLAGS.profile:
        result["profile_ms"] = profile_parts.profile_jax(models, state, batch)
    return result


def _memory_dict(mem: Any) -> dict[str, float] | None:
    if mem is None:
        return None
    names = ("argument", "output", "temp", "alias", "generated_code")
    return {
        n: getattr(mem, f"{n}_size_in_bytes") / 2**20
        for n in names
        if hasattr(mem, f"{n}_size_in_bytes")
    }


def run_torch(cfg: Any, weights: str | None) -> dict[str, Any]:
    """Time the PyTorch re-statement of the step from the same initial weights."""
    import numpy as np
    import torch

    from amylm_jax.reference.torch_step import TorchTrainer, load_trainer_state

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = FLAGS.torch_precision or FLAGS.precision
    torch.manual_seed(FLAGS.seed)
    trainer = TorchTrainer(cfg, WAVLM_DIM, LLM_DIM, device=device, precision=precision)
    if weights:
        with np.load(weights) as data:
            load_trainer_state(trainer, dict(data))
    b = make_batch(cfg, FLAGS.batch, FLAGS.seconds, FLAGS.seed, WAVLM_DIM, LLM_DIM)
    audio = torch.from_numpy(b["audio"])[:, None].to(device)
    wavlm = torch.from_numpy(b["wavlm"]).to(device)
    llm = torch.from_numpy(b["llm"]).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    first = []

    def one():
        losses = trainer.train_step(audio, wavlm, llm)
        sync()
        if not first:
            first.append({k: float(v) for k, v in losses.items()})
        return losses

    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            one()
        flops = float(counter.get_total_flops())
    except Exception as err:  # the counter is a convenience; never fail the benchmark on it
        print(f"torch flop counter failed: {err!r}", file=sys.stderr)
    for _ in range(max(FLAGS.warmup - 1, 0)):
        one()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = profile_parts.time_calls(one, FLAGS.steps)
    losses = first[0]
    step_s = statistics.median(times)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb()
    result = {
        "device": name,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "audio_s_per_s": FLAGS.batch * FLAGS.seconds / step_s,
        "step_ms": step_s * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "compile_s": None,
        "peak_mem_mb": peak,
        "flops_per_step": flops,
        "mfu": _mfu(flops, step_s, name, precision) if device == "cuda" else None,
        "losses": {k: float(losses[k]) for k in ("loss_g", "loss_d", "msspec")},
    }
    if FLAGS.profile:
        result["profile_ms"] = profile_parts.profile_torch(trainer, audio)
    return result


# ------------------------------------------------------------------------------ profiles
def _subprocess(side: str, json_path: str, weights: str | None) -> dict[str, Any]:
    argv = [a for a in sys.argv[1:] if not a.startswith(("--json", "--side", "--weights"))]
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    cmd += [f"--side={side}", f"--json={json_path}"]
    if weights:
        cmd.append(f"--weights={weights}")
    subprocess.run(cmd, check=True)
    with open(json_path) as f:
        return json.load(f)


def _table(result: dict[str, Any]) -> str:
    rows = [
        ("audio-s/s", "audio_s_per_s", "{:.3f}"),
        ("step (median, ms)", "step_ms", "{:.0f}"),
        ("compile (s)", "compile_s", "{:.1f}"),
        ("peak memory (MB)", "peak_mem_mb", "{:.0f}"),
        ("GFLOP / step", "flops_per_step", "{:.1f}"),
        ("MFU", "mfu", "{:.3f}"),
    ]
    sides = [s for s in ("jax", "torch") if result.get(s)]
    lines = [f"{'':22s}" + "".join(f"{s:>14s}" for s in sides)]
    for label, key, fmt in rows:
        cells = []
        for s in sides:
            v = result[s].get(key)
            if v is not None and key == "flops_per_step":
                v = v / 1e9
            cells.append(f"{fmt.format(v) if v is not None else '-':>14s}")
        lines.append(f"{label:22s}" + "".join(cells))
    if result.get("ratio") is not None:
        lines.append(f"ratio (JAX / PyTorch audio-s/s): {result['ratio']:.3f}")
    for s in sides:
        prof = result[s].get("profile_ms")
        if prof:
            parts = {k: round(v) for k, v in prof.items()}
            lines.append(f"{s} parts (median ms): {json.dumps(parts)}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.config is None:
        raise app.UsageError("pass --config=configs/adapt.py")
    cfg = train_config(FLAGS.config, FLAGS.precision)
    if FLAGS.side != "both":
        fn = run_jax if FLAGS.side == "jax" else run_torch
        result = fn(cfg, FLAGS.weights)
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = None if FLAGS.skip_torch else os.path.join(tmp, "init.npz")
        result: dict[str, Any] = {
            "config": {
                "batch": FLAGS.batch,
                "seconds": FLAGS.seconds,
                "precision": FLAGS.precision,
                "steps": FLAGS.steps,
                "warmup": FLAGS.warmup,
            },
            "jax": _subprocess("jax", os.path.join(tmp, "jax.json"), weights),
            "torch": None,
        }
        if not FLAGS.skip_torch:
            result["torch"] = _subprocess("torch", os.path.join(tmp, "torch.json"), weights)
    t = result["torch"]
    result["ratio"] = result["jax"]["audio_s_per_s"] / t["audio_s_per_s"] if t else None
    print(_table(result))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
