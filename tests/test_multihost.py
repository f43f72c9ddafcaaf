"""Multi-process training over localhost (gloo) equals single-process training.

Two processes with two virtual CPU devices each join through ``jax.distributed``; their losses
over the first steps equal a single process with four devices. Both are then killed and the
run is restarted as ONE process: it resumes at the checkpoint's step with the same data
position, so its later losses equal the single-process run's too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("loss_g", "loss_d", "adv_g", "feat", "wavlm", "llm", "msspec")
COMMON = (
    "--config=configs/demo.py",
    "--config.max_steps=8",
    "--config.checkpoint.every_steps=4",
    "--config.eval_every_steps=0",
    "--config.steps_per_epoch=4",
    "--config.checkpoint.async_save=False",
)

pytestmark = pytest.mark.slow


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env  # without the suite's compilation cache: see run_helpers.compile_cache_env


def _train(workdir: Path, devices: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "amylm_jax.train", f"--workdir={workdir}", *COMMON, *extra],
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _losses(workdir: Path) -> dict[int, dict[str, float]]:
    out = {}
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "train/loss_g_step" in r:
            out[r["step"]] = {n: r[f"train/{n}_step"] for n in LOSSES}
    return out


def _assert_same_losses(got: dict, reference: dict, steps: range) -> None:
    for step in steps:
        for name in LOSSES:
            np.testing.assert_allclose(
                got[step][name],
                reference[step][name],
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"step {step} {name}",
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait(procs, timeout=900):
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict[str, float]]:
    """One process with four devices, uninterrupted."""
    single = tmp_path_factory.mktemp("single") / "run"
    _wait([_train(single, 4)])
    losses = _losses(single)
    assert sorted(losses) == list(range(1, 9))
    return losses


def _two_processes(workdir: Path, *extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        _train(workdir, 2, f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}", *extra)
        for i in range(2)
    ]  # fmt: skip


def test_two_processes_match_one_and_resume_as_one(tmp_path, reference):

    multi = tmp_path / "multi"
    procs = _two_processes(multi)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and all(p.poll() is None for p in procs):
            done = _losses(multi)
            if done and max(done) >= 5 and (multi / "checkpoints" / "4").exists():
                break
            time.sleep(0.5)
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    _assert_same_losses(_losses(multi), reference, range(1, 5))

    # Restart the killed 2-process run as a single process with 4 devices.
    _wait([_train(multi, 4)])
    resumed = _losses(multi)
    assert sorted(resumed) == list(range(1, 9))
    _assert_same_losses(resumed, reference, range(5, 9))


def test_sigterm_to_one_process_stops_both_at_one_agreed_step(tmp_path, reference):
    """The preemption notice reaches one process; both agree on a step, write one checkpoint
    there and exit with status 75; the rerun matches the uninterrupted run step for step."""
    multi = tmp_path / "preempted"
    no_regular = ("--config.checkpoint.every_steps=1000", "--config.checkpoint.async_save=True")
    procs = _two_processes(multi, *no_regular)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and all(p.poll() is None for p in procs):
            done = _losses(multi)
            if done and max(done) >= 3:
                break
            time.sleep(0.2)
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=600)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert [p.returncode for p in procs] == [75, 75], [e[-2000:] for e in errs]
    ckpts = [int(p.name) for p in (multi / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(ckpts) == 1 and 3 <= ckpts[0] < 8, ckpts
    assert max(_losses(multi)) == ckpts[0]
    _wait(_two_processes(multi, *no_regular))
    resumed = _losses(multi)
    assert sorted(resumed) == list(range(1, 9))
    _assert_same_losses(resumed, reference, range(1, 9))
