#!/usr/bin/env bash
# Install amylm_jax into ./.venv and train the demo config on the bundled demo corpus, then
# print the loss health report. Works on a fresh machine that has only Python 3.10+.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORKDIR=${WORKDIR:-runs/demo}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck source=/dev/null
. .venv/bin/activate
python -m pip install -q --upgrade pip
# PyTorch (CPU) runs the tiny random teacher models that build the demo feature store.
python -m pip install -q -e '.[torch]'
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
python -m amylm_jax.train --config=configs/demo.py --workdir="$WORKDIR" "$@"
python -m amylm_jax.report "$WORKDIR"
