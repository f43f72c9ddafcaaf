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


#: The recipe tools of the published codec trainers, by the name `configs/demo.py:<tools>`
#: and `benchmarks/recipe_quality.py` use (each described in docs/recipes.md).
RECIPE_TOOLS = ("ema", "balancer", "schedule", "adamw", "dropout", "bypass")


def apply_recipe_tools(
    cfg: ml_collections.ConfigDict,
    tools,
    *,
    warmup_steps: int = 500,
    decay_steps: int = 200_000,
) -> ml_collections.ConfigDict:
    """Turn on the named recipe tools (a subset of :data:`RECIPE_TOOLS`, or ``"all"``) with the
    published recipes' settings; ``warmup_steps``/``decay_steps`` scale the schedule to the run.

    * ``ema``: a 0.99 moving average of the generator's weights, used by validation (Mimi,
      EnCodec);
    * ``balancer``: the loss balancer (audiocraft's, extended to the distillation losses);
    * ``schedule``: a linear warm-up, then a cosine decay to a tenth of the rate;
    * ``adamw``: AdamW with a weight decay of 5e-2 on the transformers' weight matrices (Mimi);
    * ``dropout``: quantizer dropout for half of the examples (DAC, Mimi);
    * ``bypass``: the quantization bypass for half of the examples (Mimi).
    """
    names = RECIPE_TOOLS if tools in ("all", ("all",)) else tuple(tools)
    unknown = sorted(set(names) - set(RECIPE_TOOLS))
    if unknown:
        raise ValueError(
            f"unknown recipe tool(s) {', '.join(unknown)}; known: all, {', '.join(RECIPE_TOOLS)}"
        )
    if "ema" in names:
        cfg.optim.ema_decay = 0.99
        cfg.optim.ema_eval = True
    if "balancer" in names:
        cfg.balancer.enabled = True
    if "schedule" in names:
        cfg.optim.schedule = "cosine"
        cfg.optim.warmup_steps = warmup_steps
        cfg.optim.decay_steps = decay_steps
        cfg.optim.final_lr_ratio = 0.1
    if "adamw" in names:
        cfg.optim.optimizer = "adamw"
        cfg.optim.weight_decay = 0.05
        cfg.optim.weight_decay_on = "transformers"
        cfg.optim.weight_decay_groups = ("main",)
    if "dropout" in names:
        cfg.quantizer_dropout = 0.5
    if "bypass" in names:
        cfg.quantizer_bypass = 0.5
    return cfg
