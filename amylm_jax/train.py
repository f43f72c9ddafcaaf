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
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from amylm_jax import cli, paths
from amylm_jax.checkpoint import Checkpointer, abstract_like, abstract_state, restore_run_state
from amylm_jax.config import TrainConfig, config_from_dict, config_to_json
from amylm_jax.data import pipeline
from amylm_jax.data.audio import write_wav
from amylm_jax.data.demo import resolve_store
from amylm_jax.data.store import open_store
from amylm_jax.export.from_torch import load_codec_weights
from amylm_jax.metrics import (
    EpochAccumulator,
    MetricWriter,
    codebook_usage,
    epoch_record,
    step_record,
    truncate_after,
)
from amylm_jax.report.rules import check_epoch
from amylm_jax.sharding import (
    batch_sharding,
    global_batch,
    initialize_distributed,
    make_mesh,
    replicated,
    state_shardings,
)
from amylm_jax.state import (
    Models,
    TrainState,
    build_models,
    create_state,
    enter_phase,
    eval_params,
    init_params,
)
from amylm_jax.steps import eval_step, share_measured, train_step, train_step_reference

log = logging.getLogger("amylm_jax.train")


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN/Inf; the run stops without checkpointing the bad state."""


#: Exit status after a preemption notice (SIGTERM): a checkpoint of the agreed step was
#: written; run the same command again to resume. 75 is EX_TEMPFAIL ("try again later"); the
#: SLURM script requeues the job on it and the TPU launcher's ``run`` loops on it.
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Raised out of the loop after the preemption checkpoint of ``step`` is durable."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint of step {step} written; rerun to resume")
        self.step = step


class PreemptionWatch:
    """Whether a preemption notice arrived, agreed on one step by every process.

    Multi-process runs use JAX's preemption service: its agent catches SIGTERM on any process
    and all processes see :meth:`reached` become true at the same step (the one after the
    largest step any of them had reached). A single process catches SIGTERM itself and stops
    after the step in flight. Must be asked at every step.
    """

    def __init__(self) -> None:
        self.distributed = jax.process_count() > 1
        self._flag = threading.Event()
        self._previous = None
        if not self.distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        del signum, frame
        log.warning("SIGTERM: stopping after this step with a checkpoint")
        self._flag.set()

    def reached(self, step: int) -> bool:
        if self.distributed:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ------------------------------------------------------------------------------- state set-up
def initial_state(models: Models) -> TrainState:
    """Fresh state: random init, then Mimi weights or a previous phase's checkpoint."""
    cfg = models.cfg
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_run = jax.random.split(key)
    gen, codebooks, disc = init_params(models, k_init)
    if cfg.init.mimi_weights:
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


# ------------------------------------------------------------------------------- resume
#: Config fields a resumed run may change: budget, cadence, logging, checkpoint policy, data
#: loading workers and where it started from. Everything else defines the run.
RESUMABLE_CHANGES = (
    "max_steps", "num_epochs", "eval_every_steps", "eval_max_batches", "num_eval_audio",
    "objective_eval_every_steps", "objective_eval_clips", "grad_share_every_steps",
    "log_every_steps", "tensorboard",
    "wandb_project", "checkpoint.", "init.", "data.worker_count", "mesh",
)  # fmt: skip


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_same_run(saved: TrainConfig, cfg: TrainConfig, workdir: str) -> None:
    """Refuse to resume ``workdir`` with a config that defines a different run."""
    old, new = _flatten(config_to_json(saved)), _flatten(config_to_json(cfg))
    differ = [
        k
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
    ]
    if differ:
        shown = ", ".join(f"{k} ({old.get(k)!r} in the run, {new.get(k)!r} now)" for k in differ)
        raise ValueError(
            f"--workdir={workdir} already holds a run with a different config: {shown}. Use a "
            "new --workdir, or resume with the run's own values."
        )


# ------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class _Phase:
    """One curriculum phase of the run (a run without phases has one, named "train")."""

    index: int
    name: str
    first: int
    last: int
    models: Models
    abstract: Any  # the train state's shapes and dtypes under this phase's models
    shardings: Any
    step_fn: Any


def _build_phase(cfg: TrainConfig, plan, index: int, store, mesh, bsh, rep) -> _Phase:
    models = build_models(cfg.phase_config(index), store.wavlm_dim, store.llm_dim)
    abstract = abstract_state(models)
    shardings = state_shardings(abstract, mesh)
    step_impl = train_step if models.cfg.shared_disc_forward else train_step_reference
    step_fn = jax.jit(
        functools.partial(step_impl, models),
        in_shardings=(shardings, bsh),
        out_shardings=(shardings, rep),
        donate_argnums=0,
    )
    name, first, last = plan[index]
    return _Phase(index, name, first, last, models, abstract, shardings, step_fn)


def _phase_of(plan, step: int) -> int:
    """The phase that takes step ``step`` (steps count from 1; step 0 is the first phase's)."""
    return next((k for k, (_, first, last) in enumerate(plan) if first <= step <= last), 0)


