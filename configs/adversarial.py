"""Phase 2, adversarial fine-tuning: msspec off, started from a phase-1 run.

    python -m amylm_jax.train --config=configs/adversarial.py --workdir=runs/adv \\
        --config.init.checkpoint=runs/adapt --config.data.store=/path/to/store

``--config.init.carry_optimizer=True`` keeps phase 1's optimizer states (default: fresh).
Checkpoints are ranked by ``train/wavlm_epoch`` (msspec is 0 in this phase).
"""

from amylm_jax.config_dicts import base_config


def get_config(arg=None):
    del arg
    cfg = base_config()
    cfg.init.checkpoint = ""  # required: the phase-1 workdir
    cfg.data.store = ""
    cfg.loss.adversarial_only = True
    cfg.checkpoint.monitor = "train/wavlm_epoch"
    cfg.num_epochs = 100
    return cfg
