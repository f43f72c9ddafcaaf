"""Compile the train step for a target mesh on CPU and print its per-device memory and FLOPs.

    python benchmarks/compile_check.py --config=configs/adapt.py --mesh=data:16 \\
        [--batch=N] [--precision=bf16] [--seconds=1.0] [--json=OUT] [--parts [--nostep]]
    # for real TPU chips, ahead of time on this CPU (needs libtpu: pip install "jax[tpu]"):
    python benchmarks/compile_check.py --config=configs/adapt.py --topology=v5e:2x2 \\
        --precision=bf16 [--batch=N] [--json=OUT]

With ``--topology`` the step is compiled by the TPU compiler for that slice's chips (one mesh
axis ``data`` over all of them, the config's formulations resolved for TPU), and the figures
are the TPU compiler's own: HBM per chip against the chip's capacity, FLOPs, and XLA's TPU
cost-model step time. The compile switches off sliced prefetches
(``xla_tpu_sliced_prefetch_max_slices=0``; ``--sliced_prefetch`` keeps them): the cost model
prices their joins (``ConcatBitcast``) as -1 s each, which made its figure for this step
negative, and they made the full-size compile about 4x longer. The step time is null where
the figure is not positive or the module still holds joins. Everything printed is a compiler
estimate, not a measurement.

``--parts`` also compiles the step's parts alone for the same mesh and batch (the generator
forward, its forward and backward through the mel loss, the mel loss, and each discriminator
scale with its hinge loss and gradient) and tabulates per part the compile time, generated
code, temp memory, FLOPs and cost-model time: which part makes the compile long, holds the
memory and takes the time. ``--nostep`` skips the whole step.

Uses ``N`` virtual CPU devices (``--xla_force_host_platform_device_count``, set before JAX
is imported), the abstract state of ``jax.eval_shape`` (nothing is initialised) and the
run's shardings (``amylm_jax.sharding``), then prints ``compiled.memory_analysis()``
(argument / output / temp bytes per device) and XLA's FLOP count, so an out-of-memory
configuration shows before a pod is rented. The figures are for XLA:CPU's schedule; an
accelerator's buffer assignment differs somewhat (treat them as estimates, with margin).
``--batch`` is the global batch (default: the config's ``data.batch_size``).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys


def _mesh_arg(argv: list[str]) -> list[tuple[str, int]]:
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")), "data:-1")
    axes = []
    for part in spec.split(","):
        name, _, size = part.partition(":")
        axes.append((name, int(size or -1)))
    return axes


# The device count must be fixed before JAX is imported anywhere.
_TOPOLOGY = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")), None)
if _TOPOLOGY:  # the TPU compiler on a machine without TPUs: no host to detect
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
_AXES = _mesh_arg(sys.argv)
if any(s == -1 for _, s in _AXES):
    _DEVICES = 1
else:
    _DEVICES = math.prod(s for _, s in _AXES)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
).strip()


from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).")
flags.DEFINE_string("mesh", "data:-1", "Mesh axes, e.g. data:16 or data:4,fsdp:4.")
flags.DEFINE_integer("batch", None, "Global batch (default: the config's data.batch_size).")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "Compute precision.")
flags.DEFINE_float("seconds", 1.0, "Crop length in seconds.")
flags.DEFINE_string("topology", None, "Compile for this TPU slice (v5e:2x2, v5p:2x2x1, ...).")
flags.DEFINE_string("json", None, "Also write the figures as JSON here.")
flags.DEFINE_bool("step", True, "Compile the whole step (--nostep with --parts: the parts only).")
flags.DEFINE_bool(
    "parts", False, "Also compile the step's parts alone (generator forward, generator "
    "forward+backward of the mel loss, mel loss, each discriminator scale) and tabulate them.",
)  # fmt: skip
flags.DEFINE_bool(
    "sliced_prefetch",
    False,
    "With --topology: keep the TPU compiler's sliced prefetches (off by default: the cost "
    "model misprices their joins, and they lengthen the compile).",
)
flags.DEFINE_integer(
    "buffers",
    0,
    "Also list the N largest values of the compiled step (shape, layout, the "
    "bytes its memory tiling pads it to): where the temp memory goes.",
)

WAVLM_DIM, LLM_DIM = 1024, 2048
#: HBM per chip (GiB) and dense bf16 peak (FLOP/s) of the TPU generations (Cloud TPU docs).
TPU_CHIPS = {"v5e": (16, 197e12), "v5litepod": (16, 197e12), "v5p": (95, 459e12),
             "v6e": (32, 918e12), "v4": (32, 275e12)}  # fmt: skip


def _tpu_mesh(topology: str):
    import jax
    import numpy as np
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as err:  # noqa: BLE001 (libtpu missing or an unknown slice name)
        raise app.UsageError(
            f"--topology={topology}: cannot get the TPU topology ({err}); install libtpu "
            '(pip install "jax[tpu]") and name a slice such as v5e:2x2'
        ) from err
    return jax.sharding.Mesh(np.array(desc.devices).reshape(-1), ("data",))


def main(argv: list[str]) -> None:
    del argv
    import jax
    import jax.numpy as jnp
    from throughput import _flops_of, _memory_dict, lower_and_compile

    from amylm_jax.reference.jax_setup import step_function, train_config
    from amylm_jax.sharding import batch_sharding, make_mesh, replicated, state_shardings
    from amylm_jax.state import build_models, create_state, init_params

    if FLAGS.config is None:
        raise app.UsageError("pass --config=configs/adapt.py")
    cfg = train_config(FLAGS.config, FLAGS.precision)
    batch = FLAGS.batch or cfg.data.batch_size
    if FLAGS.topology:
        import dataclasses

        mesh = _tpu_mesh(FLAGS.topology)
        codec = dataclasses.replace(
            cfg.codec, transpose_method=cfg.codec.resolved_transpose_method("tpu")
        )
        disc = dataclasses.replace(cfg.disc, conv_method=cfg.disc.resolved_conv_method("tpu"))
        cfg = dataclasses.replace(cfg, codec=codec, disc=disc)
    else:
        mesh = make_mesh(_AXES)
    if batch % mesh.size:
        raise app.UsageError(f"--batch={batch} must be divisible by the {mesh.size} devices")
    models = build_models(cfg, WAVLM_DIM, LLM_DIM)
    key = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(lambda: create_state(models, *init_params(models, key), key))
    shardings = state_shardings(abstract, mesh)
    n = int(round(FLAGS.seconds * cfg.codec.sample_rate))
    frames = math.ceil(n / cfg.codec.frame_size)
    f32 = jnp.float32
    abstract_batch = {
        "audio": jax.ShapeDtypeStruct((batch, n), f32),
        "wavlm": jax.ShapeDtypeStruct((batch, frames, WAVLM_DIM), f32),
        "llm": jax.ShapeDtypeStruct((batch, frames, LLM_DIM), f32),
        "mask": jax.ShapeDtypeStruct((batch, frames), f32),
    }
    bsh = batch_sharding(mesh)
    step = jax.jit(
        step_function(models),
        in_shardings=(shardings, {k: bsh for k in abstract_batch}),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )
    if FLAGS.topology:  # no devices to place on: the shardings travel with the shapes
        abstract = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        abstract_batch = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
            for k, v in abstract_batch.items()
        }
    if not FLAGS.step:
        if not FLAGS.parts:
            raise app.UsageError("--nostep compiles nothing without --parts")
        parts = _compile_parts(cfg, mesh, abstract, abstract_batch, shardings)
        if FLAGS.json:
            with open(FLAGS.json, "w") as f:
                json.dump({"topology": FLAGS.topology, "chips": mesh.size, "global_batch": batch,
                           "precision": cfg.precision, "disc_conv": cfg.disc.conv_method,
                           "parts": parts}, f, indent=1)  # fmt: skip
        return
    compiled, lower_s, compile_s = lower_and_compile(
        step, abstract, abstract_batch, compiler_options=_compiler_options()
    )
    mem = _memory_dict(compiled.memory_analysis())
    flops = _flops_of(compiled)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.gen_params))
    n_disc = sum(x.size for x in jax.tree_util.tree_leaves(abstract.disc_params))
    kind = f"{FLAGS.topology} TPU chips" if FLAGS.topology else "CPU devices"
    print(f"mesh {dict(mesh.shape)} ({mesh.size} {kind}), global batch {batch}")
    per_device = batch // mesh.size
    print(f"precision {cfg.precision}, {FLAGS.seconds} s crops, per-device batch {per_device}")
    print(f"generator params {n_params / 1e6:.1f} M, discriminator params {n_disc / 1e6:.2f} M")
    print(f"lower {lower_s:.1f} s, compile {compile_s:.1f} s")
    if mem is not None:
        compiler = "the TPU compiler's" if FLAGS.topology else "XLA:CPU"
        print(f"memory per device ({compiler} buffer assignment):")
        for name, mib in mem.items():
            print(f"  {name:15s}{mib:10.1f} MiB")
        total = mem["argument"] + mem["output"] + mem["temp"] - mem.get("alias", 0.0)
        print(f"  {'peak estimate':15s}{total:10.1f} MiB  (argument + output - alias + temp)")
    if flops is not None:
        print(
            f"FLOPs per step: {flops / 1e9:.1f} GFLOP per device (XLA cost analysis), "
            f"{flops / 1e9 / max(batch // mesh.size, 1):.1f} GFLOP per example"
        )
    buffers = largest_buffers(compiled.as_text(), FLAGS.buffers) if FLAGS.buffers else None
    if buffers:
        print("largest values of the compiled step (padded: as its tiled layout stores it):")
        for b in buffers:
            print(f"  {b['padded_mib']:9.1f} MiB padded {b['logical_mib']:8.2f} MiB logical  "
                  f"x{b['values']:<3d} {b['op']:12s} {b['shape']} {b['layout']}")  # fmt: skip
    parts = _compile_parts(cfg, mesh, abstract, abstract_batch, shardings) if FLAGS.parts else None
    if FLAGS.topology or FLAGS.json:
        _report(compiled, mem, flops, mesh, batch, compile_s, cfg, parts, buffers)


def _compile_parts(cfg, mesh, abstract, abstract_batch, shardings) -> list[dict]:
    """Each part of the step compiled alone for the same mesh and batch: where the compile
    time, the generated code and the cost model's validity come from (compiler figures)."""
    import dataclasses

    import jax

    from amylm_jax.losses import adversarial as adv
    from amylm_jax.losses.spectral import msspec_loss
    from amylm_jax.sharding import replicated
    from amylm_jax.state import build_models, init_params
    from amylm_jax.steps import MEL_CONFIG, generator_forward, step_key

    models = build_models(cfg, WAVLM_DIM, LLM_DIM)
    rep = replicated(mesh)

    def gen_forward(state, batch):
        return generator_forward(models, state.gen_params, state.codebooks, batch,
                                 step_key(state))[0]  # fmt: skip

    def gen_backward(state, batch):
        def loss(gen):
            fake = generator_forward(models, gen, state.codebooks, batch, step_key(state))[0]
            return msspec_loss(fake, batch["audio"], MEL_CONFIG)

        return jax.grad(loss)(state.gen_params)

    def mel(state, batch):
        del state
        audio = batch["audio"]
        return jax.grad(lambda a: msspec_loss(a, audio, MEL_CONFIG))(0.5 * audio)

    state_sh = jax.tree_util.tree_map(lambda a: a.sharding, abstract) if FLAGS.topology else None
    batch_sh = {k: v.sharding for k, v in abstract_batch.items()} if FLAGS.topology else None
    jobs = [("generator forward", gen_forward), ("generator fwd+bwd (mel loss)", gen_backward),
            ("mel loss fwd+bwd", mel)]  # fmt: skip
    out = []
    for name, fn in jobs:
        kw = {"in_shardings": (state_sh or shardings, batch_sh)} if batch_sh else {}
        out.append(_part(name, jax.jit(fn, **kw), abstract, abstract_batch))
    # One discriminator scale at a time: hinge loss on real and fake, gradient to its weights.
    d = cfg.disc
    for n_fft, hop, win in zip(d.n_ffts, d.hop_lengths, d.win_lengths, strict=True):
        one = dataclasses.replace(d, n_ffts=(n_fft,), hop_lengths=(hop,), win_lengths=(win,))
        scale = build_models(dataclasses.replace(cfg, disc=one), WAVLM_DIM, LLM_DIM)
        key = jax.random.PRNGKey(0)
        params = jax.eval_shape(lambda s=scale, k=key: init_params(s, k)[2])
        if FLAGS.topology:
            params = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), params
            )

        def disc(p, batch, s=scale):
            def loss(p):
                real, _ = s.disc.apply({"params": p}, batch["audio"])
                fake, _ = s.disc.apply({"params": p}, 0.5 * batch["audio"])
                return adv.discriminator_loss(real, fake)

            return jax.grad(loss)(p)

        name = f"discriminator scale n_fft={n_fft} fwd+bwd"
        out.append(_part(name, jax.jit(disc), params, abstract_batch))
    out += _disc_stack_parts(cfg, models, abstract_batch, rep)
    print("parts compiled alone (compiler estimates; cost model null where not positive):")
    print(f"  {'part':56s}{'compile s':>10}{'code MiB':>10}{'temp MiB':>10}{'GFLOP':>9}"
          f"{'model s':>10}")  # fmt: skip
    for r in out:
        model = (
            "invalid"
            if r["cost_model_s"] is None and r["raw_optimal_seconds"] is not None
            else ("-" if r["cost_model_s"] is None else f"{r['cost_model_s']:.4f}")
        )
        code = r["generated_code_mib"]
        print(f"  {r['part']:56s}{r['compile_s']:10.1f}"
              f"{'-' if code is None else format(code, '.1f'):>10}"
              f"{r['temp_mib'] or 0:10.1f}{(r['flops'] or 0) / 1e9:9.1f}{model:>10}")  # fmt: skip
    return out


