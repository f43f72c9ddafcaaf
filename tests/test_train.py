"""End-to-end training on the bundled demo: budget, metrics contract, kill -9 resume, phase 2.

The runs go through the real command line (`python -m amylm_jax.train`) in subprocesses with
one CPU device, exactly as the README's first command runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import compile_cache_env, kill_at_step, run_to_end, running, wait_for_step

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("loss_g", "loss_d", "adv_g", "feat", "wavlm", "llm", "msspec")

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's machine
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return compile_cache_env(env)


def _cmd(workdir: Path, *overrides: str, config: str = "configs/demo.py") -> list[str]:
    return [
        sys.executable,
        "-m",
        "amylm_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def _run(workdir: Path, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = run_to_end(_cmd(workdir, *overrides), _env(), timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


def _step_losses(workdir: Path) -> dict[int, dict[str, float]]:
    return {
        r["step"]: {n: r[f"train/{n}_step"] for n in LOSSES}
        for r in _records(workdir)
        if "train/loss_g_step" in r
    }


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The README's demo command with its default budget."""
    workdir = tmp_path_factory.mktemp("demo") / "run"
    _run(workdir)
    return workdir


def test_demo_budget_metrics_and_artifacts(demo_run):
    records = _records(demo_run)
    steps = _step_losses(demo_run)
    assert sorted(steps) == list(range(1, 61))
    first, last = steps[1]["msspec"], steps[60]["msspec"]
    assert last <= 0.5 * first, (first, last)
    epoch_keys = set().union(*(r.keys() for r in records if "epoch" in r))
    for name in LOSSES:
        assert f"train/{name}_epoch" in epoch_keys
    assert {"train/d_real_acc_epoch", "train/d_fake_acc_epoch"} <= epoch_keys
    assert any("val/msspec" in r for r in records)
    assert any(k.startswith("train/codebook/entropy_") for k in epoch_keys)
    assert records[0]["step"] == 0 and "config" in records[0]
    ckpts = sorted(int(p.name) for p in (demo_run / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts and ckpts[-1] == 60
    wavs = list((demo_run / "audio").rglob("*_reconstructed.wav"))
    assert wavs
    assert list((demo_run / "tensorboard").iterdir())


def test_kill9_resume_is_bit_exact(demo_run, tmp_path):
    """SIGKILL mid-run, restart: the per-step losses equal the uninterrupted run's exactly."""
    workdir = tmp_path / "killed"
    overrides = ("--config.max_steps=30", "--config.checkpoint.every_steps=10")
    kill_at_step(_cmd(workdir, *overrides), _env(), lambda: _step_losses(workdir), 15)
    assert max(_step_losses(workdir)) >= 15
    _run(workdir, *overrides)
    resumed = _step_losses(workdir)
    reference = _step_losses(demo_run)
    assert sorted(resumed) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step] == reference[step], step


def test_sigterm_checkpoints_the_step_and_exits_75(demo_run, tmp_path):
    """A preemption notice: one checkpoint at the step in flight, exit status 75, and the rerun
    of the same command continues exactly like the uninterrupted run."""
    workdir = tmp_path / "preempted"
    overrides = ("--config.max_steps=24", "--config.checkpoint.every_steps=1000")
    with running(_cmd(workdir, *overrides), _env(), stderr=subprocess.PIPE) as proc:
        wait_for_step(proc, lambda: _step_losses(workdir), 9)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert "preempted: checkpoint of step" in err
    ckpts = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(ckpts) == 1 and 9 <= ckpts[0] < 24
    assert max(_step_losses(workdir)) == ckpts[0]  # metrics flushed up to the checkpoint
    _run(workdir, *overrides)
    resumed, reference = _step_losses(workdir), _step_losses(demo_run)
    assert sorted(resumed) == list(range(1, 25))
    for step in range(1, 25):
        assert resumed[step] == reference[step], step


def test_resume_refuses_a_different_run_config(demo_run, tmp_path):
    import shutil

    workdir = tmp_path / "other"
    shutil.copytree(demo_run, workdir)
    proc = subprocess.run(
        _cmd(workdir, "--config.loss.alpha_adv=2.0", "--config.max_steps=70"), cwd=ROOT,
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "already holds a run with a different config: loss.alpha_adv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_phase2_starts_from_phase1_and_logs_zero_msspec(demo_run, tmp_path):
    workdir = tmp_path / "phase2"
    _run(
        workdir,
        "--config.loss.adversarial_only=True",
        f"--config.init.checkpoint={demo_run}",
        "--config.max_steps=3",
        "--config.checkpoint.monitor=train/wavlm_epoch",
    )
    steps = _step_losses(workdir)
    assert sorted(steps) == [1, 2, 3]
    assert all(v["msspec"] == 0.0 for v in steps.values())
    # It really started from phase 1: its first losses are far below a fresh start's.
    assert steps[1]["wavlm"] < _step_losses(demo_run)[1]["wavlm"]


def test_missing_weights_or_store_gives_clear_errors(tmp_path):
    from amylm_jax.config import config_from_dict
    from tests.conftest import load_config as load

    cfg = load("adapt")
    with pytest.raises(ValueError, match="mimi_weights=PATH"):
        config_from_dict(cfg)
    cfg.init.mimi_weights = str(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        config_from_dict(cfg)
    cfg.init.mimi_weights = "none"
    with pytest.raises(ValueError, match="data.store=PATH"):
        config_from_dict(cfg)
    cfg.data.store = "demo"
    assert config_from_dict(cfg).init.mimi_weights is None

    from amylm_jax.data.demo import resolve_store

    with pytest.raises(FileNotFoundError, match="python -m amylm_jax.prepare"):
        resolve_store(str(tmp_path / "no_store"))


def test_health_report_on_the_demo_workdir(demo_run, tmp_path):
    """`python -m amylm_jax.report` reads a real run and names every metric-guide metric."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "amylm_jax.report",
            str(demo_run),
            "--json",
            "--plots",
            str(tmp_path / "plots"),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    for name in (
        "llm_epoch",
        "wavlm_epoch",
        "msspec_epoch",
        "feat_epoch",
        "adv_g_epoch",
        "loss_d_epoch",
        "loss_g_epoch",
    ):
        assert report["metrics"][name]["status"] in ("good", "warning", "critical"), name
    assert report["phase"] == "adaptation"
    pngs = list((tmp_path / "plots").glob("*.png"))
    # the seven metric-guide plots and the gradient shares (measured on the first step)
    assert {p.name for p in pngs} == {f"{name}.png" for name in report["metrics"]} | {
        "grad_share.png"
    }
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert 0.0 <= report["curves"]["train/grad_share/msspec"] <= 1.0


CURRICULUM = "configs/curriculum_demo.py:4"  # warmup 1-4, adapt 5-8, adversarial 9-12


def test_curriculum_switches_phases_and_resumes_exactly_after_kill9(tmp_path):
    """A 3-phase run moves through its phases by itself; killed with SIGKILL in phase 2 and
    restarted, its per-step losses equal the uninterrupted run's exactly."""
    whole = tmp_path / "whole"
    every = "--config.checkpoint.every_steps=2"
    subprocess.run(_cmd(whole, every, config=CURRICULUM), cwd=ROOT, env=_env(), check=True,
                   capture_output=True, timeout=900)  # fmt: skip
    reference = _step_losses(whole)
    assert sorted(reference) == list(range(1, 13))
    records = _records(whole)
    phase_of = {r["step"]: r["phase"] for r in records if "train/loss_g_step" in r}
    assert [phase_of[s] for s in (1, 4, 5, 8, 9, 12)] == [
        "warmup", "warmup", "adapt", "adapt", "adversarial", "adversarial"]  # fmt: skip
    starts = {r["step"]: r["phase"] for r in records if "train/phase_index" in r}
    assert starts == {1: "warmup", 5: "adapt", 9: "adversarial"}
    no_gan = [reference[s][k] for s in range(1, 5) for k in ("adv_g", "feat", "loss_d")]
    assert no_gan == [0.0] * 12  # warm-up: no discriminator
    assert all(reference[s]["loss_d"] > 0.0 and reference[s]["feat"] > 0.0 for s in range(5, 13))
    assert all(reference[s]["msspec"] > 0.0 for s in range(1, 9))
    assert all(reference[s]["msspec"] == 0.0 for s in range(9, 13))  # adversarial only

    killed = tmp_path / "killed"
    kill_at_step(_cmd(killed, every, config=CURRICULUM), _env(), lambda: _step_losses(killed), 6)
    assert 6 <= max(_step_losses(killed)) <= 8  # killed in phase 2
    proc = run_to_end(_cmd(killed, every, config=CURRICULUM), _env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed = _step_losses(killed)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert resumed[step] == reference[step], step
    # the final checkpoint is the last phase's, and the tools read it
    from amylm_jax.checkpoint import restore_run_state

    cfg, state = restore_run_state(killed)
    assert int(state.step) == 12 and cfg.loss.adversarial_only and not cfg.phases
