"""Shared tiny-config builders for the training-step tests."""

from __future__ import annotations

import jax
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
