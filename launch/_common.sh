# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, never run): errors, quoting, and print-or-run for --dry_run.
# A script sets DRY_RUN=1 for --dry_run; `run` then prints each command exactly as a shell would read it back.

DRY_RUN=${DRY_RUN:-0}

die() {
  echo "error: $*" >&2
  exit 2
}

# quote_cmd WORD...: one line that a shell reads back as the same words (plain words bare, others quoted).
quote_cmd() {
  local out=() arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$arg")
    else
      out+=("${arg@Q}")
    fi
  done
  echo "${out[*]}"
}

# run CMD...: runs the command (echoing it to stderr first), or with --dry_run prints it to stdout.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
  else
    echo "+ $(quote_cmd "$@")" >&2
    "$@"
  fi
}

# shellcheck disable=SC2034  # BG_PID is read by the scripts that source this file
# run_bg LOG CMD...: starts the command in the background with stdout+stderr to LOG (BG_PID holds its pid),
# or with --dry_run prints it with its redirection.
run_bg() {
  local log=$1
  shift
  if [[ $DRY_RUN == 1 ]]; then
    echo "$(quote_cmd "$@") >$(quote_cmd "$log") 2>&1 &"
    BG_PID=''
  else
    echo "+ $(quote_cmd "$@") >$log 2>&1 &" >&2
    "$@" >"$log" 2>&1 &
    BG_PID=$!
  fi
}

# flag_value --name=value: prints value.
flag_value() {
  echo "${1#*=}"
}

# unknown_argument ARG HINT: dies naming ARG; a known flag given without `=VALUE` (its `--flag=` is in the
# script's usage text) is told to take one.
unknown_argument() {
  if [[ $1 =~ ^--[a-z_]+$ ]] && usage | grep -q -e "$1="; then
    die "$1 needs a value: write $1=VALUE (see --help)"
  fi
  die "unknown argument '$1' ($2)"
}
