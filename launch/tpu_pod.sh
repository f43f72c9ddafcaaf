#!/usr/bin/env bash
# Drive one Cloud TPU VM slice (single host or pod) for amylm_jax training with gcloud.
#
#   launch/tpu_pod.sh create  --name=amy-v5e --zone=us-west4-a --accelerator=v5litepod-16 \
#                             --version=v2-alpha-tpuv5-lite [--spot|--preemptible]
#   launch/tpu_pod.sh setup   --name=amy-v5e --zone=us-west4-a --repo_url=URL [--repo_ref=main]
#   launch/tpu_pod.sh prepare --name=amy-v5e --zone=us-west4-a --manifest=gs://b/align.jsonl \
#                             --store=gs://b/stores/amy [--env=...] [-- extra prepare flags]
#   launch/tpu_pod.sh store   --name=amy-v5e --zone=us-west4-a --store_src=gs://b/store --store=store
#   launch/tpu_pod.sh run     --name=amy-v5e --zone=us-west4-a --workdir=gs://b/runs/adapt1 \
#                             --store=gs://b/stores/amy [--config=configs/adapt.py] [--config.a.b=v ...]
#   launch/tpu_pod.sh logs    --name=amy-v5e --zone=us-west4-a [--worker=0] [--lines=100]
#   launch/tpu_pod.sh status | stop | delete  --name=amy-v5e --zone=us-west4-a
#   launch/tpu_pod.sh ssh     --name=amy-v5e --zone=us-west4-a [--worker=all] -- 'COMMAND'
#
# Every value can also come from the environment (TPU_NAME, ZONE, PROJECT, ACCELERATOR,
# TPU_VERSION, REPO_URL, REPO_REF, WORKDIR, CONFIG, STORE, STORE_SRC, REMOTE_DIR); a flag wins.
# --dry_run prints each command, one per line, quoted exactly as it would run, and runs nothing.
# See launch/README.md for a whole run, from create to delete.
set -euo pipefail

# die, quote, quote_all, need_value, run_cmd
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROG=launch/tpu_pod.sh

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh SUBCOMMAND [--flag=value ...] [--config.x=y ...] [-- extra args]

Subcommands
  create   create the TPU VM slice (gcloud compute tpus tpu-vm create)
  setup    on every worker: clone or update the repository at --repo_ref, create .venv if
           missing, pip install -e . and jax[tpu]. Safe to rerun.
  prepare  teacher extraction on every worker at once: worker W of N extracts block W of
           --manifest into --store/parts/ (resumable clip by clip), then worker 0 joins the
           parts into one store. Rerun after a failure: finished clips are not redone.
  store    optional: copy the feature store from --store_src (gs://...) to --store (a path
           on the worker's disk). run can also read a gs:// store in place. Safe to rerun.
  run      start training on every worker at once, detached (nohup + setsid), appending to
           logs/train-<hostname>.log in the checkout. Extra --config.* flags and anything
           after -- are passed to the trainer. It resumes from --workdir's last checkpoint:
           after a preemption (exit status 75, checkpoint written) run it again.
  logs     tail one worker's log (--worker=N, default 0)
  status   say on every worker whether training runs, with the last log line
  stop     stop training on every worker: SIGTERM (the trainer writes a checkpoint of the
           step all workers agree on and exits 75), SIGKILL after --grace seconds
  ssh      run the command given after -- on --worker (default all)
  delete   delete the TPU VM slice

Flags (environment variable in brackets)
  --name=NAME            TPU VM name [TPU_NAME]                        (all)
  --zone=ZONE            zone, e.g. us-west4-a [ZONE]                  (all)
  --project=PROJECT      project; gcloud's default if unset [PROJECT]
  --accelerator=TYPE     e.g. v5litepod-16, v4-32 [ACCELERATOR]        (create)
  --version=RUNTIME      TPU software version, e.g. tpu-ubuntu2204-base,
                         v2-alpha-tpuv5-lite [TPU_VERSION]              (create)
  --spot | --preemptible create a Spot / preemptible slice             (create)
  --repo_url=URL         git URL of this repository [REPO_URL]         (setup)
  --repo_ref=REF         branch, tag or full commit [REPO_REF, default main]
  --remote_dir=DIR       checkout on the workers, relative to the home directory or absolute
                         [REMOTE_DIR, default amylm_jax]
  --store_src=URL        where the built store lives, gs://... [STORE_SRC] (store)
  --store=PATH|URL       the feature store [STORE]: run passes it as --config.data.store
                         (a gs:// store is read in place with ranged reads; the config's
                         default if unset); prepare writes it
  --manifest=PATH|URL    alignment manifest, readable on every worker [MANIFEST] (prepare)
  --workdir=gs://...     checkpoints and metrics, shared by all workers [WORKDIR] (run)
  --local_workdir        allow a workdir that is not gs:// (single-host slices only)
  --config=FILE          config file [CONFIG, default configs/adapt.py]
  --env=NAME=VALUE       environment variable for the trainer (repeatable)      (run)
  --worker=N|all         worker for logs (default 0) and ssh (default all)
  --lines=N              lines of log to show first (default 100)                (logs)
  --grace=SECONDS        how long stop waits for the checkpoint before SIGKILL (default 300)
  --no_follow            print the log and return instead of following it        (logs)
  --yes                  delete without asking                                   (delete)
  --dry_run              print the commands instead of running them
  -h, --help             this help
EOF
}

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR=${ACCELERATOR:-}
TPU_VERSION=${TPU_VERSION:-}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-main}
REMOTE_DIR=${REMOTE_DIR:-amylm_jax}
MANIFEST=${MANIFEST:-}
GRACE=${GRACE:-300}
WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-configs/adapt.py}
STORE=${STORE:-}
STORE_SRC=${STORE_SRC:-}
SPOT=0
PREEMPTIBLE=0
LOCAL_WORKDIR=0
WORKER=""
LINES=100
FOLLOW=1
YES=0
DRY_RUN=0
CMD=""
EXTRA=()
ENVS=()