@dataclasses.dataclass
class _Run:
    cfg: TrainConfig  # the run's config (with its phases); models.cfg is the phase's
    workdir: str
    writer: MetricWriter
    steps_per_epoch: int
    total_steps: int
    accum: EpochAccumulator
    is_main: bool
    last_epoch: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_fn: Any = None
    preempt: PreemptionWatch | None = None
    phase: _Phase | None = None
    plan: list = dataclasses.field(default_factory=list)

    @property
    def models(self) -> Models:
        """The models of the phase being trained."""
        return self.phase.models


def train_and_evaluate(cfg: TrainConfig, workdir: str) -> dict[str, float]:
    """Train until the budget is spent; returns the last epoch means (``train/*_epoch``)."""
    workdir = os.fspath(paths.check_writable(workdir, "--workdir"))
    store = open_store(resolve_store(cfg.data.store))
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
    plan = cfg.phase_plan(total)

    ckpt = Checkpointer(workdir, cfg.checkpoint)
    start = ckpt.latest_step()
    progress: dict[str, Any] = {}
    if start is not None:
        check_same_run(ckpt.restore_config(start), cfg, workdir)
    # The phase that wrote the checkpoint (its state's layout), or the first one.
    phase = _build_phase(cfg, plan, _phase_of(plan, start or 0), store, mesh, bsh, rep)
    models, shardings = phase.models, phase.shardings
    if start is not None:
        state, progress = ckpt.restore(start, abstract_like(phase.abstract, shardings))
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
        writer,
        spe,
        total,
        EpochAccumulator(progress.get("epoch_accum")),
        is_main,
        dict(progress.get("last_epoch", {})),
        phase=phase,
        plan=plan,
    )
    if cfg.phases:
        writer.tags = {"phase": phase.name}
    data = pipeline.make_train_iterator(
        cfg.data, process_index=pidx, process_count=pcount, store=store, start_step=start
    )
    run.preempt = PreemptionWatch()
    try:
        state = _loop(run, state, data, ckpt, store, start, bsh, rep, mesh)
    finally:
        run.preempt.close()
        log.info(
            "process %d read %d bytes of store records (the store holds %d)",
            pidx,
            store.bytes_read,
            store.size_bytes(),
        )
        close = getattr(data, "close", None)
        if close:
            close()
        ckpt.close()
        writer.close()
    return run.last_epoch


def _next_phase(run: _Run, state, store, mesh, bsh, rep, step: int):
    """Move to the phase that takes ``step``: its models and step function, the state carried
    over (fresh optimizer states), the metric records tagged with its name."""
    index = _phase_of(run.plan, step)
    phase = _build_phase(run.cfg, run.plan, index, store, mesh, bsh, rep)
    carry = jax.jit(functools.partial(enter_phase, phase.models), out_shardings=phase.shardings)
    state = carry(state)
    run.phase, run.eval_fn = phase, None
    run.writer.tags = {"phase": phase.name}
    log.info("phase %d/%d %r from step %d to %d", index + 1, len(run.plan), phase.name,
             phase.first, phase.last)  # fmt: skip
    return state


