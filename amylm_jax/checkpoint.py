"""orbax checkpoints of a training run: state + progress (data position, epoch sums) + config.

Layout: ``WORKDIR/checkpoints/<step>/{state,progress,config}``; ``WORKDIR`` is a local folder or
a URL (``gs://bucket/run``), handled by orbax through ``etils.epath``. ``state`` is the whole
:class:`~amylm_jax.state.TrainState` (params, codebook EMA state, both optimizer states, step,
RNG); ``progress`` is JSON with the grain iterator state (the next global step), the running
epoch sums and the epoch index, so a killed run resumes at exactly the next batch with the
same epoch means; ``config`` is the run's TrainConfig as JSON. Saves are asynchronous and
atomic (orbax writes to a temporary directory and renames it locally, and on object storage
marks a finished step with a commit file), so an interrupted save is never listed or loaded;
every process calls save, and
the manager keeps the last ``keep_last`` checkpoints plus the ``best_k`` best by the
monitored epoch metric.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from amylm_jax import paths
from amylm_jax.config import (
    CheckpointConfig,
    TrainConfig,
    config_to_json,
    from_dict,
    migrate_train_config,
)
from amylm_jax.state import (
    Models,
    TrainState,
    build_models,
    create_state,
    generator_weights,
    init_params,
)

log = logging.getLogger("amylm_jax.checkpoint")

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A workdir has no (such) checkpoint, or one this version cannot read."""


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one workdir."""

    def __init__(
        self, workdir: paths.PathLike, cfg: CheckpointConfig | None = None, read_only: bool = False
    ):
        cfg = cfg or CheckpointConfig()
        self.cfg = cfg
        self.directory = paths.as_path(workdir) / CHECKPOINT_DIR
        if cfg.mode not in ("min", "max"):
            raise ValueError(f"checkpoint.mode must be 'min' or 'max', got {cfg.mode!r}")
        monitor = cfg.monitor
        policies = [cm.LatestN(n=max(cfg.keep_last, 1))]
        if cfg.best_k > 0:
            policies.append(
                cm.BestN(
                    get_metric_fn=lambda m: m[monitor],
                    reverse=cfg.mode == "min",
                    n=cfg.best_k,
                    keep_checkpoints_without_metrics=False,
                )
            )
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        if read_only:  # orbax warns that a read-only manager will not save: expected here
            absl_log.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=cfg.async_save and not read_only,
                preservation_policy=cm.AnyPreservationPolicy(policies),
                create=not read_only,
                read_only=read_only,
            )
            self.manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "progress", "config")
            )
        finally:
            absl_log.setLevel(level)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        progress: dict[str, Any],
        config: TrainConfig,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Save (asynchronously); ``metrics`` must hold the monitored metric to rank it."""
        if metrics is not None and self.cfg.monitor not in metrics:
            metrics = None
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                progress=ocp.args.JsonSave(progress),
                config=ocp.args.JsonSave(config_to_json(config)),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore ``(state, progress)`` at ``step`` (default: latest) into the given shapes."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                progress=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["progress"])

    def restore_config(self, step: int | None = None) -> TrainConfig:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        try:
            return from_dict(TrainConfig, migrate_train_config(dict(restored["config"])))
        except (ValueError, TypeError) as err:
            raise CheckpointError(
                f"the run config of {self.directory / str(step)} does not fit this version of "
                f"amylm_jax ({err}); nothing was loaded. Use the amylm_jax version that wrote "
                "it, or start a new run from its weights (--config.init.checkpoint needs a "
                "readable config too, so export them first with that version)."
            ) from None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def resolve_step(workdir: paths.PathLike, step: int | None = None) -> int:
    """The checkpoint step to load from ``workdir``: ``step`` if it exists, else the latest.

    Raises :class:`CheckpointError` naming the workdir (and the available steps).
    """
    hint = f"train first: python -m amylm_jax.train --config=... --workdir={workdir}"
    directory = paths.as_path(workdir) / CHECKPOINT_DIR
    steps: list[int] = []
    if directory.is_dir():
        ckpt = Checkpointer(workdir, read_only=True)
        try:
            steps = sorted(ckpt.all_steps())
        finally:
            ckpt.close()
    if not steps:
        raise CheckpointError(f"{workdir} holds no checkpoints (in {directory}); {hint}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointError(f"no such checkpoint: step {step} in {directory}; available: {steps}")
    return step


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``, the restore target."""
    if shardings is None:
        return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def abstract_state(models: Models) -> TrainState:
    """Shapes and dtypes of a run's TrainState (no arrays are allocated)."""
    key = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda: create_state(models, *init_params(models, key), key))


def restore_run_state(
    workdir: paths.PathLike, step: int | None = None
) -> tuple[TrainConfig, TrainState]:
    """Config and TrainState of a finished or running workdir, on this process's first device.

    For a curriculum the config is that of the phase the checkpoint was written in.

    Whatever topology the run was saved from (8 TPU chips, a pod), the arrays are restored
    whole onto one local device, so the tools (export, evaluate, codec) run anywhere.
    """
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        cfg = ckpt.restore_config(step)
        progress = _progress(ckpt, step)
        dims = int(progress["wavlm_dim"]), int(progress["llm_dim"])
        # A curriculum's checkpoint holds the state of the phase that wrote it.
        cfg = cfg.phase_config(int(progress.get("phase_index", 0)))
        models = build_models(cfg, *dims)
        abstract = abstract_state(models)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, abstract)
        state, _ = ckpt.restore(step, abstract_like(abstract, shardings))
    finally:
        ckpt.close()
    return cfg, state


def _progress(ckpt: Checkpointer, step: int | None) -> dict:
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    args = ocp.args.Composite(progress=ocp.args.JsonRestore())
    return dict(ckpt.manager.restore(step, args=args)["progress"])


def load_codec_from_workdir(workdir: paths.PathLike, step: int | None = None, ema: bool = False):
    """(CodecConfig, {"params", "codebooks"}) of a run's checkpoint (for the codec tools);
    ``ema`` takes the moving average of the weights (the codebooks are the run's own)."""
    cfg, state = restore_run_state(workdir, step)
    try:
        params = generator_weights(state, ema)["codec"]
    except ValueError as err:
        raise CheckpointError(f"{workdir}: {err}") from None
    return cfg.codec, {"params": params, "codebooks": state.codebooks}
