#!/usr/bin/env bash
# Trains SaxGPT on a Cloud TPU VM slice: create it, copy the code and install it on every host, run the same
# train command on every host (per-host logs), babysit preemptions, delete. See --help.
set -euo pipefail

# shellcheck source=launch/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh COMMAND [FLAGS] [-- TRAIN_ARGS...]

Commands:
  create    create the TPU VM slice (on-demand, --spot, or through --queued resources; waits until ready)
  setup     copy the code to every host (--worker=all) and pip install its `train,tpu` extras there
  train     run `python3 -m saxgpt_jax.train --config=CONFIG --workdir=WORKDIR TRAIN_ARGS...` on every host
            at once; host i logs to LOG_DIR/worker-i.log; exits non-zero if any host fails
  babysit   loop: if the slice is preempted, failed or gone, delete and recreate it and run setup; then
            train. Training resumes from the checkpoints in --workdir. Ends when training exits 0, or after
            --max_failures failures on a healthy slice
  stop      stop a running training process on every host
  delete    delete the slice (or its queued resource)
  all       create, setup, train

Flags (--flag=value):
  --name=saxgpt-pod             slice name (and queued-resource id with --queued)
  --zone=us-central2-b          GCE zone; it must offer the type (this default has v4 only): see
                                `gcloud compute tpus accelerator-types list --zone=ZONE`
  --project=                    GCP project (default: gcloud's configured project)
  --accelerator_type=v4-32      TPU type; sets the number of hosts (v2/v3/v4/v5p-N: N/8, v5litepod/v6e-N: N/4)
  --num_workers=                override the number of hosts derived from --accelerator_type
  --version=                    TPU VM runtime (software) version; default from --accelerator_type, as Google
                                lists them: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e (v5litepod)
                                v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base
  --spot                        spot capacity (can be preempted at any time: use babysit)
  --queued                      create through `gcloud compute tpus queued-resources` (waits for capacity)
  --config=configs/base.py      training config file
  --workdir=gs://BUCKET/RUN     checkpoints, metrics and logs; required for train/babysit/all
  --ref=HEAD                    git ref of the code to ship (committed changes only); with --repo_url, a
                                branch, tag or commit of that repository (HEAD: its default branch)
  --repo_url=                   fetch --ref from this URL on the hosts (cloning it the first time) instead
                                of copying `git archive`; a later setup fetches it again
  --remote_dir=saxgpt-jax       code folder on the hosts (relative to the home folder)
  --log_dir=runs/tpu/NAME       local folder for the per-host logs
  --poll_s=60                   babysit: seconds between checks of the slice
  --max_failures=3              babysit: give up after this many training failures on a healthy slice
  --dry_run                     print the exact commands instead of running them
  --help                        this text

Everything after `--` is passed to saxgpt_jax.train on every host, e.g. -- --config.train.num_steps=20000

Examples:
  launch/tpu_pod.sh all --name=sax --accelerator_type=v4-32 --config=configs/large.py --workdir=gs://b/large
  launch/tpu_pod.sh babysit --name=sax --spot --accelerator_type=v5litepod-16 --zone=us-west4-a \
      --workdir=gs://b/run --dry_run
  launch/tpu_pod.sh delete --name=sax
USAGE
}

COMMAND=''
NAME=saxgpt-pod
ZONE=us-central2-b
PROJECT=''
ACCELERATOR_TYPE=v4-32
NUM_WORKERS=''
VERSION=''
SPOT=0
QUEUED=0
CONFIG=configs/base.py
WORKDIR=''
REF=HEAD
REPO_URL=''
REMOTE_DIR=saxgpt-jax
LOG_DIR=''
POLL_S=60
MAX_FAILURES=3
TRAIN_ARGS=()

while (($#)); do
  case $1 in
    --help | -h) usage; exit 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --name=*) NAME=$(flag_value "$1") ;;
    --zone=*) ZONE=$(flag_value "$1") ;;
    --project=*) PROJECT=$(flag_value "$1") ;;
    --accelerator_type=*) ACCELERATOR_TYPE=$(flag_value "$1") ;;
    --num_workers=*) NUM_WORKERS=$(flag_value "$1") ;;
    --version=*) VERSION=$(flag_value "$1") ;;
    --config=*) CONFIG=$(flag_value "$1") ;;
    --workdir=*) WORKDIR=$(flag_value "$1") ;;
    --ref=*) REF=$(flag_value "$1") ;;
    --repo_url=*) REPO_URL=$(flag_value "$1") ;;
    --remote_dir=*) REMOTE_DIR=$(flag_value "$1") ;;
    --log_dir=*) LOG_DIR=$(flag_value "$1") ;;
    --poll_s=*) POLL_S=$(flag_value "$1") ;;
    --max_failures=*) MAX_FAILURES=$(flag_value "$1") ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    create | setup | train | babysit | stop | delete | all)
      [[ -z $COMMAND ]] || die "two commands given ($COMMAND and $1); run one at a time"
      COMMAND=$1 ;;
    *) unknown_argument "$1" 'flags are --flag=value; see --help; arguments for saxgpt_jax.train go after --' ;;
  esac
  shift
