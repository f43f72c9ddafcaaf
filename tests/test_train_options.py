"""Training paths beyond the default: an fsdp-sharded step, remat, and what the loggers write.

TensorBoard event files and the offline W&B run are read back from disk with small readers of
their record formats (TFRecord framing; W&B's block log), so the tags users see are checked,
not only that files exist.
"""

from __future__ import annotations

import functools
import glob
import json
import struct
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from step_helpers import SMALL_DISC, make, make_batch

from amylm_jax import sharding
from amylm_jax.config import LOSS_NAMES, TrainConfig, tiny_codec_config
from amylm_jax.metrics import MetricWriter
from amylm_jax.sharding import batch_sharding, make_mesh, replicated, state_shardings
from amylm_jax.steps import train_step


# ------------------------------------------------------------------------------- readers
def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar in the event files under ``logdir``."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (n,) = struct.unpack("<Q", raw[pos : pos + 8])
            data = raw[pos + 12 : pos + 12 + n]  # skip the length's CRC
            pos += 12 + n + 4  # and the data's CRC
            event = event_pb2.Event()
            event.ParseFromString(data)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def wandb_history(run_file: Path) -> list[dict]:
    """The ``history`` rows of an offline W&B run file (``run-<id>.wandb``)."""
    from wandb.proto import wandb_internal_pb2

    raw = Path(run_file).read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        if (n == 0 and kind == 0) or pos + n > len(raw):  # the end, or a record still being written
            break
        pending += raw[pos : pos + n]
        pos += n
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


