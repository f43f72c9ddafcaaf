"""The bundled demo: a small random-init codec on the espeak-ng demo corpus, CPU friendly.

    python -m amylm_jax.train --config=configs/demo.py --workdir=runs/demo

A few minutes on 2 CPU cores. The store ``demo`` is built on first use (tiny random teachers).
"""

from amylm_jax.config_dicts import base_config


def get_config(arg=None):
    del arg
    cfg = base_config()
    c = cfg.codec
    c.seanet.dimension = 32
    c.seanet.n_filters = 4
    c.transformer.d_model = 32
    c.transformer.num_heads = 2
    c.transformer.num_layers = 2
    c.transformer.dim_feedforward = 64
    c.quantizer.dimension = 16
    c.quantizer.input_dimension = 32
    c.quantizer.output_dimension = 32
    c.quantizer.bins = 64
    c.quantizer.n_q = 6
    c.quantizer.num_codebooks = 4
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
    return cfg