done

[[ -n $COMMAND ]] || { usage >&2; die 'give a COMMAND: create, setup, train, babysit, stop, delete or all'; }
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name=$NAME: use lowercase letters, digits and dashes"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_./-]+$ ]] || die "--remote_dir=$REMOTE_DIR: use letters, digits, _ . / - only"
[[ $POLL_S =~ ^[0-9]+$ && $MAX_FAILURES =~ ^[0-9]+$ ]] || die '--poll_s and --max_failures take whole numbers'
LOG_DIR=${LOG_DIR:-runs/tpu/$NAME}
if [[ -z $VERSION ]]; then  # Google's runtime for each TPU generation (cloud.google.com/tpu/docs/runtimes)
  case $ACCELERATOR_TYPE in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi
PIDFILE=/tmp/saxgpt-train.pid
ARCHIVE=/tmp/saxgpt-jax-src.tar.gz

# Number of TPU VM hosts of an accelerator type.
num_hosts() {
  if [[ -n $NUM_WORKERS ]]; then
    [[ $NUM_WORKERS =~ ^[1-9][0-9]*$ ]] || die "--num_workers=$NUM_WORKERS is not a positive number"
    echo "$NUM_WORKERS"
    return
  fi
  local size=${ACCELERATOR_TYPE##*-}
  [[ $size =~ ^[0-9]+$ ]] || die "cannot read the size of --accelerator_type=$ACCELERATOR_TYPE; pass --num_workers"
  case $ACCELERATOR_TYPE in
    v2-* | v3-* | v4-* | v5p-*) echo $((size <= 8 ? 1 : size / 8)) ;;  # N TensorCores, 8 per host
    v5litepod-* | v5e-* | v6e-*) echo $((size <= 8 ? 1 : size / 4)) ;;  # N chips, 4 per host when multi-host
    *) die "unknown --accelerator_type=$ACCELERATOR_TYPE; pass --num_workers=HOSTS" ;;
  esac
}

PROJECT_FLAGS=()
[[ -z $PROJECT ]] || PROJECT_FLAGS=("--project=$PROJECT")

gcloud_tpu() {  # gcloud compute tpus SUBCOMMAND... with the zone and project flags
  run gcloud compute tpus "$@" "--zone=$ZONE" "${PROJECT_FLAGS[@]}"
}

