"""orbax checkpoints of a training run: state + progress (data position, epoch sums) + config.

Layout: ``WORKDIR/checkpoints/<step>/{state,progress,config}``. ``state`` is the whole
:class:`~amylm_jax.state.TrainState` (params, codebook EMA state, both optimizer states, step,
RNG); ``progress`` is JSON with the grain iterator state (the next global step), the running
epoch sums and the epoch index, so a killed run resumes at exactly the next batch with the
same epoch means; ``config`` is the run's TrainConfig as JSON. Saves are asynchronous and
atomic (orbax writes to a temporary directory and renames), every process calls save, and
the manager keeps the last ``keep_last`` checkpoints plus the ``best_k`` best by the
monitored epoch metric.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from amylm_jax.config import CheckpointConfig, TrainConfig, from_dict

log = logging.getLogger("amylm_jax.checkpoint")

CHECKPOINT_DIR = "checkpoints"


def config_to_json(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one workdir."""

    def __init__(self, workdir: str, cfg: CheckpointConfig | None = None, read_only: bool = False):
        cfg = cfg or CheckpointConfig()
        self.cfg = cfg
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
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
        return from_dict(TrainConfig, restored["config"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CheckpointError(ValueError):
    """A workdir has no (such) checkpoint."""


def resolve_step(workdir: str, step: int | None = None) -> int:
    """The checkpoint step to load from ``workdir``: ``step`` if it exists, else the latest.

    Raises :class:`CheckpointError` naming the workdir (and the available steps).
    """
    hint = f"train first: python -m amylm_jax.train --config=... --workdir={workdir}"
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    steps: list[int] = []
    if os.path.isdir(directory):
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


def load_codec_from_workdir(workdir: str, step: int | None = None):
    """(CodecConfig, {"params", "codebooks"}) of a run's checkpoint (for the codec tools)."""
    from amylm_jax.train import restore_run_state

    cfg, state = restore_run_state(workdir, step)
    return cfg.codec, {"params": state.gen_params["codec"], "codebooks": state.codebooks}
