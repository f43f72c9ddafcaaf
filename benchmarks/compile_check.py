"""Compile the train step for a target mesh on CPU and print its per-device memory and FLOPs.

    python benchmarks/compile_check.py --config=configs/adapt.py --mesh=data:16 \\
        [--batch=N] [--precision=bf16] [--seconds=1.0]

Uses ``N`` virtual CPU devices (``--xla_force_host_platform_device_count``, set before JAX
is imported), the abstract state of ``jax.eval_shape`` (nothing is initialised) and the
run's shardings (``amylm_jax.sharding``), then prints ``compiled.memory_analysis()``
(argument / output / temp bytes per device) and XLA's FLOP count, so an out-of-memory
configuration shows before a pod is rented. The figures are for XLA:CPU's schedule; an
accelerator's buffer assignment differs somewhat (treat them as estimates, with margin).
``--batch`` is the global batch (default: the config's ``data.batch_size``).
"""

from __future__ import annotations

import math
import os
import sys


def _mesh_arg(argv: list[str]) -> list[tuple[str, int]]:
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")), "data:-1")
    axes = []
    for part in spec.split(","):
        name, _, size = part.partition(":")
        axes.append((name, int(size or -1)))
    return axes


# The device count must be fixed before JAX is imported anywhere.
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

WAVLM_DIM, LLM_DIM = 1024, 2048


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
    compiled, lower_s, compile_s = lower_and_compile(step, abstract, abstract_batch)
    mem = _memory_dict(compiled.memory_analysis())
    flops = _flops_of(compiled)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.gen_params))
    n_disc = sum(x.size for x in jax.tree_util.tree_leaves(abstract.disc_params))
    print(f"mesh {dict(mesh.shape)} ({mesh.size} CPU devices), global batch {batch}")
    per_device = batch // mesh.size
    print(f"precision {cfg.precision}, {FLAGS.seconds} s crops, per-device batch {per_device}")
    print(f"generator params {n_params / 1e6:.1f} M, discriminator params {n_disc / 1e6:.2f} M")
    print(f"lower {lower_s:.1f} s, compile {compile_s:.1f} s")
    if mem is not None:
        print("memory per device (XLA:CPU buffer assignment):")
        for name, mib in mem.items():
            print(f"  {name:15s}{mib:10.1f} MiB")
        total = mem["argument"] + mem["output"] + mem["temp"] - mem.get("alias", 0.0)
        print(f"  {'peak estimate':15s}{total:10.1f} MiB  (argument + output - alias + temp)")
    if flops is not None:
        print(
            f"FLOPs per step: {flops / 1e9:.1f} GFLOP per device (XLA cost analysis), "
            f"{flops / 1e9 / max(batch // mesh.size, 1):.1f} GFLOP per example"
        )


if __name__ == "__main__":
    app.run(main)