need_workdir() {
  [[ -n $WORKDIR ]] || die "$COMMAND needs --workdir=gs://BUCKET/RUN (checkpoints must outlive the slice)"
  [[ $WORKDIR == gs://* ]] || echo "warning: --workdir=$WORKDIR is not on GCS; a recreated slice cannot resume" >&2
}

ssh_all() {  # ssh_all REMOTE_COMMAND: run it on every host
  gcloud_tpu tpu-vm ssh "$NAME" --worker=all "--command=$1"
}

create() {
  local spot=()
  ((SPOT)) && spot=(--spot)
  if ((QUEUED)); then
    gcloud_tpu queued-resources create "$NAME" "--node-id=$NAME" "--accelerator-type=$ACCELERATOR_TYPE" \
      "--runtime-version=$VERSION" "${spot[@]}"
    wait_until_active
  else
    gcloud_tpu tpu-vm create "$NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$VERSION" "${spot[@]}"
  fi
}

# Prints the slice's state: READY/ACTIVE when usable, a transitional state, or MISSING.
slice_state() {
  local state
  if ((QUEUED)); then
    state=$(gcloud_tpu queued-resources describe "$NAME" '--format=value(state.state)' 2>/dev/null) || state=''
  else
    state=$(gcloud_tpu tpu-vm describe "$NAME" '--format=value(state)' 2>/dev/null) || state=''
  fi
  if [[ $DRY_RUN == 1 ]]; then
    echo "$state"  # the printed describe command
  else
    echo "${state:-MISSING}"
  fi
}

wait_until_active() {
  if [[ $DRY_RUN == 1 ]]; then
    slice_state
    echo "# dry run: repeat the describe above every ${POLL_S}s until the state is ACTIVE"
    return
  fi
  local state
  while state=$(slice_state) && [[ $state != ACTIVE ]]; do
    case $state in
      FAILED | SUSPENDED | MISSING)
        echo "queued resource $NAME is $state; delete it and create again" >&2
        return 1 ;;
    esac
    echo "queued resource $NAME: $state; waiting ${POLL_S}s" >&2
    sleep "$POLL_S"
  done
}

setup() {
  local fetch
  if [[ -n $REPO_URL ]]; then
    # Fetch the ref itself and check out what was fetched: on a host set up before, a plain fetch would
    # not move its local branch (nor HEAD), and the old code would run again. A short commit id cannot be
    # fetched by name: then fetch everything and check it out.
    local ref
    ref=$(quote_cmd "$REF")
    fetch="if [ ! -d $REMOTE_DIR/.git ]; then git clone --quiet $(quote_cmd "$REPO_URL") $REMOTE_DIR; fi && \
{ { git -C $REMOTE_DIR fetch --quiet origin $ref && git -C $REMOTE_DIR checkout --quiet --force FETCH_HEAD; } || \
{ git -C $REMOTE_DIR fetch --quiet origin && git -C $REMOTE_DIR checkout --quiet --force $ref; }; }"
  else
    run git archive --format=tar.gz "--output=$ARCHIVE" "$REF"
    gcloud_tpu tpu-vm scp "$ARCHIVE" "$NAME:$ARCHIVE" --worker=all
    fetch="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $ARCHIVE -C $REMOTE_DIR"
  fi
  ssh_all "$fetch && cd $REMOTE_DIR && python3 -m pip install --quiet --upgrade pip && \
python3 -m pip install --quiet -e '.[train,tpu]'"
}

stop() {
  ssh_all "if [ -f $PIDFILE ]; then kill \$(cat $PIDFILE) 2>/dev/null; rm -f $PIDFILE; fi; true"
}

# Runs the train command on every host at once (one ssh per host, log per host); fails if any host fails,
# and then stops the others.
train() {
  need_workdir
  local hosts remote worker pids=() failed=0
  hosts=$(num_hosts)
  remote="cd $REMOTE_DIR && echo \$\$ > $PIDFILE && exec python3 -m saxgpt_jax.train \
$(quote_cmd "--config=$CONFIG" "--workdir=$WORKDIR" "${TRAIN_ARGS[@]}")"
  run mkdir -p "$LOG_DIR"
  for ((worker = 0; worker < hosts; worker++)); do
    run_bg "$LOG_DIR/worker-$worker.log" gcloud compute tpus tpu-vm ssh "$NAME" "--worker=$worker" \
      "--command=$remote" "--zone=$ZONE" "${PROJECT_FLAGS[@]}"
    pids+=("$BG_PID")
  done
  if [[ $DRY_RUN == 1 ]]; then
    echo 'wait'
    return 0
  fi
  for _ in "${pids[@]}"; do
    if ! wait -n; then
      failed=1
      break
    fi
  done
  if ((failed)); then
    echo "a host failed; stopping the others (logs: $LOG_DIR)" >&2
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
    return 1
  fi
  echo "training finished on all $hosts hosts (logs: $LOG_DIR)" >&2
}

delete() {
  if ((QUEUED)); then
    gcloud_tpu queued-resources delete "$NAME" --force --quiet
  else
    gcloud_tpu tpu-vm delete "$NAME" --quiet
  fi
}

babysit() {
  need_workdir
  if [[ $DRY_RUN == 1 ]]; then
    echo '# babysit: check the slice'
    slice_state
    echo '# when the slice is preempted, failed or missing: delete (unless missing), recreate, set up'
    delete
    create
    setup
    echo '# then train (resumes from --workdir)'
    train
    echo "# dry run: babysit repeats this every ${POLL_S}s until training exits 0 or fails $MAX_FAILURES times on a healthy slice"
    return
  fi
  local state failures=0
  while :; do
    state=$(slice_state)
    case $state in
      READY | ACTIVE) ;;
      CREATING | STARTING | RESTARTING | REPAIRING | PROVISIONING | WAITING_FOR_RESOURCES | ACCEPTED | CREATING_*)
        echo "slice $NAME is $state; checking again in ${POLL_S}s" >&2
        sleep "$POLL_S"
        continue ;;
      *)
        echo "slice $NAME is $state: recreating it" >&2
        [[ $state == MISSING ]] || delete || true
        create || { sleep "$POLL_S"; continue; }
        setup || { sleep "$POLL_S"; continue; } ;;
    esac
    if train; then
      echo "babysit: training finished" >&2
      return 0
    fi
    state=$(slice_state)
    if [[ $state == READY || $state == ACTIVE ]]; then
      failures=$((failures + 1))
      stop || true
      ((failures < MAX_FAILURES)) || die "training failed $failures times on a healthy slice; see $LOG_DIR"
    fi
    echo "babysit: training stopped (slice $state); retrying in ${POLL_S}s" >&2
    sleep "$POLL_S"
  done
}

case $COMMAND in
  create) create ;;
  setup) setup ;;
  train) train ;;
  babysit) babysit ;;
  stop) stop ;;
  delete) delete ;;
  all) need_workdir; create; setup; train ;;
esac
