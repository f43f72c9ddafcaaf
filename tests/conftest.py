"""Test setup: CPU only, 8 virtual devices, deterministic threads.

The environment variables must be set before JAX is imported anywhere.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_configure(config):
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")


# The longest modules are collected first, so that the two CI workers (``-n 2``) start on them
# and the run does not end with one worker busy on a long module while the other is idle (order
# from the suite's --durations on 2 cores). Whole modules per worker (``--dist loadscope``)
# would build module fixtures once instead of once per worker, but xdist's loadscope scheduler
# waits forever when a worker dies mid-module, so the default distribution stays.
LONGEST_MODULES = (
    "test_train.py", "test_torch_many_steps.py", "test_cloud.py", "test_multihost.py",
    "test_train_options.py", "test_torch_step.py", "test_benchmarks.py", "test_wordalign.py",
    "test_export.py", "test_evaluate.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


# CI runs every test: a skip there means a missing dependency (a Debian package, moshi, ...)
# that would otherwise hide a whole suite. With AMYLM_FAIL_ON_SKIP=1 (set by scripts/test.sh)
# any skipped test fails the session, naming the test and the reason.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        _record_peaks(report)
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason}")


# Memory. After each test the worker records its own peak resident size and that of the largest
# child process it has waited for (the command-line runs); the end of the run lists the tests
# that raised a peak, so that a worker killed for memory on a small CI machine names its suspects.
# A child's peak counts from the fork, when it holds the worker's pages, so a child is listed
# only where its peak exceeds the worker's own (below that it may be the worker's size).
_PEAKS: dict[tuple[str, str], float] = {}
_RAISED: list[tuple[float, str, str]] = []
PEAK_REPORT_GB = float(os.environ.get("AMYLM_PEAK_REPORT_GB", "2"))


def pytest_runtest_teardown(item):
    import resource

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    item.user_properties.append(("peak_rss_gb", (worker, "test", own)))
    if child > own:
        item.user_properties.append(("peak_rss_gb", (worker, "child", child)))


def _record_peaks(report) -> None:
    for name, value in report.user_properties:
        if name != "peak_rss_gb":
            continue
        worker, kind, gb = value
        before = _PEAKS.get((worker, kind), 0.0)
        if gb > before + 0.25 and gb >= PEAK_REPORT_GB:
            _RAISED.append((gb, f"{worker} {kind}", report.nodeid))
        _PEAKS[(worker, kind)] = max(before, gb)


def pytest_terminal_summary(terminalreporter):
    if _RAISED:
        terminalreporter.section(f"tests that raised a peak resident size (>= {PEAK_REPORT_GB} GB)")
        for gb, who, nodeid in sorted(_RAISED, reverse=True)[:20]:
            terminalreporter.write_line(f"{gb:6.1f} GB  {who:12s} {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller decides
        return
    if os.environ.get("AMYLM_FAIL_ON_SKIP") == "1" and _SKIPPED:
        lines = "\n  ".join(_SKIPPED)
        print(f"\nAMYLM_FAIL_ON_SKIP=1 and {len(_SKIPPED)} test(s) were skipped:\n  {lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def load_config(name: str):
    """A fresh ``ConfigDict`` from ``configs/<name>.py`` (as ``--config=`` loads it)."""
    spec = importlib.util.spec_from_file_location(f"{name}_config", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _build_demo_checkpoint(workdir: Path) -> None:
    from amylm_jax import train
    from amylm_jax.config import config_from_dict

    config = load_config("demo")
    config.max_steps = 2
    config.checkpoint.every_steps = 2
    config.eval_every_steps = 0
    config.steps_per_epoch = 2
    # The tests run on 8 virtual devices and the global batch is split over all of them.
    config.data.batch_size = 8
    config.data.segment_seconds = 0.64  # 8 frames; about the demo's 4 x 1 s of audio per step
    # A weight average too, so the tools' --ema paths have one to read (training is unchanged).
    config.optim.ema_decay = 0.9
    config.objective_eval_every_steps = 2  # and the periodic objective evaluation
    config.objective_eval_clips = 2
    train.train_and_evaluate(config_from_dict(config), str(workdir))


def _session_dir(tmp_path_factory) -> Path:
    """A directory every xdist worker of this test session sees (the base temp's parent)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def _shared_compile_cache(tmp_path_factory):
    """The compilation cache the suite's command-line runs share (``run_helpers``); the tests'
    own process does not use it (memory and compile-time measurements stay real)."""
    os.environ["AMYLM_TEST_COMPILE_CACHE"] = str(_session_dir(tmp_path_factory) / "jax_cache")


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """A 2-step demo run with one checkpoint (step 2), built once per test session.

    Under pytest-xdist every worker sees the same directory (a file lock makes the first one
    build it), so the run is trained once, not once per test module. Treat it as read-only;
    take :func:`demo_checkpoint_copy` to write into a workdir.
    """
    from filelock import FileLock

    target = _session_dir(tmp_path_factory) / "demo_checkpoint"
    with FileLock(str(target) + ".lock"):
        if not (target / "BUILT").exists():
            shutil.rmtree(target, ignore_errors=True)
            _build_demo_checkpoint(target)
            (target / "BUILT").touch()
    return target


@pytest.fixture(scope="module")
def demo_checkpoint_copy(demo_checkpoint, tmp_path_factory) -> Path:
    """A private copy of :func:`demo_checkpoint` that a test module may write into."""
    dst = tmp_path_factory.mktemp("demo_run") / "run"
    shutil.copytree(demo_checkpoint, dst, ignore=shutil.ignore_patterns("BUILT"))
    return dst