def _disc_stack_parts(cfg, models, abstract_batch, rep) -> list[dict]:
    """The first discriminator scale taken apart: its forward, its gradient to the audio, and
    its gradient to the parameters with the conv stack cut after 0, 1, ... layers."""
    import jax
    import jax.numpy as jnp

    from amylm_jax.models.discriminator import LAYERS, DiscriminatorSTFT

    d, m = cfg.disc, models.disc
    out = []
    for n in range(len(LAYERS) + 1):
        sub = DiscriminatorSTFT(
            d.filters, d.n_ffts[0], d.hop_lengths[0], d.win_lengths[0], dtype=m.dtype,
            conv_method=m.conv_method, layers=LAYERS[:n],
        )  # fmt: skip
        params = jax.eval_shape(lambda s=sub: s.init(jax.random.PRNGKey(0), jnp.zeros((1, 4096))))
        if FLAGS.topology:
            params = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), params
            )

        def logits(p, batch, s=sub):
            return s.apply(p, batch["audio"])[0].sum()

        head = f"discriminator n_fft={d.n_ffts[0]}"
        if n == len(LAYERS):
            out.append(_part(f"{head} forward", jax.jit(logits), params, abstract_batch))
            to_audio = jax.grad(logits, argnums=1)
            out.append(_part(f"{head} grad to audio", jax.jit(to_audio), params, abstract_batch))
        to_params = jax.jit(jax.grad(logits))
        out.append(_part(f"{head} grad to params, {n} convs + post", to_params, params,
                         abstract_batch))  # fmt: skip
    return out


