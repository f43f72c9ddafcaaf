"""Runs whose workdir is a ``gs://`` URL, against a real GCS emulator started on localhost.

The trainer, the report, evaluation, export and the codec tool read and write the bucket
through the same path layer as local folders; a run killed with SIGKILL and restarted with the
same command continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gcs_emulator import GCSEmulator, activate
from run_helpers import compile_cache_env, kill_at_step, run_to_end

from amylm_jax import paths
from amylm_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("loss_g", "loss_d", "adv_g", "feat", "wavlm", "llm", "msspec")
SHORT = (
    "--config.max_steps=12",
    "--config.checkpoint.every_steps=4",
    "--config.eval_every_steps=6",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gcs():
    with GCSEmulator() as emulator:
        saved = {k: os.environ.get(k) for k in emulator.env}
        activate(emulator)
        yield emulator
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _env(gcs: GCSEmulator | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    if gcs is not None:
        env.update(gcs.env)
    return compile_cache_env(env)


def _cmd(workdir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "amylm_jax.train", "--config=configs/demo.py",
            f"--workdir={workdir}", *overrides]  # fmt: skip


def _train(workdir: str, gcs, *overrides: str) -> subprocess.CompletedProcess:
    proc = run_to_end(_cmd(workdir, *overrides), _env(gcs))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _step_losses(workdir: str) -> dict[int, dict[str, float]]:
    try:
        records = read_metrics(workdir)
    except FileNotFoundError:
        return {}
    return {
        r["step"]: {n: r[f"train/{n}_step"] for n in LOSSES}
        for r in records
        if "train/loss_g_step" in r
    }


@pytest.fixture(scope="module")
def gs_run(gcs, tmp_path_factory):
    """The short demo run into ``gs://runs/demo``, killed with SIGKILL mid-way and restarted;
    plus the same run, uninterrupted, in a local folder."""
    bucket = gcs.bucket("runs")
    workdir = f"{bucket}/demo"
    kill_at_step(_cmd(workdir, *SHORT), _env(gcs), lambda: _step_losses(workdir), 7)
    killed_at = max(_step_losses(workdir))
    _train(workdir, gcs, *SHORT)
    local = tmp_path_factory.mktemp("local") / "demo"
    _train(str(local), None, *SHORT)
    return {"gs": workdir, "local": str(local), "killed_at": killed_at}


def test_gs_workdir_resumes_after_kill9_exactly(gs_run):
    resumed, reference = _step_losses(gs_run["gs"]), _step_losses(gs_run["local"])
    assert 7 <= gs_run["killed_at"] < 12
    assert sorted(resumed) == list(range(1, 13)) == sorted(reference)
    for step in range(1, 13):
        assert resumed[step] == reference[step], step
    root = paths.as_path(gs_run["gs"])
    assert (
        sorted(int(p.name) for p in (root / "checkpoints").iterdir() if p.name.isdigit())[-1] == 12
    )
    assert list((root / "audio").iterdir()) and list((root / "tensorboard").iterdir())
    assert [p.name for p in (root / "metrics").iterdir()][0].startswith("part-")


def test_a_gs_checkpoint_without_its_commit_marker_is_never_loaded(gs_run, tmp_path):
    """Object storage has no rename: a save cut short leaves a step folder without
    ``commit_success.txt``. Such a folder (here: step 12's files under 16, markers left out)
    is not listed; the run still resumes from 12."""
    import fsspec

    from amylm_jax.checkpoint import Checkpointer

    fs, key = fsspec.core.url_to_fs(gs_run["gs"])
    copy = f"{gs_run['gs']}-cut"
    for name in fs.find(f"{key}/checkpoints/12"):
        rel = name[len(key) + 1 :]
        data = fs.cat_file(name)
        paths.write_bytes(f"{copy}/{rel}", data)
        if "commit_success" not in name and "_CHECKPOINT_METADATA" not in name:
            paths.write_bytes(f"{copy}/{rel.replace('checkpoints/12/', 'checkpoints/16/')}", data)
    reader = Checkpointer(copy, read_only=True)
    try:
        assert reader.all_steps() == [12]
    finally:
        reader.close()


def test_tools_work_on_the_gs_workdir(gs_run, tmp_path, capsys):
    from amylm_jax import codec, evaluate, report
    from amylm_jax.export import to_torch

    workdir = gs_run["gs"]
    assert report.main([workdir, "--json", f"--plots={workdir}/plots"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["metrics"]["msspec_epoch"]["value"] > 0
    assert (paths.as_path(workdir) / "plots" / "msspec_epoch.png").exists()

    assert evaluate.main([f"--workdir={workdir}", "--max_clips=2"]) == 0
    result = json.loads((paths.as_path(workdir) / "eval" / "step_12.json").read_text())
    assert result["step"] == 12 and result["clips"]["evaluated"] == 2

    out = f"{workdir}/export/amy.safetensors"
    assert to_torch.main([f"--workdir={workdir}", f"--out={out}", "--with_heads"]) == 0
    assert to_torch.read_metadata(out)["step"] == "12"
    local = tmp_path / "amy.safetensors"
    local.write_bytes(paths.read_bytes(out))
    assert to_torch.read_metadata(local)["layout"] == "amy"

    wav = tmp_path / "in.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(24000), 24000)
    assert codec.main(["encode", f"--checkpoint={workdir}", str(wav), f"{workdir}/c.npz"]) == 0
    assert (
        codec.main(
            ["decode", f"--checkpoint={workdir}", f"{workdir}/c.npz", str(tmp_path / "o.wav")]
        )
        == 0
    )  # noqa: E501
    assert sf.read(tmp_path / "o.wav")[0].shape == (24000,)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_read_a_store_in_the_bucket_without_copying_it(gcs, tmp_path, capsys):
    """The demo store uploaded to the bucket: ``prepare --check`` reads it there, and a
    2-process run trains from it with ranged reads of only the records its batches use."""
    import re

    from amylm_jax import prepare
    from amylm_jax.data.demo import resolve_store

    local = Path(resolve_store("demo"))
    url = f"{gcs.bucket('stores')}/demo"
    for item in sorted(local.iterdir()):
        paths.upload(item, f"{url}/{item.name}")
    assert prepare.main([f"--check={url}"]) == 0
    assert json.loads(capsys.readouterr().out)["num_clips"] == 48

    env = _env(gcs)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # two processes: see run_helpers.compile_cache_env
    port = _free_port()
    procs = [
        subprocess.Popen(
            _cmd(
                str(tmp_path / "run"),
                f"--config.data.store={url}",
                "--config.max_steps=3",
                "--config.steps_per_epoch=3",
                "--config.eval_max_batches=1",
                "--config.checkpoint.every_steps=3",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errs]
    pattern = r"process (\d) read (\d+) bytes of store records \(the store holds (\d+)\)"
    reads = [tuple(map(int, re.search(pattern, e).groups())) for e in errs]
    holds = reads[0][2]
    assert holds == sum(
        s["num_bytes"] for s in json.loads((local / "manifest.json").read_text())["shards"]
    )
    for _, read, _ in reads:
        assert 0 < read < holds
    assert sum(r for _, r, _ in reads) < holds
    print(f"bytes read per process: {[r for _, r, _ in reads]} of {holds}")


def _fails_fast(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_bad_storage_inputs_fail_fast_naming_the_url(gcs, tmp_path):
    env = _env(gcs)
    err = _fails_fast(["amylm_jax.train", "--config=configs/demo.py",
                       "--workdir=gs://no-such-bucket/run"], env)  # fmt: skip
    assert "gs://no-such-bucket/run" in err and "does not exist" in err

    gcs.bucket("empty")
    err = _fails_fast(["amylm_jax.prepare", "--check=gs://empty/not-a-store"], env)
    assert "gs://empty/not-a-store" in err and "manifest.json" in err
    err = _fails_fast(["amylm_jax.train", "--config=configs/demo.py",
                       f"--workdir={tmp_path / 'w'}", "--config.data.store=gs://empty/nothing"],
                      env)  # fmt: skip
    assert "gs://empty/nothing" in err

    err = _fails_fast(["amylm_jax.evaluate", "--workdir=gs://empty/no-run"], env)
    assert "gs://empty/no-run" in err


def test_missing_credentials_fail_fast(tmp_path):
    """Outside an emulator, a gs:// workdir without Google credentials is refused at once."""
    env = _env(None)
    for key in (
        "STORAGE_EMULATOR_HOST",
        "TENSORSTORE_GCS_HTTP_URL",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING",
    ):
        env.pop(key, None)
    env.update(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"), NO_GCE_CHECK="true",
               CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))  # fmt: skip
    err = _fails_fast(["amylm_jax.train", "--config=configs/demo.py",
                       "--workdir=gs://some-bucket/run"], env)  # fmt: skip
    assert "gs://some-bucket/run" in err and "credentials" in err
