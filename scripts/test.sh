#!/usr/bin/env bash
# Install amylm_jax with its test extras into ./.venv and run the whole test suite.
# Works on a fresh machine that has only Python 3.10+ (CPU only; no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
# The PyTorch Mimi reference for parity tests. Its pins conflict with our stack, so it is
# installed without dependencies (it needs only torch, numpy, safetensors, einops, sphn here).
python -m pip install -q --no-deps moshi==0.2.13 sentencepiece sphn einops
ruff check amylm_jax tests benchmarks configs launch scripts
ruff format --check amylm_jax tests benchmarks configs launch scripts
python -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@"
