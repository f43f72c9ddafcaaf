#!/usr/bin/env bash
# Multi-host rehearsal on one machine: N training processes on the CPU, each with D virtual
# devices, joined through a coordinator on localhost exactly as the hosts of a pod would be.
#
#   launch/local_multiprocess.sh [--num_processes=2] [--devices_per_process=4] \
#       [--config=configs/demo.py] [--workdir=DIR] [--store=demo] [--config.a.b=v ...] [--dry_run]
#
# Each process logs to LOG_DIR/process_<i>.log. If one process fails the others are stopped
# (they would otherwise wait for it at the next collective). Ctrl-C stops them all.
# --dry_run prints the commands, one per line, and starts nothing.
set -euo pipefail

# die, quote, quote_all, need_value, run_cmd
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROG=launch/local_multiprocess.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [--flag=value ...] [--config.x=y ...] [-- trainer flags]

Flags (environment variable in brackets)
  --num_processes=N        processes [NUM_PROCESSES, default 2]
  --devices_per_process=D  virtual CPU devices per process [DEVICES_PER_PROCESS, default 4]
  --port=PORT              coordinator port on localhost [PORT, default 12345]
  --config=FILE            config file [CONFIG, default configs/demo.py]
  --workdir=DIR            [WORKDIR, default $TMPDIR/amylm_local_multiprocess/workdir]
  --log_dir=DIR            [LOG_DIR, default WORKDIR_logs, next to the workdir]
  --store=PATH             passed as --config.data.store [STORE, the config's default if unset]
  --python=EXE             interpreter [PYTHON, default python3]
  --dry_run                print the commands instead of running them
  -h, --help               this help
EOF
}

NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-4}
PORT=${PORT:-12345}
CONFIG=${CONFIG:-configs/demo.py}
BASE="${TMPDIR:-/tmp}/amylm_local_multiprocess"
WORKDIR=${WORKDIR:-${BASE}/workdir}
LOG_DIR=${LOG_DIR:-}
STORE=${STORE:-}
PYTHON=${PYTHON:-python3}
DRY_RUN=0
EXTRA=()

while (($#)); do
  arg=$1
  shift
  case $arg in
    -h | --help) usage; exit 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --num_processes | --num_processes=*) NUM_PROCESSES=$(need_value "$arg") ;;
    --devices_per_process | --devices_per_process=*) DEVICES_PER_PROCESS=$(need_value "$arg") ;;
    --port | --port=*) PORT=$(need_value "$arg") ;;
    --config | --config=*) CONFIG=$(need_value "$arg") ;;
    --config.*) EXTRA+=("$arg") ;;
    --workdir | --workdir=*) WORKDIR=$(need_value "$arg") ;;
    --log_dir | --log_dir=*) LOG_DIR=$(need_value "$arg") ;;
    --store | --store=*) STORE=$(need_value "$arg") ;;
    --python | --python=*) PYTHON=$(need_value "$arg") ;;
    --) EXTRA+=("$@"); break ;;
    *) die "unknown argument ${arg} (see --help)" ;;
  esac
done

for pair in "num_processes:$NUM_PROCESSES" "devices_per_process:$DEVICES_PER_PROCESS" "port:$PORT"; do
  [[ ${pair#*:} =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer (got '${pair#*:}')"
done
[[ -n $WORKDIR ]] || die "--workdir must not be empty"
LOG_DIR=${LOG_DIR:-${WORKDIR%/}_logs}

cd "$REPO"
# Keep the caller's XLA flags, except a device count of its own.
xla_flags=""
for f in ${XLA_FLAGS:-}; do
  [[ $f == --xla_force_host_platform_device_count=* ]] || xla_flags+="${f} "
done
xla_flags+="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
train=("$PYTHON" -m amylm_jax.train "--config=${CONFIG}" "--workdir=${WORKDIR}")
[[ -z $STORE ]] || train+=("--config.data.store=${STORE}")
train+=("${EXTRA[@]}")

command_for() {
  CMD=(env JAX_PLATFORMS=cpu "XLA_FLAGS=${xla_flags}" PYTHONUNBUFFERED=1 "${train[@]}"
    "--coordinator_address=localhost:${PORT}" "--num_processes=${NUM_PROCESSES}"
    "--process_id=$1")
}

if ((DRY_RUN)); then
  quote_all mkdir -p "$LOG_DIR"
  echo
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    command_for "$i"
    echo "$(quote_all "${CMD[@]}") > $(quote "${LOG_DIR}/process_${i}.log") 2>&1 &"
  done
  echo wait
  exit 0
fi

mkdir -p "$LOG_DIR"
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
}
trap 'echo "stopping"; stop_all; exit 130' INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  command_for "$i"
  "${CMD[@]}" >"${LOG_DIR}/process_${i}.log" 2>&1 &
  pids+=("$!")
  echo "process ${i}: pid $!, log ${LOG_DIR}/process_${i}.log"
done
echo "follow with: tail -F ${LOG_DIR}/process_0.log"

# Wait for all; the first failure stops the rest.
failed=""
left=$NUM_PROCESSES
done_=()
while ((left > 0)); do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    [[ -z ${done_[i]:-} ]] || continue
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      status=0
      wait "${pids[i]}" || status=$?
      done_[i]=1
      left=$((left - 1))
      echo "process ${i} exited with status ${status}"
      if ((status != 0)) && [[ -z $failed ]]; then
        failed=$i
        echo "--- last lines of ${LOG_DIR}/process_${i}.log ---"
        tail -n 30 "${LOG_DIR}/process_${i}.log" || true
        stop_all
      fi
    fi
  done
  ((left == 0)) || sleep 0.2
done
[[ -z $failed ]] || exit 1
echo "all ${NUM_PROCESSES} processes finished"