while (($#)); do
  arg=$1
  shift
  case $arg in
    -h | --help) usage; exit 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --local_workdir) LOCAL_WORKDIR=1 ;;
    --no_follow) FOLLOW=0 ;;
    --yes) YES=1 ;;
    --name | --name=*) TPU_NAME=$(need_value "$arg") ;;
    --zone | --zone=*) ZONE=$(need_value "$arg") ;;
    --project | --project=*) PROJECT=$(need_value "$arg") ;;
    --accelerator | --accelerator=*) ACCELERATOR=$(need_value "$arg") ;;
    --version | --version=*) TPU_VERSION=$(need_value "$arg") ;;
    --repo_url | --repo_url=*) REPO_URL=$(need_value "$arg") ;;
    --repo_ref | --repo_ref=*) REPO_REF=$(need_value "$arg") ;;
    --remote_dir | --remote_dir=*) REMOTE_DIR=$(need_value "$arg") ;;
    --workdir | --workdir=*) WORKDIR=$(need_value "$arg") ;;
    --config | --config=*) CONFIG=$(need_value "$arg") ;;
    --config.*) EXTRA+=("$arg") ;;
    --store | --store=*) STORE=$(need_value "$arg") ;;
    --store_src | --store_src=*) STORE_SRC=$(need_value "$arg") ;;
    --manifest | --manifest=*) MANIFEST=$(need_value "$arg") ;;
    --grace | --grace=*) GRACE=$(need_value "$arg") ;;
    --env | --env=*) ENVS+=("$(need_value "$arg")") ;;
    --worker | --worker=*) WORKER=$(need_value "$arg") ;;
    --lines | --lines=*) LINES=$(need_value "$arg") ;;
    --) EXTRA+=("$@"); break ;;
    -*) die "unknown flag ${arg} (see --help)" ;;
    *)
      [[ -z $CMD ]] || die "one subcommand at a time (got '${CMD}' and '${arg}')"
      CMD=$arg
      ;;
  esac
done

[[ -n $CMD ]] || { usage >&2; die "missing SUBCOMMAND"; }

require() {
  local var=$1 flag=$2
  [[ -n ${!var} ]] || die "${CMD} needs ${flag} (or the environment variable ${var})"
}

