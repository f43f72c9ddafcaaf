"""Training-step throughput: the JAX step against the PyTorch original, same batch, same weights.

    python benchmarks/throughput.py --config=configs/adapt.py --batch=4 --seconds=1.0 \\
        --json=/tmp/tp.json [--steps=5] [--warmup=2] [--precision=fp32|bf16] [--skip_torch] \\
        [--torch_precision=fp32|tf32|bf16] [--profile] [--disc_conv=config|im2col]

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
in PyTorch. ``--disc_conv=im2col`` swaps the discriminator's ``lax.conv_general_dilated`` for
an im2col + matmul formulation (a prototype, see :func:`conv2d_im2col`) by patching
``amylm_jax.models.discriminator.conv2d`` in this process only.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import app, flags
from ml_collections import config_flags

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

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
    flags.DEFINE_enum(
        "disc_conv",
        "config",
        ["config", "im2col"],
        "Discriminator conv (JAX): the config's disc_conv_method (set it with "
        "--config.disc_conv_method=lax|s2d|auto), or the im2col prototype.",
    )
    flags.DEFINE_enum("side", "both", ["both", "jax", "torch"], "Internal: which side to run.")
    flags.DEFINE_string("weights", None, "Internal: initial weights (.npz, PyTorch layout).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and the batch.")


WAVLM_DIM, LLM_DIM = 1024, 2048

#: Dense peak FLOP/s per math mode (NVIDIA data sheets, SXM parts).
PEAK_FLOPS = {
    "H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
}


# ------------------------------------------------------------------------------ shared set-up
def train_config(config: Any, precision: str = "fp32"):
    """TrainConfig from a ConfigDict with random init and no data store (benchmarks only)."""
    from amylm_jax.train import config_from_dict

    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data["init"] = {**data.get("init", {}), "mimi_weights": None, "checkpoint": None}
    data["data"] = {**data.get("data", {}), "store": data.get("data", {}).get("store") or "none"}
    data["precision"] = precision
    return config_from_dict(data)


def random_codebooks(codebooks: Any, key: Any) -> Any:
    """Every slot initialised with random centroids (``sum ~ N(0, 1)``, usage in [0.5, 1.5])."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(codebooks)
    out = []
    for i, (path, x) in enumerate(leaves):
        name = path[-1].key
        k = jax.random.fold_in(key, i)
        if name == "embedding_sum":
            x = jax.random.normal(k, x.shape, jnp.float32)
        elif name == "cluster_usage":
            x = jax.random.uniform(k, x.shape, jnp.float32, 0.5, 1.5)
        elif name == "initialized":
            x = jnp.ones_like(x)
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def make_batch(cfg: Any, batch: int, seconds: float, seed: int, wavlm_dim: int, llm_dim: int):
    """Random numpy batch: audio ``[B, N]`` (tones + noise), teacher features ``[B, T, D]``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(round(seconds * cfg.codec.sample_rate))
    frames = math.ceil(n / cfg.codec.frame_size)
    t = np.arange(n) / cfg.codec.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400, (batch, 1)) * t)
    audio = (tone + 0.05 * rng.standard_normal((batch, n))).astype(np.float32)
    return {
        "audio": audio,
        "wavlm": rng.standard_normal((batch, frames, wavlm_dim)).astype(np.float32),
        "llm": rng.standard_normal((batch, frames, llm_dim)).astype(np.float32),
        "mask": np.ones((batch, frames), np.float32),
    }


def jax_setup(cfg: Any, seed: int, wavlm_dim: int = WAVLM_DIM, llm_dim: int = LLM_DIM):
    """``(models, state)``: random weights, all codebooks initialised, fresh optimizers."""
    import jax

    from amylm_jax.state import build_models, create_state, init_params

    models = build_models(cfg, wavlm_dim, llm_dim)
    k_init, k_cb, k_run = jax.random.split(jax.random.PRNGKey(seed), 3)
    gen, codebooks, disc = init_params(models, k_init)
    state = create_state(models, gen, random_codebooks(codebooks, k_cb), disc, k_run)
    return models, state


def step_function(models: Any):
    """The production train step (shared discriminator forwards unless the config says no)."""
    from amylm_jax.steps import train_step, train_step_reference

    fn = train_step if models.cfg.shared_disc_forward else train_step_reference
    return functools.partial(fn, models)


# ------------------------------------------------------------------------------ prototype conv
def conv2d_im2col(x, kernel, bias, stride, dilation, padding, dtype):
    """``nn.Conv2d`` as im2col + one matmul (channels-last), a drop-in for ``conv2d``.

    The ``kh * kw`` shifted, strided views of the padded input are concatenated on the
    channel axis (``[B, H', W', kh * kw * C]``) and multiplied by the reshaped kernel. On CPU
    this runs the FLOPs in XLA's dot emitter (Eigen / oneDNN matmul) instead of its generic
    convolution; the backward of the slices is pads and adds.
    """
    import jax.numpy as jnp

    kh, kw, c, o = kernel.shape
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    x = jnp.pad(x.astype(dtype), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h_out = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
    w_out = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    cols = [
        x[
            :,
            i * dh : i * dh + sh * (h_out - 1) + 1 : sh,
            j * dw : j * dw + sw * (w_out - 1) + 1 : sw,
            :,
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)
    y = patches @ kernel.astype(dtype).reshape(kh * kw * c, o)
    return y + bias.astype(dtype)


def _use_disc_conv(kind: str) -> None:
    if kind == "im2col":
        from amylm_jax.models import discriminator

        discriminator.conv2d = conv2d_im2col


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


def _time(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def lower_and_compile(jitted: Any, *args: Any) -> tuple[Any, float, float]:
    """``(compiled, lowering seconds, compile seconds)`` of a jitted function for ``args``."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
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

    _use_disc_conv(FLAGS.disc_conv)
    models, state = jax_setup(cfg, FLAGS.seed)
    if weights_out:
        from torch_baseline import trainer_state_from_jax

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
    times = _time(one, FLAGS.steps)
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
        "disc_conv": "im2col" if FLAGS.disc_conv == "im2col" else cfg.resolved_disc_conv_method(),
        "transpose_method": cfg.resolved_transpose_method(),
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
        result["profile_ms"] = profile_jax(models, state, batch)
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
    """Time the PyTorch step of ``torch_baseline`` from the same initial weights."""
    import numpy as np
    import torch
    from torch_baseline import TorchTrainer, load_trainer_state

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
    times = _time(one, FLAGS.steps)
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
        result["profile_ms"] = profile_torch(trainer, audio)
    return result


