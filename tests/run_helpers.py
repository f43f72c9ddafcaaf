"""Running the real command line in subprocesses: to the end, or stopped at a chosen step.

A run that outlives its time limit is stopped with SIGABRT rather than SIGKILL: Python's fault
handler (switched on in the child's environment) then prints every thread's stack, so a run
that hangs fails with where it hung, not only with "timed out".
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _no_core_files() -> None:
    """In the child before it starts: an aborted child writes no core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the fault handler on, so a hung child can be asked for its stacks, and
    with the session's compilation cache (:func:`compile_cache_env`)."""
    return {**compile_cache_env(env), "PYTHONFAULTHANDLER": "1"}


def compile_cache_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with JAX's persistent compilation cache in the directory the test session shares
    between its workers (``AMYLM_TEST_COMPILE_CACHE``, set by conftest.py).

    The command-line runs of the suite compile the same demo steps over and over (a resumed run
    compiles what the killed run compiled); from the cache a demo run starts in about 15 s
    instead of 45 s. A cached executable is the compiler's own output for the same program, so
    bit-exact comparisons between runs are unaffected.

    Multi-process runs do not use it: once, two processes started together on a cache that
    held some of their programs lost one process at its first step and left the other waiting
    in a collective (gloo on CPU; not reproduced since).  The single-process runs are where
    the time goes."""
    out = dict(env)
    cache = os.environ.get("AMYLM_TEST_COMPILE_CACHE")
    if cache and "JAX_COMPILATION_CACHE_DIR" not in out:
        out["JAX_COMPILATION_CACHE_DIR"] = cache
        out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return out


def run_to_end(
    cmd: Sequence[str], env: Mapping[str, str], timeout: float = 900, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end and return it; on a timeout fail with the child's stacks."""
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=_no_core_files,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)  # the fault handler prints every thread's stack
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise AssertionError(
            f"{' '.join(cmd)} did not end within {timeout:.0f} s; its stderr (stacks last):\n"
            + err[-12000:]
        ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def running(
    cmd: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT, stderr: int | None = None
) -> Iterator[subprocess.Popen]:
    """``cmd`` started in its own process group, killed with the group if still running at the
    end of the block. ``stderr=subprocess.PIPE`` keeps its messages (read them with
    ``communicate``); by default they are dropped."""
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=child_env(env), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if stderr is None else stderr, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_step(
    proc: subprocess.Popen,
    steps: Callable[[], Sequence[int]],
    step: int,
    timeout: float = 600,
    poll: float = 0.2,
) -> None:
    """Block until ``steps()`` (the steps the run has recorded) reaches ``step``, while the run
    is still going; fail if it ended first or did not get there within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = steps()
        if done and max(done) >= step:
            return
        time.sleep(poll)
    assert proc.poll() is None, f"the run ended (status {proc.returncode}) before step {step}"
    raise AssertionError(f"the run did not record step {step} within {timeout:.0f} s")


def kill_at_step(
    cmd: Sequence[str], env: Mapping[str, str], steps: Callable[[], Sequence[int]], step: int
) -> None:
    """Start ``cmd`` and SIGKILL its whole process group once it has recorded ``step``."""
    with running(cmd, env) as proc:
        wait_for_step(proc, steps, step)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
