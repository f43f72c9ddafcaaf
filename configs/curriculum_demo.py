"""A three-phase curriculum on the bundled demo, in one run:

    python -m amylm_jax.train --config=configs/curriculum_demo.py --workdir=runs/curriculum

With ``--config=configs/curriculum_demo.py:N`` each phase takes N steps (default 20):

1. ``warmup``: reconstruction and distillation only, no discriminator (Mimi's
   warm-up before the adversarial losses come in);
2. ``adapt``: the adaptation losses (adversarial + feature matching + msspec +
   distillation), as ``configs/adapt.py``;
3. ``adversarial`` (the rest of the run): msspec off, as ``configs/adversarial.py``.

The run moves from one phase to the next by itself; each phase starts with fresh optimizer
states and keeps every weight and codebook. Checkpoints record the phase, a resumed run lands
in the phase its checkpoint was written in, and every metric record carries ``"phase"``
(``train/phase_index`` marks the first step of each). A phase may change the losses, the
optimizers, the balancer and what trains (`frozen`, `train_rest_codebooks`); see
``amylm_jax.config.PHASE_KEYS``.
"""

import importlib.util
from pathlib import Path


def _demo():
    spec = importlib.util.spec_from_file_location("demo", Path(__file__).with_name("demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg=None):
    steps = int(arg or 20)  # per phase: --config=configs/curriculum_demo.py:4 runs 4 + 4 + 4
    cfg = _demo()  # the demo codec and store
    cfg.max_steps = 3 * steps
    no_gan = {"loss.alpha_adv": 0.0, "loss.alpha_feat": 0.0}
    cfg.phases = (
        {"name": "warmup", "steps": steps, "overrides": no_gan},
        {"name": "adapt", "steps": steps, "overrides": {}},
        {"name": "adversarial", "steps": 0, "overrides": {"loss.adversarial_only": True}},
    )
    return cfg