# ------------------------------------------------------------------------------ profiles
def _median_ms(fn, n: int = 3) -> float:
    fn()  # compile / warm up
    return statistics.median(_time(fn, n)) * 1e3


def profile_jax(models: Any, state: Any, batch: dict) -> dict[str, float]:
    """Median times of the step's parts (each jitted alone) at the benchmark batch."""
    import jax
    import jax.numpy as jnp

    from amylm_jax.losses.spectral import msspec_loss
    from amylm_jax.models.discriminator import DiscriminatorSTFT
    from amylm_jax.steps import MEL_CONFIG, generator_forward

    out: dict[str, float] = {}
    key = jax.random.PRNGKey(1)
    gp, cb = state.gen_params, state.codebooks

    def gen(p):
        fake, (wavlm, llm, _, _) = generator_forward(models, p, cb, batch, key)
        return fake, wavlm + llm

    fwd = jax.jit(gen)
    out["codec_fwd"] = _median_ms(lambda: jax.block_until_ready(fwd(gp)))

    @jax.jit
    def fwd_bwd(p):
        (fake, distill), vjp = jax.vjp(gen, p)
        return vjp((jnp.ones_like(fake), jnp.ones_like(distill)))

    out["codec_fwd_bwd"] = _median_ms(lambda: jax.block_until_ready(fwd_bwd(gp)))

    audio = batch["audio"]
    both = jnp.concatenate([audio, audio * 0.9], axis=0)  # real + fake, as in the shared step
    d = models.cfg.disc
    for k, (n_fft, hop, win) in enumerate(zip(d.n_ffts, d.hop_lengths, d.win_lengths, strict=True)):
        sub = DiscriminatorSTFT(d.filters, n_fft, hop, win, dtype=models.compute_dtype)
        params = state.disc_params[f"discs_{k}"]

        def apply(p, x, sub=sub):
            return sub.apply({"params": p}, x)

        f = jax.jit(apply)
        out[f"disc{n_fft}_fwd"] = _median_ms(
            lambda f=f, p=params: jax.block_until_ready(f(p, both))
        )

        @jax.jit
        def fb(p, x, apply=apply):
            (lg, fm), vjp = jax.vjp(apply, p, x)
            return vjp((jnp.ones_like(lg), [jnp.ones_like(m) for m in fm]))

        out[f"disc{n_fft}_fwd_bwd"] = _median_ms(
            lambda fb=fb, p=params: jax.block_until_ready(fb(p, both))
        )

    ms = jax.jit(jax.value_and_grad(lambda x: msspec_loss(x, audio, MEL_CONFIG)))
    out["msspec_fwd_bwd"] = _median_ms(lambda: jax.block_until_ready(ms(audio * 0.9)))
    return out


def profile_torch(trainer: Any, audio: Any) -> dict[str, float]:
    """The PyTorch counterparts of :func:`profile_jax` (same batch; no optimizer steps)."""
    import torch
    from torch_reference import torch_msspec_loss

    out: dict[str, float] = {}
    sync = torch.cuda.synchronize if audio.is_cuda else (lambda: None)

    def fwd():
        with torch.no_grad():
            trainer.generator_forward(audio)
        sync()

    def fwd_bwd():
        fake, sp = trainer.generator_forward(audio)
        (fake.sum() + sp.x.sum()).backward()
        sync()

    out["codec_fwd"] = _median_ms(fwd)
    out["codec_fwd_bwd"] = _median_ms(fwd_bwd)
    both = torch.cat([audio, audio * 0.9], dim=0).requires_grad_(True)
    for sub in trainer.disc.discriminators:

        def dfwd(sub=sub):
            with torch.no_grad():
                sub(both)
            sync()

        def dfb(sub=sub):
            lg, fm = sub(both)
            (lg.sum() + sum(m.sum() for m in fm)).backward()
            sync()

        out[f"disc{sub.n_fft}_fwd"] = _median_ms(dfwd)
        out[f"disc{sub.n_fft}_fwd_bwd"] = _median_ms(dfb)

    def ms():
        x = (audio * 0.9).requires_grad_(True)
        torch_msspec_loss(x, audio).backward()
        sync()

    out["msspec_fwd_bwd"] = _median_ms(ms)
    trainer.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------ driver
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