# The gcloud arguments every subcommand shares: NAME --zone [--project].
TPU_ARGS=()
common() {
  require TPU_NAME --name
  require ZONE --zone
  TPU_ARGS=("$TPU_NAME" "--zone=${ZONE}")
  [[ -z $PROJECT ]] || TPU_ARGS+=("--project=${PROJECT}")
}

# Run a shell command on the workers over gcloud ssh.
on_workers() {
  local worker=$1 command=$2
  run_cmd gcloud compute tpus tpu-vm ssh "${TPU_ARGS[@]}" "--worker=${worker}" --command "$command"
}

D=$(quote "$REMOTE_DIR")
PID_FILE=logs/train.pid
# Evaluated on the worker, so each worker writes (and logs reads) its own file.
# shellcheck disable=SC2016  # expands on the worker
LOG_FILE='logs/train-$(hostname).log'
# True on the worker when the pid file names a live process.
ALIVE="[ -f ${PID_FILE} ] && kill -0 \"\$(cat ${PID_FILE})\" 2>/dev/null"

cmd_create() {
  common
  require ACCELERATOR --accelerator
  require TPU_VERSION --version
  ((SPOT + PREEMPTIBLE < 2)) || die "choose one of --spot and --preemptible"
  local args=("--accelerator-type=${ACCELERATOR}" "--version=${TPU_VERSION}")
  ((SPOT == 0)) || args+=(--spot)
  ((PREEMPTIBLE == 0)) || args+=(--preemptible)
  run_cmd gcloud compute tpus tpu-vm create "${TPU_ARGS[@]}" "${args[@]}"
}

cmd_setup() {
  common
  require REPO_URL --repo_url
  local steps=(
    "set -e"
    "if [ -d ${D}/.git ]; then git -C ${D} remote set-url origin $(quote "$REPO_URL"); else git clone $(quote "$REPO_URL") ${D}; fi"
    "git -C ${D} fetch --tags --force origin $(quote "$REPO_REF")"
    "git -C ${D} checkout --force --detach FETCH_HEAD"
    "cd ${D}"
    "{ [ -d .venv ] || python3 -m venv .venv; }"
    ". .venv/bin/activate"
    "pip install -q --upgrade pip"
    "pip install -q -e ."
    "pip install -q -U 'jax[tpu]'"
    "echo \"\$(hostname): \$(git log -1 --format='%h %s') jax \$(python -c 'import jax; print(jax.__version__)')\""
  )
  on_workers all "$(join_steps "${steps[@]}")"
}

