"""Device mesh, sharding rules and global batch assembly (no pmap, no hand-written collectives).

The batch is sharded along every mesh axis (pure data parallelism); parameters and optimizer
state are replicated, or, with an ``fsdp`` axis, large tensors are split along their largest
divisible dimension. Because the step works on global ``jax.Array``s, codebook EMA statistics,
k-means and dead-code sampling see the whole global batch: XLA inserts the reductions, and one
device and eight devices train the same model.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger("amylm_jax.sharding")

#: Tensors smaller than this many elements are always replicated.
FSDP_MIN_SIZE = 2**18


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),), devices=None) -> Mesh:
    """A mesh from ``(name, size)`` pairs; one size may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    names = [a for a, _ in axes]
    sizes = [int(s) for _, s in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {axes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {axes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(names, sizes, strict=True))} needs "
            f"{math.prod(sizes)} devices, {len(devices)} available"
        )
    return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis."""
    return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    if size <= 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings for a params/optimizer pytree: replicated, or FSDP-split on an ``fsdp`` axis."""
    fsdp = mesh.shape.get("fsdp", 1)

    def rule(x):
        shape = tuple(getattr(x, "shape", ()))
        return NamedSharding(mesh, _fsdp_spec(shape, fsdp))

    return jax.tree_util.tree_map(rule, tree)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble this process's batch rows into global arrays (rows ordered by process)."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    force: bool = False,
) -> None:
    """Join a multi-process run: explicit flags, or JAX's auto-detection.

    ``force`` (``--distributed``, or ``AMYLM_DISTRIBUTED=1``) calls
    ``jax.distributed.initialize()`` with no arguments, which detects Cloud TPU VM pods (from
    the TPU metadata) and SLURM jobs; a SLURM or GKE environment is also detected without it.
    Single-process runs (nothing given, no cluster environment) do nothing. On CPU the
    collectives use gloo.
    """
    explicit = coordinator_address is not None
    force = force or os.environ.get("AMYLM_DISTRIBUTED", "") in ("1", "true", "True")
    cluster_vars = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    if not explicit and not force and not any(k in os.environ for k in cluster_vars):
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    jax.distributed.initialize(**kwargs)
    log.info(
        "joined distributed run: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
