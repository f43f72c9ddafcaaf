"""Adaptation with the recipe tools of the published codec trainers turned on together.

    python -m amylm_jax.train --config=configs/mimi_recipe.py --workdir=runs/recipe \\
        --config.init.mimi_weights=/path/to/tokenizer-e351c8d8-checkpoint125.safetensors \\
        --config.data.store=/path/to/store

The adaptation config (`configs/adapt.py`: batch 16 of 1 s crops, the same loss weights, the
encoder frozen) plus, as Mimi, EnCodec and DAC train:

* a 0.99 moving average of the generator's weights, used by validation
  (`python -m amylm_jax.export --workdir=runs/recipe --ema` exports it);
* the loss balancer (the loss weights become fractions of the gradient);
* a linear learning-rate warm-up, then a cosine decay to a tenth of the rate;
* AdamW with a weight decay of 5e-2 on the transformers' weight matrices only;
* quantizer dropout and the quantization bypass, each for half of the examples;
* the periodic objective evaluation every 5000 steps.

Every tool is described in docs/recipes.md. Try it on the bundled demo with
``--config.data.store=demo --config.init.mimi_weights=none``. Which of these help this codec
is measured by ``benchmarks/recipe_quality.py``; until that is recorded in
benchmarks/RESULTS.md these are the published recipes' settings, not measured defaults.
"""

from amylm_jax.config_dicts import RECIPE_TOOLS, adaptation_config, apply_recipe_tools


def get_config(arg=None):
    del arg
    # Weight average 0.99 validated with; the loss balancer; warm-up 500 steps then a cosine
    # decay to 0.1 x the rate over 200k steps; AdamW (5e-2 on the transformers' matrices);
    # quantizer dropout and bypass for half of the examples each.
    cfg = apply_recipe_tools(adaptation_config(), RECIPE_TOOLS)
    # A live quality curve.
    cfg.objective_eval_every_steps = 5000
    cfg.objective_eval_clips = 8
    return cfg
