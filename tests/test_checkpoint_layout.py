"""Checkpoints of earlier layouts: migrated where the meaning is clear, else refused whole."""

from __future__ import annotations

import json
import shutil

import pytest

from amylm_jax.checkpoint import CheckpointError, restore_run_state


def _edit_config(workdir, edit) -> None:
    path = workdir / "checkpoints" / "2" / "config" / "metadata"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_old_top_level_formulation_keys_are_migrated(demo_checkpoint, tmp_path):
    """Earlier versions kept ``transpose_method`` / ``disc_conv_method`` at the top level."""
    run = tmp_path / "old"
    shutil.copytree(demo_checkpoint, run)

    def to_old_layout(data):
        data["transpose_method"] = data["codec"].pop("transpose_method") and "polyphase"
        data["disc_conv_method"] = data["disc"].pop("conv_method") and "lax"

    _edit_config(run, to_old_layout)
    cfg, state = restore_run_state(run)
    assert cfg.codec.transpose_method == "polyphase" and cfg.disc.conv_method == "lax"
    assert int(state.step) == 2


def test_unreadable_config_is_refused_with_what_to_do(demo_checkpoint, tmp_path):
    run = tmp_path / "future"
    shutil.copytree(demo_checkpoint, run)
    _edit_config(run, lambda data: data["loss"].update(alpha_new_thing=2.0))
    with pytest.raises(CheckpointError, match="alpha_new_thing.*nothing was loaded"):
        restore_run_state(run)


def test_a_checkpoint_cut_short_is_never_listed_or_loaded(demo_checkpoint, tmp_path):
    """A local save interrupted by SIGKILL leaves only orbax's temporary folder (the step
    folder appears by an atomic rename at the end); it is not listed, and the run resumes from
    step 2. (On object storage, a step folder without its commit marker: tests/test_cloud.py.)"""
    from amylm_jax.checkpoint import Checkpointer

    run = tmp_path / "cut"
    shutil.copytree(demo_checkpoint, run)
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "2", ckpts / "4.orbax-checkpoint-tmp-1234")  # cut before the rename
    reader = Checkpointer(run, read_only=True)
    try:
        assert reader.all_steps() == [2] and reader.latest_step() == 2
    finally:
        reader.close()
    cfg, state = restore_run_state(run)
    assert int(state.step) == 2
