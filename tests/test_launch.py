"""Launch scripts: their dry runs print the right commands, and the shell they send runs.

No gcloud, sbatch or TPU is needed: every script has a dry run that prints the commands it
would run, which these tests parse with `shlex`. The command lines sent to the workers (and
the per-task SLURM wrapper) are also executed here against stand-ins for python, pip and
scontrol, so "idempotent" and "stops what it started" are checked, not just read.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
TPU = LAUNCH / "tpu_pod.sh"
SUBMIT = LAUNCH / "slurm_submit.sh"
SBATCH = LAUNCH / "slurm_gpu.sbatch"
LOCAL = LAUNCH / "local_multiprocess.sh"
SCRIPTS = [TPU, SUBMIT, SBATCH, LOCAL, LAUNCH / "prepare_slurm_array.sbatch"]

# Settings the scripts read from the environment; cleared so the caller's shell cannot leak in.
_ENV_KEYS = (
    "TPU_NAME ZONE PROJECT ACCELERATOR TPU_VERSION REPO_URL REPO_REF WORKDIR CONFIG STORE "
    "STORE_SRC REMOTE_DIR NODES GPUS_PER_NODE CPUS_PER_TASK TIME PARTITION ACCOUNT QOS JOB_NAME "
    "LOG_DIR COORDINATOR_PORT AMYLM_VENV AMYLM_REPO AMYLM_DRY_RUN NUM_PROCESSES "
    "DEVICES_PER_PROCESS PORT PYTHON XLA_FLAGS JAX_LOCAL_DEVICE_IDS CUDA_VISIBLE_DEVICES"
).split()

POD = ["--name=amy-pod", "--zone=us-central2-b", "--project=amy-proj"]


_GUARD: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _no_real_cluster_tools(tmp_path_factory):
    """Put failing stand-ins for gcloud, sbatch and srun first on PATH: nothing runs for real."""
    guard = tmp_path_factory.mktemp("guard")
    for name in ("gcloud", "sbatch", "srun"):
        exe = guard / name
        exe.write_text(f"#!/bin/sh\necho 'test ran {name} for real' >&2\nexit 99\n")
        exe.chmod(0o755)
    _GUARD[:] = [guard]
    yield


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS and not k.startswith("SLURM_")}
    env.update(extra)
    env["PATH"] = os.pathsep.join([*map(str, _GUARD), env["PATH"]])
    return env


def sh(script: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=cwd or ROOT,
        timeout=60,
    )


def dry(script: Path, *args: str, **kwargs) -> list[list[str]]:
    """Run a dry run and return its printed commands, split into words (comments dropped)."""
    out = sh(script, "--dry_run", *args, **kwargs)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def remote(words: list[str]) -> str:
    """The shell command a `gcloud ... ssh ... --command CMD` line sends to the workers."""
    assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], words
    return words[words.index("--command") + 1]


def fail(script: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = sh(script, *args, env=env)
    assert out.returncode != 0, out.stdout
    assert "error:" in out.stderr
    return out.stderr


# --- every script -------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    # -x follows `source launch/common.sh` (paths relative to the repository root).
    files = [str(p.relative_to(ROOT)) for p in [*SCRIPTS, LAUNCH / "common.sh"]]
    subprocess.run(["shellcheck", "-x", *files], check=True, cwd=ROOT)


@pytest.mark.parametrize("script", [TPU, SUBMIT, LOCAL], ids=lambda p: p.name)
def test_help(script):
    out = sh(script, "--help")
    assert out.returncode == 0 and "--dry_run" in out.stdout


# --- TPU pod ------------------------------------------------------------------------------------


def test_tpu_create():
    (cmd,) = dry(TPU, "create", *POD, "--accelerator=v4-32", "--version=tpu-ubuntu2204-base")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "amy-pod"]
    for flag in (
        "--zone=us-central2-b",
        "--project=amy-proj",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
    ):
        assert flag in cmd
    assert "--spot" not in cmd and "--preemptible" not in cmd
    (spot,) = dry(TPU, "create", *POD, "--accelerator=v5litepod-16", "--version=v", "--spot")
    assert "--spot" in spot and "--accelerator-type=v5litepod-16" in spot
    (pre,) = dry(TPU, "create", *POD, "--accelerator=v4-8", "--version=v", "--preemptible")
    assert "--preemptible" in pre


def test_tpu_settings_from_environment():
    env = clean_env(
        TPU_NAME="envpod", ZONE="europe-west4-a", ACCELERATOR="v5litepod-8", TPU_VERSION="rt"
    )
    (cmd,) = dry(TPU, "create", env=env)
    assert cmd[5] == "envpod" and "--zone=europe-west4-a" in cmd
    assert "--accelerator-type=v5litepod-8" in cmd and "--version=rt" in cmd
    assert not any(w.startswith("--project") for w in cmd)  # gcloud's default project
    (flagged,) = dry(TPU, "create", "--name=flagpod", env=env)
    assert flagged[5] == "flagpod"  # a flag wins over the environment


def test_tpu_setup_is_idempotent_by_construction():
    (cmd,) = dry(TPU, "setup", *POD, "--repo_url=https://example.com/amy.git", "--repo_ref=v0.3")
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=amy-proj" in cmd
    script = remote(cmd)
    assert "[ -d amylm_jax/.git ]" in script and "git clone https://example.com/amy.git" in script
    assert "fetch --tags --force origin v0.3" in script
    assert "[ -d .venv ] || python3 -m venv .venv" in script
    assert "pip install -q -e ." in script and "'jax[tpu]'" in script
    subprocess.run(["sh", "-n", "-c", script], check=True)


def _git(*args: str, cwd: Path) -> str:
    env = clean_env(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@e",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@e",
    )
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _fake_bin(tmp_path: Path, programs: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in programs.items():
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n" + body + "\n")
        exe.chmod(0o755)
    return bin_dir


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_tpu_setup_runs_twice_and_follows_the_ref(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _git("init", "-q", "-b", "main", cwd=src)
    (src / "f").write_text("1")
    _git("add", "f", cwd=src)
    _git("commit", "-qm", "one", cwd=src)
    bin_dir = _fake_bin(
        tmp_path,
        {
            # `python3 -m venv DIR` makes an activatable DIR; pip and python do nothing.
            "python3": 'mkdir -p "$3/bin" && : > "$3/bin/activate"',
            "pip": "exit 0",
            "python": "echo 0.0.0",
        },
    )
    (cmd,) = dry(TPU, "setup", *POD, f"--repo_url={src}", "--repo_ref=main")
    worker = tmp_path / "home"
    worker.mkdir()
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    for _ in range(2):
        subprocess.run(
            ["sh", "-c", remote(cmd)], cwd=worker, env=env, check=True, capture_output=True
        )
    assert (worker / "amylm_jax/.venv/bin/activate").exists()
    (src / "f").write_text("2")
    _git("commit", "-qam", "two", cwd=src)
    subprocess.run(["sh", "-c", remote(cmd)], cwd=worker, env=env, check=True, capture_output=True)
    assert _git("rev-parse", "HEAD", cwd=worker / "amylm_jax") == _git("rev-parse", "HEAD", cwd=src)


def test_tpu_store():
    (cmd,) = dry(TPU, "store", *POD, "--store_src=gs://b/stores/amy", "--store=data/amy")
    assert "--worker=all" in cmd
    assert "gcloud storage rsync --recursive gs://b/stores/amy data/amy" in remote(cmd)
    assert "a gs:// URL" in fail(TPU, "store", *POD, "--store_src=gs://b/s", "--store=gs://b/s")


def test_tpu_run_passes_config_workdir_and_overrides():
    (cmd,) = dry(
        TPU,
        "run",
        *POD,
        "--workdir=gs://bucket/runs/adapt1",
        "--config=configs/adversarial.py",
        "--store=data/amy",
        "--config.max_steps=100",
        "--config.optim.lr_g=3e-4",
        "--env=LIBTPU_INIT_ARGS=--xla_tpu_x=true",
        "--",
        "--other_flag=it's",
    )
    assert cmd[5] == "amy-pod" and "--worker=all" in cmd and "--zone=us-central2-b" in cmd
    script = remote(cmd)
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert "nohup setsid" in script and '>> "$LOG" 2>&1 < /dev/null &' in script
    assert "LOG=logs/train-$(hostname).log" in script
    (train,) = [part for part in script.split("; ") if part.startswith("nohup")]
    words = shlex.split(train.split(">>")[0])
    i = words.index("python")
    assert words[i : i + 3] == ["python", "-m", "amylm_jax.train"]
    assert words[i + 3 :] == [
        "--config=configs/adversarial.py",
        "--workdir=gs://bucket/runs/adapt1",
        "--distributed",
        "--config.data.store=data/amy",
        "--config.max_steps=100",
        "--config.optim.lr_g=3e-4",
        "--other_flag=it's",
    ]
    assert "LIBTPU_INIT_ARGS=--xla_tpu_x=true" in words[:i]
    # no coordinator flags: jax.distributed.initialize() finds the pod by itself
    assert not any("coordinator" in w or "process_id" in w for w in words)


def test_tpu_required_values():
    assert "--name" in fail(TPU, "run", "--zone=z", "--workdir=gs://b/w")
    assert "TPU_NAME" in fail(TPU, "logs", "--zone=z")
    assert "--zone" in fail(TPU, "stop", "--name=n")
    assert "WORKDIR" in fail(TPU, "run", "--name=n", "--zone=z")
    assert "--accelerator" in fail(TPU, "create", "--name=n", "--zone=z", "--version=v")
    assert "--repo_url" in fail(TPU, "setup", "--name=n", "--zone=z")
    assert "gs://" in fail(TPU, "run", "--name=n", "--zone=z", "--workdir=/local/run")
    assert "SUBCOMMAND" in fail(TPU)
    assert "unknown subcommand" in fail(TPU, "launch", "--name=n", "--zone=z")
    assert "unknown flag" in fail(TPU, "run", "--nmae=n")
    assert "needs a value" in fail(TPU, "run", "--name", "n")
    assert "one of --spot" in fail(
        TPU, "create", *POD, "--accelerator=a", "--version=v", "--spot", "--preemptible"
    )
    # a single-host slice may keep its workdir on the worker's disk when asked to
    (cmd,) = dry(TPU, "run", "--name=n", "--zone=z", "--workdir=/data/run", "--local_workdir")
    assert "--workdir=/data/run" in remote(cmd)


def test_tpu_logs_status_stop_delete():
    (logs,) = dry(TPU, "logs", *POD, "--worker=3")
    assert "--worker=3" in logs and "tail -n 100 -F logs/train-$(hostname).log" in remote(logs)
    (logs0,) = dry(TPU, "logs", *POD, "--lines=20", "--no_follow")
    assert "--worker=0" in logs0 and remote(logs0).endswith("tail -n 20 logs/train-$(hostname).log")
    assert "one worker index" in fail(TPU, "logs", *POD, "--worker=all")
    for sub in ("status", "stop"):
        (cmd,) = dry(TPU, sub, *POD)
        assert "--worker=all" in cmd
        subprocess.run(["sh", "-n", "-c", remote(cmd)], check=True)
    (stop,) = dry(TPU, "stop", *POD)
    assert 'kill -TERM -- "-$P"' in remote(stop)
    (delete,) = dry(TPU, "delete", *POD)
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "amy-pod"]
    assert "--quiet" not in delete and "--quiet" in dry(TPU, "delete", *POD, "--yes")[0]
    (ssh,) = dry(TPU, "ssh", *POD, "--", "nproc")
    assert "--worker=all" in ssh and remote(ssh) == "nproc"


def test_tpu_run_status_stop_on_a_fake_worker(tmp_path):
    """The run/status/stop command lines, executed: detached start, no double start, clean stop."""
    worker = tmp_path / "home"
    (worker / "amylm_jax/.venv/bin").mkdir(parents=True)
    (worker / "amylm_jax/.venv/bin/activate").write_text("")
    bin_dir = _fake_bin(tmp_path, {"python": 'echo "trainer $*"\nexec sleep 30'})
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}")

    def on_worker(sub: str, *args: str) -> subprocess.CompletedProcess:
        (cmd,) = dry(TPU, sub, *POD, *args)
        return subprocess.run(
            ["sh", "-c", remote(cmd)], cwd=worker, env=env, capture_output=True, text=True
        )

    assert on_worker("run", "--workdir=gs://b/w", "--config.x=1").returncode == 0
    pid = int((worker / "amylm_jax/logs/train.pid").read_text())
    try:
        again = on_worker("run", "--workdir=gs://b/w")
        assert again.returncode == 1 and "already runs" in again.stderr
        assert "running" in on_worker("status").stdout
        stopped = on_worker("stop")
        assert stopped.returncode == 0 and f"stopped pid {pid}" in stopped.stdout
        assert "not running" in on_worker("status").stdout
        (log,) = (worker / "amylm_jax/logs").glob("train-*.log")
        assert "trainer -m amylm_jax.train --config=configs/adapt.py" in log.read_text()
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)


# --- SLURM --------------------------------------------------------------------------------------


def test_slurm_submit_command(tmp_path):
    cmds = dry(
        SUBMIT,
        "--nodes=4",
        "--gpus_per_node=8",
        "--time=12:00:00",
        "--partition=gpu",
        "--account=amy",
        "--workdir=runs/adapt1",
        "--store=/shared/stores/amy",
        "--port=23456",
        "--config.max_steps=10",
        "--sbatch_arg=--exclusive",
        cwd=tmp_path,
    )
    (mkdir, sbatch) = cmds
    assert mkdir == ["mkdir", "-p", f"{tmp_path}/logs/slurm"]
    assert sbatch[0] == "sbatch"
    for flag in (
        "--nodes=4",
        "--gpus-per-node=8",
        "--ntasks-per-node=1",
        "--time=12:00:00",
        "--partition=gpu",
        "--account=amy",
        "--exclusive",
        f"--chdir={ROOT}",
        f"--output={tmp_path}/logs/slurm/%x-%j.out",
    ):
        assert flag in sbatch
    (export,) = [w for w in sbatch if w.startswith("--export=")]
    assert export == f"--export=ALL,AMYLM_REPO={ROOT},COORDINATOR_PORT=23456"
    i = sbatch.index(str(SBATCH))
    assert sbatch[i + 1 :] == [
        "--config=configs/adapt.py",
        f"--workdir={tmp_path}/runs/adapt1",  # made absolute: every node must find it
        "--config.data.store=/shared/stores/amy",
        "--config.max_steps=10",
    ]


def test_slurm_submit_dry_run_explains_itself():
    out = sh(SUBMIT, "--nodes=2", "--workdir=/shared/w", "--dry_run")
    assert f"# script: {SBATCH}" in out.stdout
    assert "--num_processes=2 --process_id=$SLURM_PROCID" in out.stdout


def test_slurm_submit_task_per_gpu():
    (_, sbatch) = dry(SUBMIT, "--nodes=2", "--gpus_per_node=4", "--task_per_gpu", "--workdir=/w")
    assert "--ntasks-per-node=4" in sbatch and "--gpus-per-node=4" in sbatch
    assert "--cpus-per-task=4" in sbatch


def test_slurm_submit_required_values():
    assert "--workdir" in fail(SUBMIT, "--dry_run")
    assert "positive integer" in fail(SUBMIT, "--dry_run", "--workdir=/w", "--nodes=0")
    assert "unknown argument" in fail(SUBMIT, "--dry_run", "--workdir=/w", "--gpus=8")
    assert "WORKDIR" not in fail(SUBMIT, "--dry_run", "--nodes=x", env=clean_env(WORKDIR="/w"))


def test_sbatch_header():
    header = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    for option in (
        "--nodes=",
        "--ntasks-per-node=1",
        "--gpus-per-node=",
        "--time=",
        "--output=",
        "--requeue",
        "--signal=B:USR1@",
    ):
        assert any(option in line for line in header), option


def _slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = _fake_bin(
        tmp_path,
        {"scontrol": '[ "$1 $2" = "show hostnames" ] || exit 1\nprintf "gpu-a07\\ngpu-a08\\n"'},
    )
    return clean_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-a[07-08]",
        SLURM_NTASKS="2",
        SLURM_CPUS_PER_TASK="16",
        SLURM_SUBMIT_DIR=str(ROOT),
        AMYLM_DRY_RUN="1",
        **extra,
    )


def test_sbatch_sets_coordinator_and_process_ids(tmp_path):
    args = ["--config=configs/adapt.py", "--workdir=/shared/w", "--config.x=a b"]
    out = sh(SBATCH, *args, env=_slurm_env(tmp_path))
    assert out.returncode == 0, out.stderr
    srun = shlex.split(out.stdout.splitlines()[-1])
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"] and "--cpus-per-task=16" in srun
    i = srun.index("amylm_jax.train")
    assert srun[i + 1 :] == [
        *args,
        "--coordinator_address=gpu-a07:24242",  # first node; port from the job id
        "--num_processes=2",
    ]
    task = srun[srun.index("-c") + 1]
    assert task.endswith('exec "$@" --process_id="$SLURM_PROCID"')

    out = sh(SBATCH, *args, env=_slurm_env(tmp_path, COORDINATOR_PORT="3333"))
    assert "--coordinator_address=gpu-a07:3333" in out.stdout


@pytest.mark.parametrize(
    "visible, tasks_per_node, expected",
    [
        ("0,1,2,3", "1(x2)", "0,1,2,3"),  # one process per node drives all its GPUs
        ("0,1,2,3,4,5,6,7", "8(x2)", "unset"),  # one per GPU, all visible: JAX picks LOCALID
        ("5", "8", "0"),  # one per GPU, bound by the cluster: its only GPU
        ("", "1", "unset"),  # no GPUs
    ],
)
def test_sbatch_task_chooses_gpus(tmp_path, visible, tasks_per_node, expected):
    out = sh(SBATCH, "--config=c.py", "--workdir=/w", env=_slurm_env(tmp_path))
    srun = shlex.split(out.stdout.splitlines()[-1])
    task = srun[srun.index("-c") + 1]
    env = clean_env(
        CUDA_VISIBLE_DEVICES=visible, SLURM_STEP_TASKS_PER_NODE=tasks_per_node, SLURM_PROCID="3"
    )
    show = 'echo "${JAX_LOCAL_DEVICE_IDS:-unset} $*"'
    ran = subprocess.run(
        ["bash", "-c", task, "amylm", "sh", "-c", show, "sh", "--workdir=/w"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.strip() == f"{expected} --workdir=/w --process_id=3"


def test_sbatch_refuses_outside_slurm_and_without_flags(tmp_path):
    assert "not inside a SLURM job" in fail(SBATCH, "--config=c", "--workdir=/w")
    assert "--workdir" in fail(SBATCH, "--config=c", env=_slurm_env(tmp_path))
    assert "sets --coordinator_address" in fail(
        SBATCH, "--config=c", "--workdir=/w", "--process_id=1", env=_slurm_env(tmp_path)
    )


# --- local multi-process rehearsal --------------------------------------------------------------


def test_local_multiprocess_dry_run(tmp_path):
    cmds = dry(
        LOCAL,
        "--num_processes=3",
        "--devices_per_process=2",
        "--port=23456",
        f"--workdir={tmp_path}/wd",
        "--config.max_steps=3",
        env=clean_env(XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_foo=1"),
    )
    assert cmds[0] == ["mkdir", "-p", f"{tmp_path}/wd_logs"] and cmds[-1] == ["wait"]
    assert len(cmds) == 5
    for i, words in enumerate(cmds[1:4]):
        assert "JAX_PLATFORMS=cpu" in words
        assert "XLA_FLAGS=--xla_foo=1 --xla_force_host_platform_device_count=2" in words
        assert words[-7:-4] == [
            "--coordinator_address=localhost:23456",
            "--num_processes=3",
            f"--process_id={i}",
        ]
        assert "--config=configs/demo.py" in words and f"--workdir={tmp_path}/wd" in words
        assert "--config.max_steps=3" in words
        assert words[-4:] == [">", f"{tmp_path}/wd_logs/process_{i}.log", "2>&1", "&"]
    assert "positive integer" in fail(LOCAL, "--dry_run", "--num_processes=0")


def test_local_multiprocess_runs_and_stops_on_failure(tmp_path):
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'echo "$JAX_PLATFORMS $*"\n'
        'case "$*" in\n'
        '  *process_id=1*) [ -z "$FAIL" ] || exit 3 ;;\n'
        '  *process_id=0*) [ -z "$FAIL" ] || exec sleep 30 ;;\n'
        "esac\n"
    )
    python.chmod(0o755)
    args = [f"--python={python}", f"--workdir={tmp_path}/wd", "--num_processes=2"]
    ok = sh(LOCAL, *args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    log1 = (tmp_path / "wd_logs/process_1.log").read_text()
    assert log1.startswith("cpu -m amylm_jax.train") and "--process_id=1" in log1
    bad = sh(LOCAL, *args, env=clean_env(FAIL="1"))
    assert bad.returncode == 1 and "process 1 exited with status 3" in bad.stdout
    assert "process 0 exited with status 143" in bad.stdout  # stopped, not left waiting


def test_sbatch_requeues_when_the_trainers_were_preempted(tmp_path):
    """Status 75 from the trainers (checkpoint written on SIGTERM) requeues the job."""
    log = tmp_path / "scontrol.log"
    base = _slurm_env(tmp_path)  # writes its own scontrol first; ours replaces it
    bin_dir = _fake_bin(
        tmp_path,
        {
            "scontrol": f'if [ "$1 $2" = "show hostnames" ]; then printf "gpu-a07\\n"; '
            f'else echo "$@" >> {log}; fi',
            "srun": "exit ${FAKE_STATUS:-0}",
        },
    )
    env = {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AMYLM_DRY_RUN": "0"}
    args = ["--config=configs/adapt.py", "--workdir=/shared/w"]
    out = sh(SBATCH, *args, env={**env, "FAKE_STATUS": "75"})
    assert out.returncode == 0, out.stderr
    assert "requeueing job 4242" in out.stdout and log.read_text().split() == ["requeue", "4242"]
    log.unlink()
    failed = sh(SBATCH, *args, env={**env, "FAKE_STATUS": "3"})
    assert failed.returncode == 3 and not log.exists()


PREP = LAUNCH / "prepare_slurm_array.sbatch"


def test_prepare_array_task_and_join(tmp_path):
    env = clean_env(AMYLM_DRY_RUN="1", SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8")
    out = sh(PREP, "--manifest=/shared/a.jsonl", "--out=gs://b/stores/amy", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (
        "python -m amylm_jax.prepare --manifest=/shared/a.jsonl --out=gs://b/stores/amy"
    )
    join = sh(PREP, "--join", "--out=/s", env=clean_env(AMYLM_DRY_RUN="1"))
    assert join.returncode == 0 and join.stdout.splitlines()[-1].endswith("--join --out=/s")
    bad = sh(PREP, "--manifest=/a", "--out=/s", env=clean_env())
    assert bad.returncode == 2 and "job array" in bad.stderr
    aligned = sh(PREP, "align", "--audio=/c", "--out=/a.jsonl", env=env)
    assert aligned.returncode == 0, aligned.stderr
    assert aligned.stdout.splitlines()[-1] == "python -m amylm_jax.align --audio=/c --out=/a.jsonl"


def test_tpu_prepare_shards_by_worker_then_joins():
    cmds = dry(TPU, "prepare", *POD, "--manifest=gs://b/align.jsonl", "--store=gs://b/stores/amy",
               "--", "--device=cpu")  # fmt: skip
    assert len(cmds) == 2 and "--worker=all" in cmds[0] and "--worker=0" in cmds[1]
    script = remote(cmds[0])
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert "agent-worker-number" in script and "worker-network-endpoints" in script
    assert (
        "python -m amylm_jax.prepare --manifest=gs://b/align.jsonl --out=gs://b/stores/amy "
        '--device=cpu --num_shards="$N" --shard_index="$W"'
    ) in script
    assert remote(cmds[1]).endswith("python -m amylm_jax.prepare --join --out=gs://b/stores/amy")
    assert "--manifest" in fail(TPU, "prepare", *POD, "--store=gs://b/s")


def test_tpu_run_reads_a_gs_store_in_place_and_stop_waits_for_the_checkpoint():
    (cmd,) = dry(TPU, "run", *POD, "--workdir=gs://b/w", "--store=gs://b/stores/amy")
    assert "--config.data.store=gs://b/stores/amy" in remote(cmd)
    (stop,) = dry(TPU, "stop", *POD, "--grace=600")
    assert "-lt 600" in remote(stop) and "kill -TERM" in remote(stop)
    assert "--grace" in fail(TPU, "stop", *POD, "--grace=soon")
