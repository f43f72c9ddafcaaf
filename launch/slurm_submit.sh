#!/usr/bin/env bash
# Submit launch/slurm_gpu.sbatch with its options filled in from flags (or the environment).
#
#   launch/slurm_submit.sh --nodes=4 --gpus_per_node=8 --time=24:00:00 --partition=gpu \
#       --workdir=/shared/runs/adapt1 --store=/shared/stores/amy [--config=configs/adapt.py] \
#       [--config.a.b=v ...] [-- other trainer flags] [--dry_run]
#
# --dry_run prints the resolved settings (as # comments), then the commands exactly as they
# would run (mkdir for the log folder, sbatch), and submits nothing. See launch/README.md.
set -euo pipefail

# die, quote, quote_all, need_value, run_cmd
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROG=launch/slurm_submit.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="${REPO}/launch/slurm_gpu.sbatch"

usage() {
  cat <<'EOF'
Usage: launch/slurm_submit.sh --workdir=DIR [--flag=value ...] [--config.x=y ...] [-- trainer flags]

Flags (environment variable in brackets)
  --workdir=DIR          checkpoints and metrics, on storage every node sees [WORKDIR] (required)
  --config=FILE          config file [CONFIG, default configs/adapt.py]
  --store=DIR            feature store on shared storage, passed as --config.data.store [STORE]
  --nodes=N              nodes [NODES, default 1]
  --gpus_per_node=G      GPUs per node [GPUS_PER_NODE, default 8]
  --task_per_gpu         one process per GPU instead of one per node
  --cpus_per_task=C      CPUs per process [CPUS_PER_TASK, default 16, or 4 with --task_per_gpu]
  --time=HH:MM:SS        time limit of one slice; the job requeues itself 5 min before
                         [TIME, default 24:00:00]
  --partition=P          [PARTITION]      --account=A  [ACCOUNT]      --qos=Q  [QOS]
  --job_name=NAME        [JOB_NAME, default amylm]
  --log_dir=DIR          where slurm writes NAME-JOBID.out [LOG_DIR, default logs/slurm]
  --port=PORT            coordinator port [COORDINATOR_PORT, default derived from the job id]
  --venv=DIR             virtual environment to activate [AMYLM_VENV, default .venv if present]
  --sbatch_arg=ARG       extra sbatch option, e.g. --sbatch_arg=--exclusive (repeatable)
  --dry_run              print what would run, submit nothing
  -h, --help             this help
EOF
}

