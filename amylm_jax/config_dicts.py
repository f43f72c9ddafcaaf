"""ConfigDict form of TrainConfig: the shared starting point of every `configs/*.py` file.

Every field of :class:`amylm_jax.config.TrainConfig` appears, so ``--config.a.b=v`` works for
all of them and a typo is an error (the configs are locked).
"""

import dataclasses

import ml_collections

from amylm_jax.config import TrainConfig


def base_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dataclasses.asdict(TrainConfig()))
    # Fields whose default is None must be typed so that overrides parse.
    cfg.init.mimi_weights = ml_collections.FieldReference(None, field_type=str)
    cfg.init.checkpoint = ml_collections.FieldReference(None, field_type=str)
    cfg.init.checkpoint_step = ml_collections.FieldReference(None, field_type=int)
    cfg.optim.lr_rvq = ml_collections.FieldReference(None, field_type=float)
    cfg.optim.lr_heads = ml_collections.FieldReference(None, field_type=float)
    cfg.optim.heads_b1 = ml_collections.FieldReference(None, field_type=float)
    cfg.optim.heads_b2 = ml_collections.FieldReference(None, field_type=float)
    cfg.heads.llm_dim = ml_collections.FieldReference(None, field_type=int)
    cfg.wandb_project = ml_collections.FieldReference(None, field_type=str)
    return cfg


def adaptation_config() -> ml_collections.ConfigDict:
    """Phase 1 (adaptation) from Kyutai's Mimi: batch 16 of 1 s crops, the default loss weights,
    checkpoints ranked by ``train/msspec_epoch``; the weights file and the store are required
    (``none`` starts from random weights, ``demo`` is the bundled corpus)."""
    cfg = base_config()
    cfg.init.mimi_weights = ""  # required: a path, or "none"
    cfg.data.store = ""  # required: a store directory, or "demo"
    cfg.data.batch_size = 16
    cfg.num_epochs = 100
    cfg.checkpoint.monitor = "train/msspec_epoch"
    return cfg
