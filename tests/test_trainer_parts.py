"""Small trainer pieces: optimizer groups, warm-up, checkpoint retention, metric bookkeeping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amylm_jax.checkpoint import Checkpointer
from amylm_jax.config import CheckpointConfig, OptimConfig, TrainConfig
from amylm_jax.metrics import EpochAccumulator, MetricWriter, read_metrics, truncate_after
from amylm_jax.state import generator_labels, make_optimizers, rvq_learning_rate
from amylm_jax.train import NonFiniteLossError, _handle, _Run


def _gen_tree():
    leaf = jnp.ones((3,))
    return {
        "codec": {
            "encoder": {"model_0": {"kernel": leaf}},
            "encoder_transformer": {"layers_0": {"kernel": leaf}},
            "decoder": {"model_0": {"kernel": leaf}},
            "quantizer": {"rvq_first": {"input_proj": {"kernel": leaf}}},
        },
        "wavlm_head": {"layers_0": {"kernel": leaf}},
        "llm_head": {"layers_0": {"kernel": leaf}},
    }


def test_generator_groups_and_frozen_updates_are_zero():
    cfg = TrainConfig(optim=OptimConfig(lr_rvq=1e-2, lr_heads=1e-1))
    tree = _gen_tree()
    labels = generator_labels(tree, cfg)
    assert labels["codec"]["encoder"]["model_0"]["kernel"] == "frozen"
    assert labels["codec"]["encoder_transformer"]["layers_0"]["kernel"] == "frozen"
    assert labels["codec"]["decoder"]["model_0"]["kernel"] == "main"
    assert labels["codec"]["quantizer"]["rvq_first"]["input_proj"]["kernel"] == "rvq"
    assert labels["wavlm_head"]["layers_0"]["kernel"] == "heads"
    tx_g, _ = make_optimizers(cfg)
    state = tx_g.init(tree)
    grads = jax.tree_util.tree_map(lambda x: 0.1 * x, tree)
    updates, _ = tx_g.update(grads, state, tree)
    assert float(jnp.abs(updates["codec"]["encoder"]["model_0"]["kernel"]).max()) == 0.0
    # Adam's first step is lr * sign(g): each group moves by its own learning rate.
    np.testing.assert_allclose(updates["codec"]["decoder"]["model_0"]["kernel"], -3e-4, rtol=1e-3)
    np.testing.assert_allclose(
        updates["codec"]["quantizer"]["rvq_first"]["input_proj"]["kernel"], -1e-2, rtol=1e-3
    )
    np.testing.assert_allclose(updates["llm_head"]["layers_0"]["kernel"], -1e-1, rtol=1e-3)


def test_rvq_warmup_schedule():
    cfg = TrainConfig(optim=OptimConfig(lr_rvq=5e-5, rvq_warmup_steps=100))
    lr = rvq_learning_rate(cfg)
    np.testing.assert_allclose(float(lr(0)), 5e-5 / 100, rtol=1e-6)
    np.testing.assert_allclose(float(lr(49)), 5e-5 * 50 / 100, rtol=1e-6)
    np.testing.assert_allclose(float(lr(500)), 5e-5, rtol=1e-6)


def test_epoch_means_are_batch_size_weighted():
    acc = EpochAccumulator()
    acc.add({"train/llm": 1.0}, 16)
    acc.add({"train/llm": 4.0}, 8)
    assert acc.means()["train/llm"] == pytest.approx((16 * 1.0 + 8 * 4.0) / 24)
    assert EpochAccumulator(acc.state()).means() == acc.means()


def test_metrics_file_truncated_after_resume(tmp_path):
    writer = MetricWriter(str(tmp_path), tensorboard=False)
    for step in range(1, 6):
        writer.write(step, {"train/loss_g_step": float(step)})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train/lo')  # a line cut by kill -9
    assert truncate_after(str(tmp_path), 3) == 3
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]


def test_nonfinite_loss_stops_with_the_step_named(tmp_path):
    class Bar:
        n = 0

        def update(self, n):
            self.n += n

        def set_postfix(self, **kw):
            pass

    writer = MetricWriter(str(tmp_path), tensorboard=False)
    run = _Run(TrainConfig(), str(tmp_path), writer, 10, 100, EpochAccumulator(), True)
    metrics = {
        "train/loss_g": np.float32(np.nan),
        "train/loss_d": np.float32(2.0),
        "train/grad_norm_g": np.float32(np.inf),
        "train/msspec": np.float32(1.0),
        "train/nonfinite": np.float32(1.0),
    }
    with pytest.raises(NonFiniteLossError, match="at step 17"):
        _handle(run, 17, metrics, 1.0, Bar())
    writer.close()
    assert read_metrics(str(tmp_path)) == []  # nothing recorded from the bad step


def test_checkpoints_keep_last_and_best(tmp_path):
    cfg = CheckpointConfig(keep_last=2, best_k=2, monitor="train/msspec_epoch", async_save=False)
    ckpt = Checkpointer(str(tmp_path), cfg)
    values = {1: 0.9, 2: 0.2, 3: 0.5, 4: 0.1, 5: 0.8, 6: 0.7}
    state = {"w": np.arange(4, dtype=np.float32)}
    for step, value in values.items():
        ckpt.save(
            step,
            {"w": state["w"] + step},
            {"step": step},
            TrainConfig(),
            metrics={"train/msspec_epoch": value},
        )
    ckpt.wait()
    # Latest two (5, 6) plus the two lowest msspec (4, 2).
    assert sorted(ckpt.all_steps()) == [2, 4, 5, 6]
    restored, progress = ckpt.restore(4, {"w": jax.ShapeDtypeStruct((4,), np.float32)})
    np.testing.assert_array_equal(restored["w"], state["w"] + 4)
    assert progress == {"step": 4}
    assert ckpt.restore_config(4) == TrainConfig()
    ckpt.close()


def test_checkpoints_are_ranked_by_the_epoch_that_ends_at_the_save(tmp_path):
    from amylm_jax.train import ranking_metrics

    writer = MetricWriter(str(tmp_path), tensorboard=False)
    run = _Run(TrainConfig(), str(tmp_path), writer, 10, 100, EpochAccumulator(), True)
    run.last_epoch = {"train/msspec_epoch": 0.5}
    assert ranking_metrics(run, epoch_end=True) == {"train/msspec_epoch": 0.5}
    assert ranking_metrics(run, epoch_end=False) is None  # mid-epoch: previous epoch's means
    run.last_epoch = {}
    assert ranking_metrics(run, epoch_end=True) is None
    writer.close()


def test_epoch_means_never_share_a_name_with_step_values():
    from amylm_jax.metrics import epoch_record, step_record

    values = {"train/loss_g": 1.0, "train/codebook/usage_0": 0.5, "val/msspec": 0.1}
    assert set(step_record(values)) == {
        "train/loss_g_step", "train/codebook/usage_0_step", "val/msspec"
    }  # fmt: skip
    assert set(epoch_record(values)) == {
        "train/loss_g_epoch", "train/codebook/usage_0_epoch", "val/msspec"
    }  # fmt: skip


def _optim(**kw) -> TrainConfig:
    return TrainConfig(optim=OptimConfig(**kw))


def test_learning_rate_schedules_by_hand():
    import math

    from amylm_jax.state import lr_schedule

    # Constant (the original) with and without a warm-up: (step + 1) / warmup, then flat.
    assert float(lr_schedule(_optim(), 3e-4)(123)) == pytest.approx(3e-4)
    warm = lr_schedule(_optim(warmup_steps=4), 1.0)
    assert [float(warm(s)) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    # Cosine to 10 % over 10 steps after 2 warm-up steps, then flat.
    cos = lr_schedule(
        _optim(schedule="cosine", warmup_steps=2, decay_steps=10, final_lr_ratio=0.1), 2.0
    )
    for step in (2, 5, 12, 40):
        t = min((step - 2) / 10, 1.0)
        assert float(cos(step)) == pytest.approx(
            2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
        )
    assert float(cos(0)) == pytest.approx(1.0)  # warm-up: (0 + 1) / 2 of the rate
    # Exponential, DAC style: x 0.5 every 100 steps.
    exp = lr_schedule(_optim(schedule="exponential", decay_steps=100, decay_rate=0.5), 1.0)
    assert [float(exp(s)) for s in (0, 100, 250)] == pytest.approx([1.0, 0.5, 0.5**2.5])
    with pytest.raises(ValueError, match="decay_steps"):
        OptimConfig(schedule="cosine")
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")


def test_schedules_drive_the_optimizers_and_leave_the_default_state_alone():
    """Adam's first update is about lr(0) x sign(g): the discriminator's (any tree) shows the
    warm-up. Without a schedule the optimizer state has the layout it always had."""
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    for cfg, lr0 in ((_optim(), 3e-4), (_optim(warmup_steps=10), 3e-5)):
        _, tx_d = make_optimizers(cfg)
        updates, _ = tx_d.update(grads, tx_d.init(params), params)
        np.testing.assert_allclose(np.abs(updates["w"]), lr0, rtol=1e-4)
    plain = jax.tree_util.tree_structure(make_optimizers(_optim())[1].init(params))
    scheduled = jax.tree_util.tree_structure(
        make_optimizers(_optim(warmup_steps=10))[1].init(params)
    )
    assert plain != scheduled  # a schedule adds its step count; the default does not


def test_adamw_decays_transformer_weights_only_in_chosen_groups():
    """Zero gradients: Adam's step is 0, so an update is exactly the decoupled decay
    ``-lr * weight_decay * p``, on the decoder transformer's weight matrices and nowhere else
    (not its norms, not other modules, not the discriminator's group)."""
    cfg = TrainConfig(
        frozen=(),
        optim=OptimConfig(
            optimizer="adamw",
            weight_decay=0.05,
            weight_decay_on="transformers",
            weight_decay_groups=("main",),
        ),
    )
    tree = _gen_tree()
    tree["codec"]["decoder_transformer"] = {
        "layers_0": {"linear1": {"kernel": jnp.full((2, 2), 2.0)}, "norm1": {"scale": jnp.ones(2)}}
    }
    tx_g, tx_d = make_optimizers(cfg)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, tree)
    updates, _ = tx_g.update(zeros, tx_g.init(tree), tree)
    flat = {
        "/".join(k.key for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(updates)[0]
    }
    decayed = {n for n, v in flat.items() if np.any(v != 0)}
    assert decayed == {
        "codec/decoder_transformer/layers_0/linear1/kernel",
        "codec/encoder_transformer/layers_0/kernel",
    }
    np.testing.assert_allclose(
        flat["codec/decoder_transformer/layers_0/linear1/kernel"], -3e-4 * 0.05 * 2.0, rtol=1e-6
    )
    disc = {"w": jnp.ones((3,))}
    d_updates, _ = tx_d.update({"w": jnp.zeros(3)}, tx_d.init(disc), disc)
    assert float(jnp.abs(d_updates["w"]).max()) == 0  # "disc" is not in weight_decay_groups
    # "all" (the default) decays every parameter of every group, as before.
    _, tx_all = make_optimizers(_optim(optimizer="adamw", weight_decay=0.05))
    d_updates, _ = tx_all.update({"w": jnp.zeros(3)}, tx_all.init(disc), disc)
    np.testing.assert_allclose(d_updates["w"], -3e-4 * 0.05, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown groups"):
        OptimConfig(weight_decay_groups=("decoder",))


def test_rvq_rest_projections_freeze_apart_from_rvq_first():
    """``frozen`` takes paths below a submodule: ``quantizer/rvq_rest`` gets no update and no
    gradient, while ``rvq_first`` keeps training."""
    from types import SimpleNamespace

    from amylm_jax.config import FROZEN_ENCODER
    from amylm_jax.steps import _codec_params

    cfg = TrainConfig(frozen=(*FROZEN_ENCODER, "quantizer/rvq_rest"))
    tree = _gen_tree()
    tree["codec"]["quantizer"]["rvq_rest"] = {"input_proj": {"kernel": jnp.ones((2, 2))}}
    labels = generator_labels(tree, cfg)
    assert labels["codec"]["quantizer"]["rvq_rest"]["input_proj"]["kernel"] == "frozen"
    assert labels["codec"]["quantizer"]["rvq_first"]["input_proj"]["kernel"] == "rvq"
    tx_g, _ = make_optimizers(cfg)
    grads = jax.tree_util.tree_map(lambda x: 0.1 * x, tree)
    updates, _ = tx_g.update(grads, tx_g.init(tree), tree)
    assert (
        float(jnp.abs(updates["codec"]["quantizer"]["rvq_rest"]["input_proj"]["kernel"]).max()) == 0
    )
    assert (
        float(jnp.abs(updates["codec"]["quantizer"]["rvq_first"]["input_proj"]["kernel"]).max()) > 0
    )
    models = SimpleNamespace(cfg=cfg)
    grad = jax.grad(
        lambda gp: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(_codec_params(models, gp)))
    )(tree)
    assert float(jnp.abs(grad["codec"]["quantizer"]["rvq_rest"]["input_proj"]["kernel"]).max()) == 0
    assert (
        float(jnp.abs(grad["codec"]["quantizer"]["rvq_first"]["input_proj"]["kernel"]).min()) == 1
    )
    assert float(jnp.abs(grad["codec"]["encoder"]["model_0"]["kernel"]).max()) == 0