# ------------------------------------------------------------------------------- loggers
def test_tensorboard_has_the_training_tags(demo_checkpoint):
    scalars = tensorboard_scalars(demo_checkpoint / "tensorboard")
    for name in LOSS_NAMES:
        assert set(scalars[f"train/{name}_step"]) == {1, 2}, name
        assert f"train/{name}_epoch" in scalars, name
    assert "train/d_real_acc_step" in scalars and "train/lr_g_step" in scalars
    assert "val/msspec" in scalars and "train/codebook/usage_0_step" in scalars
    # The gradient shares: step values on the steps that measure them (every 10th from 0).
    assert set(scalars["train/grad_share/msspec_step"]) == {1}
    assert not any(name.startswith("train/grad_share/") and name.endswith("_epoch")
                   for name in scalars)  # fmt: skip
    # Epoch means have their own names, for the codebook metrics too.
    assert set(scalars["train/codebook/usage_0_epoch"]) == {2}
    # The values are the metric log's.
    records = [json.loads(x) for x in (demo_checkpoint / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in records if r.get("step") == 1 and "train/loss_g_step" in r)
    np.testing.assert_allclose(scalars["train/loss_g_step"][1], step1["train/loss_g_step"], 1e-6)


def test_objective_evaluation_is_logged_during_training(demo_checkpoint):
    """The demo run scores 2 validation clips at step 2 (``objective_eval_every_steps``): the
    logged means are `evaluate`'s scores of the checkpoint's averaged weights."""
    from amylm_jax.checkpoint import restore_run_state
    from amylm_jax.data.demo import resolve_store
    from amylm_jax.data.pipeline import split_clips
    from amylm_jax.data.store import open_store
    from amylm_jax.evaluate.run import score_clips

    records = [json.loads(x) for x in (demo_checkpoint / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in records if "eval/all/si_sdr" in r)
    assert logged["step"] == 2
    for key in ("eval/all/mel_distance", "eval/cb0/stft_distance", "eval/codebook/entropy_0"):
        assert np.isfinite(logged[key]), key
    cfg, state = restore_run_state(str(demo_checkpoint))
    store = open_store(resolve_store(cfg.data.store))
    _, val = split_clips(store, cfg.data)
    variables = {"params": state.ema_params["codec"], "codebooks": state.codebooks}
    scores = score_clips(cfg, variables, store, val[:2])
    for name in ("all", "cb0_1", "cb0"):
        for metric in ("si_sdr", "mel_distance", "stft_distance"):
            np.testing.assert_allclose(
                logged[f"eval/{name}/{metric}"], scores["variants"][name][metric], rtol=1e-4
            )
    assert logged["eval/codebook/usage_0"] == scores["codebooks"][0]["usage"]
    scalars = tensorboard_scalars(demo_checkpoint / "tensorboard")
    assert set(scalars["eval/all/si_sdr"]) == {2}


def test_wandb_offline_run_holds_the_records(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = MetricWriter(
        tmp_path / "run", tensorboard=False, wandb_project="amy-test", config={"seed": 42}
    )
    writer.write(1, {"train/loss_g_step": 2.5, "train/msspec_step": 0.5})
    writer.write(2, {"train/loss_g_step": 2.0, "train/msspec_epoch": 0.4}, epoch=0)
    writer.close()
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    # W&B writes the run file from its own service process; on a loaded machine the history
    # records can land a moment after finish() returns, so read until both rows are there.
    deadline = time.monotonic() + 60
    while len(rows := wandb_history(Path(run_file))) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [(r["_step"], r["train/loss_g_step"]) for r in rows] == [(1, 2.5), (2, 2.0)]
    assert rows[0]["train/msspec_step"] == 0.5 and rows[1]["train/msspec_epoch"] == 0.4


# ------------------------------------------------------------------------------- fsdp, remat
def _steps(models, state, mesh, n: int = 2):
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    bsh = batch_sharding(mesh)
    step = jax.jit(
        functools.partial(train_step, models),
        in_shardings=(shardings, bsh),
        out_shardings=(shardings, replicated(mesh)),
    )
    losses = []
    for i in range(n):
        batch = {k: jax.device_put(v, bsh) for k, v in make_batch(8, seed=i).items()}
        state, metrics = step(state, batch)
        losses.append({k: float(metrics[f"train/{k}"]) for k in LOSS_NAMES})
    return state, losses


@pytest.mark.slow
def test_fsdp_sharded_step_trains_the_same_model(monkeypatch):
    """Parameters and optimizer state split over an ``fsdp`` axis: same losses and updates as
    one device (the threshold is lowered so the tiny model's tensors are really split)."""
    monkeypatch.setattr(sharding, "FSDP_MIN_SIZE", 2**10)
    models, state = make()
    fsdp_mesh = make_mesh((("data", 2), ("fsdp", 4)))
    split, fsdp_losses = _steps(models, state, fsdp_mesh)
    specs = [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(split.gen_params)]
    assert sum("fsdp" in tuple(s) for s in specs) >= 5  # really sharded
    moments = [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(split.opt_g)]
    assert any("fsdp" in tuple(s) for s in moments)
    one, one_losses = _steps(models, state, make_mesh((("data", 1),), jax.devices()[:1]))
    for a, b in zip(one_losses, fsdp_losses, strict=True):
        for name in LOSS_NAMES:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for x, y in zip(
        jax.tree_util.tree_leaves(jax.device_get(one.gen_params)),
        jax.tree_util.tree_leaves(jax.device_get(split.gen_params)),
        strict=True,
    ):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_remat_changes_memory_not_numbers():
    """``remat=True`` recomputes activations in the backward: the step's numbers are equal."""
    base = TrainConfig(codec=tiny_codec_config(), disc=SMALL_DISC)
    batch = make_batch()
    results = []
    for remat in (False, True):
        models, state = make(TrainConfig(**{**base.__dict__, "remat": remat}))
        new, metrics = jax.jit(functools.partial(train_step, models))(state, batch)
        results.append((jax.device_get(new.gen_params), jax.device_get(metrics)))
    (p0, m0), (p1, m1) = results
    for name in LOSS_NAMES:
        np.testing.assert_allclose(m1[f"train/{name}"], m0[f"train/{name}"], rtol=1e-6, atol=1e-7)
    for x, y in zip(jax.tree_util.tree_leaves(p0), jax.tree_util.tree_leaves(p1), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)


def test_mimi_recipe_config_trains_on_the_demo_store(tmp_path):
    """``configs/mimi_recipe.py`` (the full-size codec with every recipe tool on) trains a step
    on the demo store, logs what the tools log and checkpoints the weight average."""
    from conftest import load_config

    from amylm_jax import train
    from amylm_jax.checkpoint import restore_run_state
    from amylm_jax.config import config_from_dict

    config = load_config("mimi_recipe")
    config.data.store = "demo"
    config.init.mimi_weights = "none"
    config.max_steps = 1
    config.checkpoint.every_steps = 1
    config.data.batch_size = 8  # one example per virtual device
    # The full-size codec's weights, optimizer state and weight average split over 4 of the 8
    # virtual devices (as on a pod); replicated on all 8 this test needed 14.6 GB of memory.
    config.mesh = (("data", 2), ("fsdp", 4))
    config.data.segment_seconds = 0.32
    config.eval_every_steps = 1
    config.eval_max_batches = 1
    config.num_eval_audio = 0
    config.objective_eval_every_steps = 0  # full-length decodes: covered on the demo codec
    cfg = config_from_dict(config)
    assert cfg.balancer.enabled and cfg.optim.ema_decay == 0.99 and cfg.quantizer_bypass == 0.5
    assert cfg.optim.weight_decay_groups == ("main",) and cfg.optim.optimizer == "adamw"
    train.train_and_evaluate(cfg, str(tmp_path))
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in records if r.get("step") == 1 and "train/loss_g_step" in r)
    assert np.isfinite(step1["train/loss_g_step"])
    for key in ("train/grad_share/msspec_step", "train/codebook/decoded_step",
                "train/codebook/bypassed_step"):  # fmt: skip
        assert key in step1, key
    assert step1["train/lr_g_step"] < cfg.optim.lr_g  # warming up
    _, state = restore_run_state(str(tmp_path))
    assert state.ema_params is not None and state.balancer is not None


# ------------------------------------------------------------------------------- curriculum
def test_phases_validate_and_build_each_phase_config():
    from amylm_jax.config import TrainConfig, config_to_json, from_dict

    no_gan = {"loss.alpha_adv": 0.0, "loss.alpha_feat": 0.0}
    data = {"max_steps": 6, "phases": [
        {"name": "warmup", "steps": 2, "overrides": no_gan},
        {"name": "adapt", "steps": 2},
        {"name": "adv", "steps": 0, "overrides": {"loss.adversarial_only": True,
                                                  "frozen": ["encoder"]}},
    ]}  # fmt: skip
    cfg = from_dict(TrainConfig, data)
    assert cfg.phase_plan(6) == [("warmup", 1, 2), ("adapt", 3, 4), ("adv", 5, 6)]
    assert cfg.phase_plan(9)[-1] == ("adv", 5, 9)  # the last phase fills the run
    assert not cfg.phase_config(0).loss.gan and cfg.phase_config(1).loss.gan
    assert cfg.phase_config(2).frozen == ("encoder",) and cfg.phase_config(2).phases == ()
    assert cfg.phase_config(1) == TrainConfig(max_steps=6)
    assert from_dict(TrainConfig, config_to_json(cfg)) == cfg  # a checkpoint's config round trip
    assert TrainConfig().phase_plan(7) == [("train", 1, 7)]
    bad = [
        ({"name": "a", "steps": 2, "overrides": {"codec.quantizer.bins": 4}}, "may change only"),
        ({"name": "a", "steps": 2, "overrides": {"loss.alpha_nope": 1.0}}, "unknown config key"),
        ({"name": "a", "steps": 2, "overrides": {"loss.llm_latent": "x"}}, "phase 'a'"),
    ]
    for phase, message in bad:
        with pytest.raises(ValueError, match=message):
            from_dict(TrainConfig, {"phases": [phase]})
    with pytest.raises(ValueError, match="only for the last phase"):
        from_dict(TrainConfig, {"phases": [{"name": "a"}, {"name": "b", "steps": 2}]})
    with pytest.raises(ValueError, match="distinct"):
        from_dict(TrainConfig, {"phases": [{"name": "a", "steps": 1}, {"name": "a"}]})
    fixed = from_dict(
        TrainConfig, {"phases": [{"name": "a", "steps": 3}, {"name": "b", "steps": 3}]}
    )
    with pytest.raises(ValueError, match="the phases take 6 steps"):
        fixed.phase_plan(5)
