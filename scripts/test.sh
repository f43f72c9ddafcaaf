#!/usr/bin/env bash
# Install amylm_jax with its test extras into ./.venv and run the whole test suite.
# Works on a fresh machine that has only Python 3.10+ (CPU only; no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Debian packages some tests need: espeak-ng (regenerates the demo corpus) and shellcheck
# (lints the launch scripts). Installed when missing and apt-get is usable (root or sudo).
missing=()
command -v espeak-ng > /dev/null || missing+=(espeak-ng)
command -v shellcheck > /dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get > /dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo > /dev/null; then SUDO="sudo"; fi
  echo "installing ${missing[*]} (apt-get)"
  $SUDO apt-get update -qq > /dev/null || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" > /dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck source=/dev/null
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
# The PyTorch Mimi reference for parity tests. Its pins conflict with our stack, so it is
# installed without dependencies (it needs only torch, numpy, safetensors, einops, sphn here).
python -m pip install -q --no-deps moshi==0.2.13 sentencepiece sphn einops
# libtpu (the TPU compiler) for the ahead-of-time TPU compile test. It goes into its own folder,
# handed to that test's subprocess only: importable everywhere, it makes every JAX start on a
# machine without TPUs print host-detection errors.
if [ ! -d .venv/libtpu/libtpu ]; then
  req=$(python -c "import importlib.metadata as m; print(next(r.split(';')[0].strip() for r in m.requires('jax') if r.startswith('libtpu')))")
  python -m pip install -q --target .venv/libtpu "$req" ||
    echo "libtpu could not be installed: the TPU compile test says so and is skipped"
fi
ruff check amylm_jax tests benchmarks configs launch scripts
ruff format --check amylm_jax tests benchmarks configs launch scripts
# A skipped test fails the run (a missing dependency must not hide a suite); set
# AMYLM_FAIL_ON_SKIP=0 to run a subset on a machine without espeak-ng or shellcheck.
# The longest modules start first (tests/conftest.py); the slowest tests are listed at the end.
AMYLM_FAIL_ON_SKIP=${AMYLM_FAIL_ON_SKIP:-1} python -m pytest -n "${PYTEST_WORKERS:-2}" \
  --durations=25 -q "$@"