def _part(name, jitted, *args) -> dict:
    from throughput import _flops_of, _memory_dict, lower_and_compile

    compiled, _, compile_s = lower_and_compile(jitted, *args, compiler_options=_compiler_options())
    mem = _memory_dict(compiled.memory_analysis()) or {}
    optimal, step_s, unpriced = _cost_model(compiled)
    return {
        "part": name,
        "compile_s": compile_s,
        "generated_code_mib": mem.get("generated_code"),
        "temp_mib": mem.get("temp"),
        "flops": _flops_of(compiled),
        "cost_model_s": step_s,
        "raw_optimal_seconds": optimal,
        "unpriced_calls": unpriced,
    }


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8}  # fmt: skip
_VALUE = re.compile(
    r"%(?P<name>[\w.-]+) = (?P<dtype>\w+)\[(?P<dims>[\d,]*)\]"
    r"\{(?P<order>[\d,]*)(?::T\((?P<sub>\d+),(?P<lane>\d+)\))?[^}]*\} (?P<op>[\w-]+)\("
)


def largest_buffers(hlo_text: str, n: int) -> list[dict]:
    """The ``n`` largest array shapes defined in the entry computation of a compiled module's
    text (values of one shape and layout counted together), each with its logical size and
    the size its tiled layout stores: a TPU tile
    ``T(8,128)`` pads the most-minor dimension to a multiple of 128 lanes and the next one to
    a multiple of 8 sublanes, so a value whose minor dimension is 8 channels takes 16 times
    its logical bytes."""
    start = hlo_text.find("\nENTRY")
    rows = []
    for m in _VALUE.finditer(hlo_text, max(start, 0)):
        if not m["dims"]:
            continue
        dims = [int(d) for d in m["dims"].split(",")]
        order = [int(x) for x in m["order"].split(",")] if m["order"] else []
        padded = list(dims)
        if m["lane"] and len(order) >= 1:
            padded[order[0]] = -(-dims[order[0]] // int(m["lane"])) * int(m["lane"])
        if m["sub"] and len(order) >= 2:
            padded[order[1]] = -(-dims[order[1]] // int(m["sub"])) * int(m["sub"])
        size = _BYTES.get(m["dtype"], 4)
        rows.append({
            "name": m["name"], "op": m["op"], "shape": f"{m['dtype']}{dims}",
            "layout": "{" + m["order"] + "}" + (f" T({m['sub']},{m['lane']})" if m["lane"] else ""),
            "logical_mib": math.prod(dims) * size / 2**20,
            "padded_mib": math.prod(padded) * size / 2**20,
        })  # fmt: skip
    groups: dict[tuple[str, str], dict] = {}  # in-place updates repeat one shape and layout
    for r in rows:
        g = groups.setdefault((r["shape"], r["layout"]), {**r, "values": 0})
        g["values"] += 1
    return sorted(groups.values(), key=lambda r: -r["padded_mib"])[:n]


#: The TPU compiler's memory-space assignment may prefetch a buffer in slices and join them with
#: this custom call, which XLA's TPU cost model prices as -1 s. Adding those seconds back is not
#: enough: the full-size adapt step with 583 joins read 16.07 s that way, and 0.097 s compiled
#: without sliced prefetches (benchmarks/RESULTS.md). So TPU compiles here switch them off.
UNPRICED_CALL = 'custom_call_target="ConcatBitcast"'


def _compiler_options() -> dict | None:
    """TPU compiles: no sliced prefetches unless ``--sliced_prefetch`` (see UNPRICED_CALL)."""
    if FLAGS.topology and not FLAGS.sliced_prefetch:
        return {"xla_tpu_sliced_prefetch_max_slices": 0}
    return None


def _cost_model(compiled) -> tuple[float | None, float | None, int]:
    """``(raw optimal_seconds, step time, joins)`` of XLA's cost model: the step time is None
    where the raw figure is missing or not positive, or where the module holds sliced-prefetch
    joins (:data:`UNPRICED_CALL`), which the cost model misprices."""
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    optimal = cost.get("optimal_seconds")
    if optimal is None:
        return None, None, 0
    optimal = float(optimal)
    try:
        joins = compiled.as_text().count(UNPRICED_CALL)
    except Exception:  # noqa: BLE001 (a backend without the module text)
        joins = 0
    return optimal, (optimal if optimal > 0 and joins == 0 else None), joins


def _report(compiled, mem, flops, mesh, batch, compile_s, cfg, parts=None, buffers=None) -> None:
    """The TPU figures (all compiler estimates) printed and, with --json, written."""
    optimal, step_s, unpriced = _cost_model(compiled)
    chip = (FLAGS.topology or "").split(":")[0]
    capacity, peak = TPU_CHIPS.get(chip, (None, None))
    peak_gib = None
    if mem is not None:
        peak_gib = (mem["argument"] + mem["output"] + mem["temp"] - mem.get("alias", 0.0)) / 1024
    per_chip = batch // mesh.size
    audio = per_chip * FLAGS.seconds / step_s if step_s else None
    result = {
        "topology": FLAGS.topology,
        "chips": mesh.size,
        "global_batch": batch,
        "precision": cfg.precision,
        "transpose_method": cfg.codec.transpose_method,
        "disc_conv": cfg.disc.conv_method,
        "hbm_peak_gib": peak_gib,
        "hbm_capacity_gib": capacity,
        "fits": None if capacity is None or peak_gib is None else peak_gib <= capacity,
        "generated_code_mib": None if mem is None else mem.get("generated_code"),
        "flops_per_chip": flops,
        "cost_model_step_s": step_s,
        "cost_model_raw_optimal_seconds": optimal,
        "cost_model_unpriced_calls": unpriced,
        "audio_s_per_s_per_chip": audio,
        "mfu": flops / step_s / peak if (flops and step_s and peak) else None,
        "compile_s": compile_s,
        "parts": parts,
        "largest_buffers": buffers,
        "estimate": "compiler estimates (memory: buffer assignment; time: XLA's cost model, "
        "null where it is not positive or the module holds sliced-prefetch joins)",
        "sliced_prefetch": bool(FLAGS.sliced_prefetch),
    }
    if FLAGS.topology:
        state = "null (invalid)" if optimal is not None and step_s is None else step_s
        print(
            f"cost-model step time (estimate): {state} (raw {optimal}, {unpriced} sliced-"
            f"prefetch joins); HBM capacity per chip: {capacity} GiB"
        )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
