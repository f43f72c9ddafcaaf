"""Phase 1, adaptation (REF, docs/original.md §7): reconstruction-heavy training from Kyutai's Mimi.

    python -m amylm_jax.train --config=configs/adapt.py --workdir=runs/adapt \\
        --config.init.mimi_weights=/path/to/tokenizer-e351c8d8-checkpoint125.safetensors \\
        --config.data.store=/path/to/store

Batch 16 of 1 s crops; loss_g = 1 adv + 4 feat + 1 wavlm + 1 llm + 15 msspec; encoder and
encoder transformer frozen; checkpoints ranked by ``train/msspec_epoch``.
``--config.init.mimi_weights=none`` starts from random weights.
"""

from amylm_jax.config_dicts import adaptation_config


def get_config(arg=None):
    del arg
    return adaptation_config()
