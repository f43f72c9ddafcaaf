"""The command-line convention of every tool: --help with defaults, one-line errors, quiet logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

TOOLS = [
    ("amylm_jax.train", ["--config", "--workdir", "--coordinator_address", "--verbosity"]),
    ("amylm_jax.prepare", ["--manifest", "--out", "--check", "--verbosity"]),
    ("amylm_jax.align", ["--audio", "--out", "--transcripts", "--aligner", "--verbosity"]),
    ("amylm_jax.codec", ["--weights", "--checkpoint", "--num_codebooks", "--verbosity"]),
    ("amylm_jax.evaluate", ["--workdir", "--max_clips", "--asr_model", "--verbosity"]),
    ("amylm_jax.export", ["--workdir", "--out", "--layout", "--verbosity"]),
    ("amylm_jax.report", ["--json", "--plots", "--verbosity"]),
    ("amylm_jax.data.demo", ["--out", "--force", "--verbosity"]),
]


def _python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


@pytest.mark.parametrize("module,expected", TOOLS, ids=[t[0] for t in TOOLS])
def test_help_lists_every_flag_with_its_default(module, expected):
    out = _python("-m", module, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m {module}")
    for flag in expected:
        assert flag in out.stdout, flag
    # Every flag line is followed by its default.
    lines = out.stdout.splitlines()
    flag_lines = [i for i, line in enumerate(lines) if line.startswith("  -")]
    assert flag_lines and all(lines[i + 1].strip().startswith("(default:") for i in flag_lines)


def test_mistyped_config_key_names_the_nearest_keys(tmp_path):
    out = _python(
        "-m",
        "amylm_jax.train",
        "--config=configs/demo.py",
        f"--workdir={tmp_path}",
        "--config.loss.alpha_foo=1",
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "unknown config key --config.loss.alpha_foo" in out.stderr
    assert "--config.loss.alpha_feat" in out.stderr
    out = _python("-m", "amylm_jax.train", "--config=configs/demo.py", "--wrokdir=x")
    assert out.returncode == 2 and "--workdir" in out.stderr and "Traceback" not in out.stderr


def test_codec_uses_the_runs_own_codebook_count_and_stays_quiet(demo_checkpoint, tmp_path):
    """``codec encode --checkpoint=RUN`` encodes with the codebooks the run trained (4 in the
    demo), without library log lines; decode round-trips the length."""
    rng = np.random.default_rng(0)
    wav = tmp_path / "in.wav"
    sf.write(wav, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    npz, out_wav = tmp_path / "codes.npz", tmp_path / "out.wav"
    enc = _python(
        "-m", "amylm_jax.codec", "encode", f"--checkpoint={demo_checkpoint}", str(wav), str(npz)
    )
    assert enc.returncode == 0, enc.stderr
    with np.load(npz) as data:
        codes = data["codes"]
    assert codes.shape[0] == 4  # configs/demo.py: quantizer.num_codebooks = 4
    assert "codes 4 x" in enc.stdout
    noise = ("_NonBlockingMetadataStore", "INFO", "orbax")
    assert not any(word in enc.stderr + enc.stdout for word in noise), enc.stderr
    dec = _python(
        "-m", "amylm_jax.codec", "decode", f"--checkpoint={demo_checkpoint}", str(npz), str(out_wav)
    )
    assert dec.returncode == 0, dec.stderr
    audio, rate = sf.read(out_wav)
    assert rate == 24000 and audio.shape[0] == 24000
    # An explicit count above the run's still works when the slots exist; outside them it is a
    # clear error.
    bad = _python(
        "-m",
        "amylm_jax.codec",
        "encode",
        f"--checkpoint={demo_checkpoint}",
        "--num_codebooks=9",
        str(wav),
        str(npz),
    )
    assert bad.returncode == 2 and "num_codebooks" in bad.stderr and "Traceback" not in bad.stderr
    # -v shows the library lines again.
    loud = _python(
        "-m", "amylm_jax.codec", "encode", "-v", "1", f"--checkpoint={demo_checkpoint}", str(wav),
        str(npz),
    )  # fmt: skip
    assert loud.returncode == 0 and "INFO" in loud.stderr


def test_usage_errors_are_one_line(tmp_path):
    out = _python("-m", "amylm_jax.codec", "transcode", "a", "b")
    assert out.returncode == 2 and out.stderr.startswith("error:") and "encode" in out.stderr
    out = _python("-m", "amylm_jax.export", f"--workdir={tmp_path}")
    assert out.returncode == 2 and "--out" in out.stderr
    out = _python("-m", "amylm_jax.evaluate", f"--workdir={tmp_path / 'none'}")
    assert out.returncode == 2 and "no such directory" in out.stderr
