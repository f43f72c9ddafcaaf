"""Train the Amy codec: ``python -m amylm_jax.train --config=configs/adapt.py --workdir=DIR``.

The thin absl ``main`` parses flags, joins a multi-process run if asked, converts the locked
``ConfigDict`` to a frozen :class:`~amylm_jax.config.TrainConfig` and calls
:func:`train_and_evaluate`, which auto-resumes from ``WORKDIR`` when it holds a checkpoint.
See ``configs/*.py`` for the exact command lines.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from amylm_jax.checkpoint import Checkpointer, abstract_like, config_to_json
from amylm_jax.config import TrainConfig, from_dict
from amylm_jax.metrics import (
    EpochAccumulator,
    MetricWriter,
    epoch_record,
    step_record,
    truncate_after,
)
from amylm_jax.sharding import batch_sharding, global_batch, make_mesh, replicated, state_shardings
from amylm_jax.state import Models, TrainState, build_models, create_state, init_params
from amylm_jax.steps import eval_step, train_step, train_step_reference

log = logging.getLogger("amylm_jax.train")


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN/Inf; the run stops without checkpointing the bad state."""


# ------------------------------------------------------------------------------- configuration
def config_from_dict(data: Any) -> TrainConfig:
    """``ConfigDict``/dict -> TrainConfig, with the user-facing checks of required fields."""
    data = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    init = dict(data.get("init", {}))
    weights = init.get("mimi_weights")
    if weights == "":
        raise ValueError(
            "this config needs Kyutai's Mimi weights: pass "
            "--config.init.mimi_weights=PATH/TO/tokenizer-e351c8d8-checkpoint125.safetensors "
            "(a local file; nothing is downloaded), or --config.init.mimi_weights=none to start "
            "from random weights"
        )
    for key in ("mimi_weights", "checkpoint"):
        if isinstance(init.get(key), str) and init[key].lower() == "none":
            init[key] = None
    data["init"] = init
    if init.get("mimi_weights") and not os.path.isfile(init["mimi_weights"]):
        raise FileNotFoundError(
            f"--config.init.mimi_weights={init['mimi_weights']}: no such file (pass a local "
            "safetensors/PyTorch file, or none for random init)"
        )
    if data.get("data", {}).get("store", "demo") in ("", None):
        raise ValueError("pass the feature store: --config.data.store=PATH (or demo)")
    return from_dict(TrainConfig, data)


# ------------------------------------------------------------------------------- state set-up
def _abstract_state(models: Models) -> TrainState:
    key = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: create_state(models, *init_params(models, key), key))


def initial_state(models: Models) -> TrainState:
    """Fresh state: random init, then Mimi weights or a previous phase's checkpoint."""
    cfg = models.cfg
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_run = jax.random.split(key)
    gen, codebooks, disc = init_params(models, k_init)
    if cfg.init.mimi_weights:
        from amylm_jax.export.from_torch import load_codec_weights

        variables, report = load_codec_weights(
            cfg.init.mimi_weights, cfg.codec, base={"params": gen["codec"]}
        )
        log.info("loaded %s (%s)", cfg.init.mimi_weights, report)
        gen = {**gen, "codec": variables["params"]}
        codebooks = variables["codebooks"]
    if cfg.init.checkpoint:
        prev_cfg, prev = restore_run_state(cfg.init.checkpoint, cfg.init.checkpoint_step)
        log.info("initialised from %s (step %d)", cfg.init.checkpoint, int(prev.step))
        state = create_state(models, prev.gen_params, prev.codebooks, prev.disc_params, k_run)
        if cfg.init.carry_optimizer:
            state = state.replace(opt_g=prev.opt_g, opt_d=prev.opt_d)
        return state
    return create_state(models, gen, codebooks, disc, k_run)


def restore_run_state(workdir: str, step: int | None = None) -> tuple[TrainConfig, TrainState]:
    """Config and TrainState of a finished or running workdir (host arrays)."""
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        cfg = ckpt.restore_config(step)
        dims = _dims_from_checkpoint(ckpt, step)
        models = build_models(cfg, *dims)
        state, _ = ckpt.restore(step, abstract_like(_abstract_state(models)))
    finally:
        ckpt.close()
    return cfg, state


def _dims_from_checkpoint(ckpt: Checkpointer, step: int | None) -> tuple[int, int]:
    import orbax.checkpoint as ocp

    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    progress = ckpt.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))[
        "progress"
    ]
    return int(progress["wavlm_dim"]), int(progress["llm_dim"])


# ------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class _Run:
    cfg: TrainConfig
    workdir: str
    models: Models
    writer: MetricWriter
    steps_per_epoch: int
    total_steps: int
    accum: EpochAccumulator
    is_main: bool
    last_epoch: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_fn: Any = None


