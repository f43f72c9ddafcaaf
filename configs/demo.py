"""The bundled demo: a small random-init codec on the espeak-ng demo corpus, CPU friendly.

    python -m amylm_jax.train --config=configs/demo.py --workdir=runs/demo

A few minutes on 2 CPU cores. The store ``demo`` is built on first use (tiny random teachers).

``--config=configs/demo.py:TOOLS`` turns on recipe tools (docs/recipes.md), a comma-separated
subset of ema, balancer, schedule, adamw, dropout, bypass, or ``all``; the schedule warms up
over 50 steps and decays over 2,000 (the demo's scale). ``benchmarks/recipe_quality.py``
compares them.
"""

import dataclasses

import ml_collections

from amylm_jax.config import tiny_codec_config
from amylm_jax.config_dicts import apply_recipe_tools, base_config


def get_config(arg=None):
    cfg = base_config()
    # The small codec of the tests (real 24 kHz / 12.5 Hz frame arithmetic): one definition.
    cfg.codec = ml_collections.ConfigDict(dataclasses.asdict(tiny_codec_config()))
    # Three STFT scales of 8 filters: the discriminator dominates a CPU step.
    cfg.disc.filters = 8
    cfg.disc.n_ffts = (512, 256, 128)
    cfg.disc.hop_lengths = (128, 64, 32)
    cfg.disc.win_lengths = (512, 256, 128)
    cfg.init.mimi_weights = None
    cfg.data.store = "demo"
    cfg.data.batch_size = 4
    cfg.max_steps = 60
    cfg.eval_every_steps = 30
    cfg.checkpoint.every_steps = 20
    cfg.optim.lr_g = 1e-3
    if arg:
        tools = [t.strip() for t in arg.split(",") if t.strip()]
        apply_recipe_tools(cfg, "all" if tools == ["all"] else tools, warmup_steps=50,
                           decay_steps=2000)  # fmt: skip
    return cfg