cmd_store() {
  common
  require STORE_SRC --store_src
  require STORE --store
  [[ $STORE != gs://* ]] || die "--store is the path on each worker's disk, not a gs:// URL"
  local s
  s=$(quote "$STORE")
  on_workers all "set -e; mkdir -p ${s}; gcloud storage rsync --recursive $(quote "$STORE_SRC") ${s}; ls ${s}"
}

cmd_run() {
  common
  require WORKDIR --workdir
  if [[ $WORKDIR != gs://* && $LOCAL_WORKDIR == 0 ]]; then
    die "--workdir must be a gs:// path that every worker shares (got '${WORKDIR}'); pass --local_workdir on a single-host slice"
  fi
  local train=(python -m amylm_jax.train "--config=${CONFIG}" "--workdir=${WORKDIR}" --distributed)
  [[ -z $STORE ]] || train+=("--config.data.store=${STORE}")
  train+=("${EXTRA[@]}")
  local env=(env PYTHONUNBUFFERED=1 "${ENVS[@]}")
  local steps=(
    "set -e"
    "cd ${D}"
    "mkdir -p logs"
    "if ${ALIVE}; then echo \"\$(hostname): training already runs (pid \$(cat ${PID_FILE})); stop it first\" >&2; exit 1; fi"
    ". .venv/bin/activate"
    "LOG=${LOG_FILE}"
    "echo \"=== start \$(date -u +%Y-%m-%dT%H:%M:%SZ) ===\" >> \"\$LOG\""
    "nohup setsid $(quote_all "${env[@]}" "${train[@]}") >> \"\$LOG\" 2>&1 < /dev/null &"
    "echo \$! > ${PID_FILE}"
    "echo \"\$(hostname): started pid \$!, log ${REMOTE_DIR}/\$LOG\""
  )
  on_workers all "$(join_steps "${steps[@]}")"
}

cmd_logs() {
  common
  local worker=${WORKER:-0}
  [[ $worker =~ ^[0-9]+$ ]] || die "logs needs one worker index: --worker=N (got '${worker}')"
  [[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number (got '${LINES}')"
  local tail_args="-n ${LINES}"
  ((FOLLOW == 0)) || tail_args+=" -F"
  on_workers "$worker" "cd ${D} && tail ${tail_args} ${LOG_FILE}"
}

cmd_status() {
  common
  on_workers all "cd ${D} 2>/dev/null || { echo \"\$(hostname): no checkout\"; exit 0; }; if ${ALIVE}; then echo \"\$(hostname): running (pid \$(cat ${PID_FILE}))\"; else echo \"\$(hostname): not running\"; fi; tail -n 1 ${LOG_FILE} 2>/dev/null || true"
}

cmd_prepare() {
  common
  require MANIFEST --manifest
  require STORE --store
  local md="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
  local prep=(python -m amylm_jax.prepare "--manifest=${MANIFEST}" "--out=${STORE}")
  prep+=("${EXTRA[@]}")
  local env=(env PYTHONUNBUFFERED=1 "${ENVS[@]}")
  local steps=(
    "set -e"
    "cd ${D}"
    ". .venv/bin/activate"
    "W=\$(curl -s -H Metadata-Flavor:Google ${md}/agent-worker-number)"
    "N=\$(curl -s -H Metadata-Flavor:Google ${md}/worker-network-endpoints | tr ',' '\\n' | grep -c .)"
    "$(quote_all "${env[@]}" "${prep[@]}") --num_shards=\"\$N\" --shard_index=\"\$W\""
  )
  on_workers all "$(join_steps "${steps[@]}")"
  on_workers 0 "set -e; cd ${D}; . .venv/bin/activate; $(quote_all python -m amylm_jax.prepare --join "--out=${STORE}")"
}

cmd_stop() {
  common
  [[ $GRACE =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds (got '${GRACE}')"
  local steps=(
    "cd ${D} 2>/dev/null || exit 0"
    "if ${ALIVE}; then P=\$(cat ${PID_FILE}); kill -TERM -- \"-\$P\" 2>/dev/null || kill -TERM \"\$P\"; i=0; while kill -0 \"\$P\" 2>/dev/null && [ \$i -lt ${GRACE} ]; do sleep 1; i=\$((i+1)); done; if kill -0 \"\$P\" 2>/dev/null; then kill -KILL -- \"-\$P\" 2>/dev/null || kill -KILL \"\$P\"; fi; echo \"\$(hostname): stopped pid \$P\"; else echo \"\$(hostname): not running\"; fi"
    "rm -f ${PID_FILE}"
  )
  on_workers all "$(join_steps "${steps[@]}")"
}

cmd_ssh() {
  common
  ((${#EXTRA[@]})) || die "ssh needs a command after --, e.g. -- 'nproc'"
  on_workers "${WORKER:-all}" "${EXTRA[*]}"
}

cmd_delete() {
  common
  local args=()
  ((YES == 0)) || args+=(--quiet)
  run_cmd gcloud compute tpus tpu-vm delete "${TPU_ARGS[@]}" "${args[@]}"
}

# Join shell steps with "; " (a step that ends in "&" is already terminated).
join_steps() {
  local out="" s
  for s in "$@"; do
    if [[ -z $out ]]; then
      out=$s
    elif [[ $out == *"&" ]]; then
      out+=" ${s}"
    else
      out+="; ${s}"
    fi
  done
  printf '%s' "$out"
}

if ((${#EXTRA[@]})) && [[ $CMD != run && $CMD != ssh && $CMD != prepare ]]; then
  die "${CMD} takes no trainer arguments (got '${EXTRA[*]}')"
fi

case $CMD in
  create) cmd_create ;;
  setup) cmd_setup ;;
  store) cmd_store ;;
  prepare) cmd_prepare ;;
  run) cmd_run ;;
  logs) cmd_logs ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  ssh) cmd_ssh ;;
  delete) cmd_delete ;;
  *) die "unknown subcommand '${CMD}' (see --help)" ;;
esac
