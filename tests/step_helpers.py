"""Shared tiny-config builders for the training-step and quantizer tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from amylm_jax.config import DiscConfig, TrainConfig, tiny_codec_config
from amylm_jax.state import build_models, create_state, init_params

DW, DL = 24, 40
# Two small scales keep compile time low; the step logic does not depend on the count.
SMALL_DISC = DiscConfig(filters=4, n_ffts=(256, 128), hop_lengths=(64, 32), win_lengths=(256, 128))


def make(cfg: TrainConfig | None = None, seed: int = 0):
    cfg = cfg or TrainConfig(codec=tiny_codec_config(), disc=SMALL_DISC)
    models = build_models(cfg, DW, DL)
    gen, cb, disc = init_params(models, jax.random.PRNGKey(seed))
    return models, create_state(models, gen, cb, disc, jax.random.PRNGKey(seed + 1))


def make_batch(b: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(24000) / 24000
    audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300, (b, 1)) * t)
    return {
        "audio": (audio + 0.02 * rng.standard_normal((b, 24000))).astype(np.float32),
        "wavlm": rng.standard_normal((b, 13, DW)).astype(np.float32),
        "llm": rng.standard_normal((b, 13, DL)).astype(np.float32),
        "mask": np.ones((b, 13), np.float32),
        "weight": np.ones(b, np.float32),
    }


def random_quantizer_variables(model, cfg, batch: int, frames: int, seed: int = 0,
                               uninitialized=()):  # fmt: skip
    """A quantizer's variables with every codebook initialised to random centroids (except the
    ``(sub_quantizer, layer)`` pairs in ``uninitialized``), and a random latent to quantise."""
    rng = np.random.default_rng(seed)
    x = jnp.zeros((batch, frames, cfg.input_dimension))
    v = model.init({"params": jax.random.key(seed)}, x, train=False)
    v = jax.tree_util.tree_map(lambda a: a, v)  # a mutable copy
    for sub in sorted(v["codebooks"]):
        layers = sorted(v["codebooks"][sub], key=lambda name: int(name.split("_")[-1]))
        for name in layers:
            if (sub, int(name.split("_")[-1])) in uninitialized:
                continue
            usage = rng.uniform(0.5, 1.5, cfg.bins).astype(np.float32)
            cent = rng.normal(size=(cfg.bins, cfg.dimension)).astype(np.float32)
            cb = v["codebooks"][sub][name]
            cb["embedding_sum"] = jnp.asarray(cent * usage[:, None])
            cb["cluster_usage"] = jnp.asarray(usage)
            cb["initialized"] = jnp.float32(1.0)
    emb = jnp.asarray(rng.normal(size=(batch, frames, cfg.input_dimension)), jnp.float32)
    return v, emb