def train_and_evaluate(cfg: TrainConfig, workdir: str) -> dict[str, float]:
    """Train until the budget is spent; returns the last epoch means (``train/*_epoch``)."""
    from amylm_jax.data import pipeline
    from amylm_jax.data.store import open_store, resolve_store

    workdir = os.path.abspath(workdir)
    store = open_store(resolve_store(cfg.data.store))
    models = build_models(cfg, store.wavlm_dim, store.llm_dim)
    pidx, pcount = jax.process_index(), jax.process_count()
    is_main = pidx == 0
    mesh = make_mesh(cfg.mesh)
    if cfg.data.batch_size % mesh.size:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} must be divisible by the {mesh.size} devices"
        )
    bsh, rep = batch_sharding(mesh), replicated(mesh)
    spe = cfg.steps_per_epoch or pipeline.steps_per_epoch(cfg.data, pcount, store=store)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.num_epochs * spe

    ckpt = Checkpointer(workdir, cfg.checkpoint)
    abstract = _abstract_state(models)
    shardings = state_shardings(abstract, mesh)
    start = ckpt.latest_step()
    progress: dict[str, Any] = {}
    if start is not None:
        state, progress = ckpt.restore(start, abstract_like(abstract, shardings))
        log.info("resumed from %s at step %d", ckpt.directory, start)
        if is_main:
            dropped = truncate_after(workdir, start)
            if dropped:
                log.info("dropped %d metric records written after step %d", dropped, start)
    else:
        start = 0
        state = jax.device_put(initial_state(models), shardings)

    writer = MetricWriter(
        workdir,
        enabled=is_main,
        tensorboard=cfg.tensorboard,
        wandb_project=cfg.wandb_project,
        config=config_to_json(cfg),
    )
    if start == 0:
        writer.write_config(config_to_json(cfg))
    run = _Run(
        cfg,
        workdir,
        models,
        writer,
        spe,
        total,
        EpochAccumulator(progress.get("epoch_accum")),
        is_main,
        dict(progress.get("last_epoch", {})),
    )
    step_impl = train_step if cfg.shared_disc_forward else train_step_reference
    step_fn = jax.jit(
        functools.partial(step_impl, models),
        in_shardings=(shardings, bsh),
        out_shardings=(shardings, rep),
        donate_argnums=0,
    )
    data = pipeline.make_train_iterator(
        cfg.data, process_index=pidx, process_count=pcount, store=store, start_step=start
    )
    try:
        state = _loop(run, state, step_fn, data, ckpt, store, start, bsh, rep, shardings)
    finally:
        close = getattr(data, "close", None)
        if close:
            close()
        ckpt.close()
        writer.close()
    return run.last_epoch