# Absolute path of a path that may not exist yet (relative to the current directory).
absolute() {
  case $1 in
    /* | *://*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$PWD" "${1#./}" ;;
  esac
}

WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-configs/adapt.py}
STORE=${STORE:-}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-}
TIME=${TIME:-24:00:00}
PARTITION=${PARTITION:-}
ACCOUNT=${ACCOUNT:-}
QOS=${QOS:-}
JOB_NAME=${JOB_NAME:-amylm}
LOG_DIR=${LOG_DIR:-logs/slurm}
COORDINATOR_PORT=${COORDINATOR_PORT:-}
AMYLM_VENV=${AMYLM_VENV:-}
TASK_PER_GPU=0
DRY_RUN=0
EXTRA=()
SBATCH_EXTRA=()

while (($#)); do
  arg=$1
  shift
  case $arg in
    -h | --help) usage; exit 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --task_per_gpu) TASK_PER_GPU=1 ;;
    --workdir | --workdir=*) WORKDIR=$(need_value "$arg") ;;
    --config | --config=*) CONFIG=$(need_value "$arg") ;;
    --config.*) EXTRA+=("$arg") ;;
    --store | --store=*) STORE=$(need_value "$arg") ;;
    --nodes | --nodes=*) NODES=$(need_value "$arg") ;;
    --gpus_per_node | --gpus_per_node=*) GPUS_PER_NODE=$(need_value "$arg") ;;
    --cpus_per_task | --cpus_per_task=*) CPUS_PER_TASK=$(need_value "$arg") ;;
    --time | --time=*) TIME=$(need_value "$arg") ;;
    --partition | --partition=*) PARTITION=$(need_value "$arg") ;;
    --account | --account=*) ACCOUNT=$(need_value "$arg") ;;
    --qos | --qos=*) QOS=$(need_value "$arg") ;;
    --job_name | --job_name=*) JOB_NAME=$(need_value "$arg") ;;
    --log_dir | --log_dir=*) LOG_DIR=$(need_value "$arg") ;;
    --port | --port=*) COORDINATOR_PORT=$(need_value "$arg") ;;
    --venv | --venv=*) AMYLM_VENV=$(need_value "$arg") ;;
    --sbatch_arg | --sbatch_arg=*) SBATCH_EXTRA+=("$(need_value "$arg")") ;;
    --) EXTRA+=("$@"); break ;;
    *) die "unknown argument ${arg} (see --help)" ;;
  esac
done

[[ -n $WORKDIR ]] || die "missing --workdir (or the environment variable WORKDIR): a directory on storage every node sees"
for pair in "nodes:$NODES" "gpus_per_node:$GPUS_PER_NODE" "cpus_per_task:${CPUS_PER_TASK:-1}" "port:${COORDINATOR_PORT:-1}"; do
  [[ ${pair#*:} =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer (got '${pair#*:}')"
done
[[ $TIME =~ ^[0-9:-]+$ ]] || die "--time must look like HH:MM:SS or D-HH:MM:SS (got '${TIME}')"

WORKDIR=$(absolute "$WORKDIR")
LOG_DIR=$(absolute "$LOG_DIR")
[[ -z $STORE || $STORE == demo ]] || STORE=$(absolute "$STORE")
[[ -z $AMYLM_VENV ]] || AMYLM_VENV=$(absolute "$AMYLM_VENV")
# The job runs in the repository; keep a config given relative to another directory working.
if [[ ! -f ${REPO}/${CONFIG} && -f $CONFIG ]]; then
  CONFIG=$(absolute "$CONFIG")
fi

if ((TASK_PER_GPU)); then
  tasks_per_node=$GPUS_PER_NODE
  CPUS_PER_TASK=${CPUS_PER_TASK:-4}
else
  tasks_per_node=1
  CPUS_PER_TASK=${CPUS_PER_TASK:-16}
fi

# Environment for the batch script; sbatch --export takes NAME=value pairs split on commas.
exports=ALL
for pair in "AMYLM_REPO=${REPO}" ${COORDINATOR_PORT:+"COORDINATOR_PORT=${COORDINATOR_PORT}"} \
  ${AMYLM_VENV:+"AMYLM_VENV=${AMYLM_VENV}"}; do
  [[ $pair != *,* ]] || die "a comma in ${pair} cannot pass through sbatch --export"
  exports+=",${pair}"
done

sbatch_cmd=(
  sbatch
  "--job-name=${JOB_NAME}"
  "--nodes=${NODES}"
  "--gpus-per-node=${GPUS_PER_NODE}"
  "--ntasks-per-node=${tasks_per_node}"
  "--cpus-per-task=${CPUS_PER_TASK}"
  "--time=${TIME}"
  "--output=${LOG_DIR}/%x-%j.out"
  "--chdir=${REPO}"
  "--export=${exports}"
)
[[ -z $PARTITION ]] || sbatch_cmd+=("--partition=${PARTITION}")
[[ -z $ACCOUNT ]] || sbatch_cmd+=("--account=${ACCOUNT}")
[[ -z $QOS ]] || sbatch_cmd+=("--qos=${QOS}")
sbatch_cmd+=("${SBATCH_EXTRA[@]}" "$SCRIPT" "--config=${CONFIG}" "--workdir=${WORKDIR}")
[[ -z $STORE ]] || sbatch_cmd+=("--config.data.store=${STORE}")
sbatch_cmd+=("${EXTRA[@]}")

if ((DRY_RUN)); then
  n=$((NODES * tasks_per_node))
  echo "# script: ${SCRIPT}"
  echo "# environment: --export=${exports}"
  echo "# layout: ${NODES} node(s) x ${tasks_per_node} process(es), ${GPUS_PER_NODE} GPU(s) per node, ${CPUS_PER_TASK} CPU(s) per process"
  echo "# each task runs: python -m amylm_jax.train --config=${CONFIG} --workdir=${WORKDIR} ... --coordinator_address=<first node>:${COORDINATOR_PORT:-<20000 + job id % 20000>} --num_processes=${n} --process_id=\$SLURM_PROCID"
fi
run_cmd mkdir -p "$LOG_DIR"
run_cmd "${sbatch_cmd[@]}"