def _loop(run: _Run, state, data, ckpt, store, start, bsh, rep, mesh):
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
        if step > run.phase.last:
            if pending is not None:  # the previous phase's last metrics
                _handle(run, *pending, bar)
                pending = None
            state = _next_phase(run, state, store, mesh, bsh, rep, step)
        if cfg.phases and step == run.phase.first:
            run.writer.write(step, {"train/phase_index": float(run.phase.index)})
        if cfg.phases:
            bar.set_description(f"phase {run.phase.name}", refresh=False)
        batch = global_batch(next(data), bsh)
        state, metrics = run.phase.step_fn(state, batch)
        if pending is not None:  # read the previous step's metrics: dispatch stays async
            _handle(run, *pending, bar)
        now = time.perf_counter()
        pending = (step, metrics, seconds / max(now - t_last, 1e-9))
        t_last = now
        epoch_end = step % run.steps_per_epoch == 0
        eval_due = (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or (
            not cfg.eval_every_steps and epoch_end
        )
        preempted = run.preempt is not None and run.preempt.reached(step)
        ckpt_due = step % cfg.checkpoint.every_steps == 0 or step == run.total_steps or preempted
        if epoch_end or eval_due or ckpt_due:
            _handle(run, *pending, bar)
            pending = None
        if epoch_end:
            _end_epoch(run, step)
        if eval_due:
            _evaluate(run, state, store, step, bsh, rep, run.phase.shardings)
        every = cfg.objective_eval_every_steps
        if every and (step % every == 0 or step == run.total_steps):
            _objective_eval(run, state, store, step)
        if ckpt_due:
            progress = {
                "step": step,
                "data": data.get_state() if hasattr(data, "get_state") else {"step": step},
                "epoch_accum": run.accum.state(),
                "last_epoch": run.last_epoch,
                "wavlm_dim": run.models.wavlm_dim,
                "llm_dim": run.models.llm_dim,
                "phase": run.phase.name,
                "phase_index": run.phase.index,
            }
            run.writer.flush()  # every record up to this checkpoint is durable before it
            ckpt.save(step, state, progress, cfg, metrics=ranking_metrics(run, epoch_end))
        if preempted:
            ckpt.wait()
            bar.close()
            raise Preempted(step)
    if pending is not None:
        _handle(run, *pending, bar)
    bar.close()
    return state


def ranking_metrics(run: _Run, epoch_end: bool) -> dict[str, float] | None:
    """The metrics that rank a checkpoint among the best: the epoch means of the epoch that
    ends at this step. A save in the middle of an epoch is not ranked (it is kept as one of
    the latest), since the previous epoch's means do not describe its weights."""
    return (run.last_epoch or None) if epoch_end else None


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
    # Gradient shares: step values only, on the steps that measure them (no epoch means).
    shares = {k: values.pop(k) for k in list(values) if k.startswith("train/grad_share/")}
    run.accum.add(values, run.cfg.data.batch_size)
    record = {}
    if step % run.cfg.log_every_steps == 0 or step == 1:
        record = step_record(values)
    if shares and share_measured(run.models.cfg, step - 1):
        record.update(step_record(shares))
    if record:
        run.writer.write(step, record, epoch=(step - 1) // run.steps_per_epoch)
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
    if run.is_main:
        for line in check_epoch({k.removeprefix("train/"): v for k, v in run.last_epoch.items()}):
            log.warning("epoch %d: %s", epoch, line)


def _evaluate(run: _Run, state, store, step: int, bsh, rep, shardings) -> None:
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
                out_dir = paths.join(run.workdir, "audio", f"step_{step:07d}")
                for j in range(min(cfg.num_eval_audio, audio.shape[0])):
                    if weight[j] <= 0:
                        continue
                    write_wav(out_dir / f"{j}_original.wav", real[j])
                    write_wav(out_dir / f"{j}_reconstructed.wav", audio[j])
                    run.writer.audio(step, f"val/original_{j}", np.asarray(real[j]))
                    run.writer.audio(step, f"val/reconstructed_{j}", np.asarray(audio[j]))
    weight = totals.pop("val/weight", 0.0)
    if weight <= 0:
        return
    record = {k: v / weight for k, v in totals.items()}
    record.update(codebook_usage(jax.device_get(state.codebooks), cfg))
    run.writer.write(step, record, epoch=(step - 1) // run.steps_per_epoch)


def _objective_eval(run: _Run, state, store, step: int) -> None:
    """Score the first validation clips at full length with `evaluate`'s metrics."""
    from amylm_jax.evaluate.run import score_clips  # librosa/pesq side: only when asked

    cfg = run.cfg
    _, val = pipeline.split_clips(store, cfg.data)
    val = val[: max(cfg.objective_eval_clips, 0)]
    if len(val) == 0:
        log.warning("objective evaluation skipped at step %d: no validation clips", step)
        return
    # Every process takes part in the gather; process 0 scores.
    local = {"params": eval_params(state, run.models.cfg)["codec"], "codebooks": state.codebooks}
    variables = multihost_utils.process_allgather(local, tiled=True)
    if not run.is_main:
        return
    t0 = time.perf_counter()
    scores = score_clips(cfg, variables, store, val)
    record: dict[str, float] = {}
    for name, summary in scores["variants"].items():
        for metric in ("si_sdr", "mel_distance", "stft_distance", "stoi", "pesq"):
            value = summary.get(metric)
            if value is not None:
                record[f"eval/{name}/{metric}"] = float(value)
    for book in scores["codebooks"]:
        record[f"eval/codebook/usage_{book['index']}"] = book["usage"]
        record[f"eval/codebook/entropy_{book['index']}"] = book["entropy"]
    run.writer.write(step, record, epoch=(step - 1) // run.steps_per_epoch)
    log.info(
        "objective evaluation at step %d on %d clips (%.1f s): SI-SDR %s dB, mel distance %s",
        step, len(val), time.perf_counter() - t0,
        record.get("eval/all/si_sdr"), record.get("eval/all/mel_distance"),
    )  # fmt: skip


# ------------------------------------------------------------------------------- entry point
FLAGS = cli.new_flags()
config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", flag_values=FLAGS, lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Run directory, local or URL (checkpoints, metrics, audio).", flag_values=FLAGS
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-process).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "num_processes", None, "Number of processes (multi-process).", flag_values=FLAGS
)
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).", flag_values=FLAGS)
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (TPU pods: auto-detected).",
    flag_values=FLAGS,
)


def _main(args: list[str]) -> int:
    if args:
        raise cli.UsageError(f"unexpected arguments {args}; see --help")
    if FLAGS.config is None or not FLAGS.workdir:
        raise cli.UsageError("--config=configs/NAME.py and --workdir=DIR are required")
    initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed
    )
    cfg = config_from_dict(FLAGS.config)
    try:
        train_and_evaluate(cfg, FLAGS.workdir)
    except Preempted as err:
        log.warning("%s (exit status %d)", err, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer on ``argv`` (without the program name); returns the exit status."""
    return cli.run(_main, FLAGS, "amylm_jax.train", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