def _loop(run: _Run, state, step_fn, data, ckpt, store, start, bsh, rep, shardings):
    from tqdm import tqdm

    cfg = run.cfg
    seconds = cfg.data.segment_seconds * cfg.data.batch_size
    bar = tqdm(
        total=run.total_steps,
        initial=start,
        disable=not run.is_main,
        unit="step",
        dynamic_ncols=True,
    )
    pending = None
    t_last = time.perf_counter()
    for step in range(start + 1, run.total_steps + 1):
        batch = global_batch(next(data), bsh)
        state, metrics = step_fn(state, batch)
        if pending is not None:  # read the previous step's metrics: dispatch stays async
            _handle(run, *pending, bar)
        now = time.perf_counter()
        pending = (step, metrics, seconds / max(now - t_last, 1e-9))
        t_last = now
        epoch_end = step % run.steps_per_epoch == 0
        eval_due = (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or (
            not cfg.eval_every_steps and epoch_end
        )
        ckpt_due = step % cfg.checkpoint.every_steps == 0 or step == run.total_steps
        if epoch_end or eval_due or ckpt_due:
            _handle(run, *pending, bar)
            pending = None
        if epoch_end:
            _end_epoch(run, step)
        if eval_due:
            _evaluate(run, state, store, step, bsh, rep, shardings)
        if ckpt_due:
            progress = {
                "step": step,
                "data": data.get_state() if hasattr(data, "get_state") else {"step": step},
                "epoch_accum": run.accum.state(),
                "last_epoch": run.last_epoch,
                "wavlm_dim": run.models.wavlm_dim,
                "llm_dim": run.models.llm_dim,
            }
            ckpt.save(step, state, progress, cfg, metrics=run.last_epoch or None)
    if pending is not None:
        _handle(run, *pending, bar)
    bar.close()
    return state


def _handle(run: _Run, step: int, metrics, audio_per_s: float, bar) -> None:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if values.get("train/nonfinite", 0.0) > 0:
        bad = {k: values[k] for k in ("train/loss_g", "train/loss_d", "train/grad_norm_g")}
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step}: {bad}; the update was skipped and no "
            "checkpoint was written from this state (resume restarts from the last checkpoint)"
        )
    values.pop("train/nonfinite", None)
    values["train/audio_seconds_per_second"] = audio_per_s
    run.accum.add(values, run.cfg.data.batch_size)
    if step % run.cfg.log_every_steps == 0 or step == 1:
        run.writer.write(step, step_record(values), epoch=(step - 1) // run.steps_per_epoch)
    bar.update(step - bar.n)
    bar.set_postfix(
        loss_g=f"{values['train/loss_g']:.3f}",
        msspec=f"{values['train/msspec']:.3f}",
        audio_s_per_s=f"{audio_per_s:.1f}",
        refresh=False,
    )


def _end_epoch(run: _Run, step: int) -> None:
    epoch = step // run.steps_per_epoch - 1
    means = run.accum.means()
    record = epoch_record(means)
    run.writer.write(step, record, epoch=epoch)
    run.last_epoch = {k: v for k, v in record.items() if k.endswith("_epoch")}
    run.accum = EpochAccumulator()
    try:
        from amylm_jax.report_rules import check_epoch
    except ImportError:
        return
    if run.is_main:
        for line in check_epoch({k.removeprefix("train/"): v for k, v in run.last_epoch.items()}):
            log.warning("epoch %d: %s", epoch, line)


def _evaluate(run: _Run, state, store, step: int, bsh, rep, shardings) -> None:
    from jax.experimental import multihost_utils

    from amylm_jax.codec import write_wav
    from amylm_jax.data import pipeline

    cfg = run.cfg
    if run.eval_fn is None:
        run.eval_fn = jax.jit(
            functools.partial(eval_step, run.models),
            in_shardings=(shardings, bsh),
            out_shardings=(rep, bsh),
        )
    fn = run.eval_fn
    it = pipeline.make_eval_iterator(
        cfg.data,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        store=store,
    )
    totals: dict[str, float] = {}
    for i, local in enumerate(it):
        if cfg.eval_max_batches and i >= cfg.eval_max_batches:
            break
        batch = global_batch(local, bsh)
        sums, audio = fn(state, batch)
        for k, v in jax.device_get(sums).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        if i == 0 and cfg.num_eval_audio > 0:
            audio = multihost_utils.process_allgather(audio, tiled=True)
            real = multihost_utils.process_allgather(batch["audio"], tiled=True)
            weight = multihost_utils.process_allgather(batch["weight"], tiled=True)
            if run.is_main:
                out_dir = os.path.join(run.workdir, "audio", f"step_{step:07d}")
                for j in range(min(cfg.num_eval_audio, audio.shape[0])):
                    if weight[j] <= 0:
                        continue
                    write_wav(os.path.join(out_dir, f"{j}_original.wav"), real[j])
                    write_wav(os.path.join(out_dir, f"{j}_reconstructed.wav"), audio[j])
                    run.writer.audio(step, f"val/original_{j}", np.asarray(real[j]))
                    run.writer.audio(step, f"val/reconstructed_{j}", np.asarray(audio[j]))
    weight = totals.pop("val/weight", 0.0)
    if weight <= 0:
        return
    record = {k: v / weight for k, v in totals.items()}
    record.update(codebook_usage(jax.device_get(state.codebooks), cfg))
    run.writer.write(step, record, epoch=(step - 1) // run.steps_per_epoch)


def codebook_usage(codebooks: Any, cfg: TrainConfig) -> dict[str, float]:
    """``val/codebook/usage_g``: fraction of codes with EMA usage > 0.1 x mean (active slots)."""
    q = cfg.codec.quantizer
    out = {}
    groups = [("rvq_first", 0, q.n_q_first), ("rvq_rest", q.n_q_first, q.active_rest)]
    for name, offset, n in groups:
        for layer in range(n):
            usage = np.asarray(codebooks["quantizer"][name][f"layers_{layer}"]["cluster_usage"])
            out[f"val/codebook/usage_{offset + layer}"] = float(np.mean(usage > 0.1 * usage.mean()))
    return out


# ------------------------------------------------------------------------------- entry point
def main(argv) -> None:
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    from amylm_jax.sharding import initialize_distributed

    initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed
    )
    logging.getLogger("amylm_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    cfg = config_from_dict(FLAGS.config)
    train_and_evaluate(cfg, FLAGS.workdir)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, audio).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
    flags.DEFINE_bool(
        "distributed", False, "Call jax.distributed.initialize() (TPU pods: auto-detected)."
    )
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
