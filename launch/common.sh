# shellcheck shell=bash
# Shell helpers shared by the launch scripts (sourced, not run). The caller sets PROG (its
# name, for error messages) and, for run_cmd, DRY_RUN (1 = print the commands, run nothing).

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# Quote one word for a POSIX shell: bare when it is plainly safe, otherwise in single quotes.
quote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//"'"/"'\\''"}"
  fi
}

quote_all() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(quote "$a")"
  done
  printf '%s' "$out"
}

need_value() {
  [[ $1 == *=* ]] || die "flag ${1} needs a value: ${1}=VALUE"
  printf '%s' "${1#*=}"
}

# Run a command, or print it (one line, quoted) under --dry_run.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$(quote_all "$@")"
  else
    "$@"
  fi
}
