"""Inputs of the fidelity test and the benchmarks: the run config and a random batch.

No JAX import here: the PyTorch side of the benchmark imports this module too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from amylm_jax.config import config_from_dict

#: Teacher dims of the real system (WavLM-large, Qwen3-1.7B).
WAVLM_DIM, LLM_DIM = 1024, 2048


def make_batch(cfg: Any, batch: int, seconds: float, seed: int, wavlm_dim: int, llm_dim: int):
    """Random numpy batch: audio ``[B, N]`` (tones + noise), teacher features ``[B, T, D]``."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * cfg.codec.sample_rate))
    frames = math.ceil(n / cfg.codec.frame_size)
    t = np.arange(n) / cfg.codec.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400, (batch, 1)) * t)
    audio = (tone + 0.05 * rng.standard_normal((batch, n))).astype(np.float32)
    return {
        "audio": audio,
        "wavlm": rng.standard_normal((batch, frames, wavlm_dim)).astype(np.float32),
        "llm": rng.standard_normal((batch, frames, llm_dim)).astype(np.float32),
        "mask": np.ones((batch, frames), np.float32),
    }


def train_config(config: Any, precision: str = "fp32"):
    """TrainConfig from a ConfigDict with random init and no data store (benchmarks only)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data["init"] = {**data.get("init", {}), "mimi_weights": None, "checkpoint": None}
    data["data"] = {**data.get("data", {}), "store": data.get("data", {}).get("store") or "none"}
    data["precision"] = precision
    return config_from_dict(data)
