"""The JAX side of the fidelity test and the throughput benchmark: one set-up for both.

Both start from random weights with every codebook slot initialised (random centroids,
``initialized = 1``), so no k-means runs and the measured step is the steady-state one, and
feed a random batch (tones plus noise, random teacher features of the real dims).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from amylm_jax.reference.inputs import LLM_DIM, WAVLM_DIM, make_batch, train_config
from amylm_jax.state import build_models, create_state, init_params
from amylm_jax.steps import train_step, train_step_reference

__all__ = [
    "LLM_DIM",
    "WAVLM_DIM",
    "jax_setup",
    "make_batch",
    "random_codebooks",
    "step_function",
    "train_config",
]


def random_codebooks(codebooks: Any, key: Any) -> Any:
    """Every slot initialised with random centroids (``sum ~ N(0, 1)``, usage in [0.5, 1.5])."""
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


def jax_setup(
    cfg: Any,
    seed: int,
    wavlm_dim: int = WAVLM_DIM,
    llm_dim: int = LLM_DIM,
    initialized_codebooks: bool = True,
):
    """``(models, state)``: random weights and fresh optimizers.

    Every codebook initialised with random centroids, or with ``initialized_codebooks=False``
    as a new model has them (empty, so the first training steps run k-means level by level).
    """
    models = build_models(cfg, wavlm_dim, llm_dim)
    k_init, k_cb, k_run = jax.random.split(jax.random.PRNGKey(seed), 3)
    gen, codebooks, disc = init_params(models, k_init)
    if initialized_codebooks:
        codebooks = random_codebooks(codebooks, k_cb)
    state = create_state(models, gen, codebooks, disc, k_run)
    return models, state


def step_function(models: Any):
    """The production train step (shared discriminator forwards unless the config says no)."""
    fn = train_step if models.cfg.shared_disc_forward else train_step_reference
    return functools.partial(fn, models)
