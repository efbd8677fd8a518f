#!/usr/bin/env bash
# Runs the preprocessing pipeline (python -m preprocessing) and then the TFDS build
# (python -m preprocessing.build_tfds) on Google Cloud Dataflow. See --help.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/_common.sh
source "$REPO_ROOT/launch/_common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/preprocess_dataflow.sh --project=P --region=R --temp_location=gs://B/tmp
           --output_dir=DIR --data_dir=DIR [FLAGS] [-- PREPROCESSING_ARGS...]

Steps (--stage picks them; default all):
  1. build the project's wheel (pip wheel --no-deps) and stage it to the workers (--extra_package); the
     workers pip install launch/requirements-dataflow.txt (the `preprocess` extra's pins, CPU torch)
  2. preprocess: python -m preprocessing --config=CONFIG --config.output_dir=OUTPUT_DIR
       --config.build_tfds=False PREPROCESSING_ARGS --beam_pipeline_options='--runner=DataflowRunner ...'
  3. tfds: python -m preprocessing.build_tfds --tokens_dir=OUTPUT_DIR --data_dir=DATA_DIR
       --beam_pipeline_options='--runner=DataflowRunner ...'

Flags (--flag=value):
  --project=P                    GCP project (required)
  --region=R                     Dataflow region, e.g. us-central1 (required)
  --temp_location=gs://B/tmp     Beam temp and staging location (required)
  --output_dir=DIR               token clips + manifest (required)
  --data_dir=DIR                 TFDS data_dir for saxgpt_tokens (required for the tfds stage)
                                 Both are written with local file APIs: use a path that this machine and
                                 every worker see alike (an NFS/Filestore or gcsfuse mount present in the
                                 worker container), not a gs:// URL.
  --config=configs/data/youtube.py  preprocessing config
  --job_name=saxgpt              Dataflow job name prefix (-preprocess / -tfds are appended)
  --machine_type=n1-highmem-8    worker machine type (Demucs + EnCodec on CPU want memory)
  --max_num_workers=16           autoscaling limit
  --sdk_container_image=         custom worker image (recommended: torch preinstalled, mounts in place)
  --requirements_file=launch/requirements-dataflow.txt
  --stage=all                    all | preprocess | tfds
  --python=PY                    interpreter with apache-beam[gcp] (default .venv/bin/python, else python3)
  --dry_run                      print the exact commands instead of running them
  --help                         this text
Everything after `--` goes to `python -m preprocessing`, e.g. -- --config.source.inputs=urls.txt

Example:
  launch/preprocess_dataflow.sh --project=my-proj --region=us-central1 --temp_location=gs://my-b/tmp \
      --output_dir=/mnt/shared/tokens --data_dir=/mnt/shared/tfds -- --config.source.inputs=urls.txt
USAGE
}

PROJECT=''
REGION=''
TEMP_LOCATION=''
OUTPUT_DIR=''
DATA_DIR=''
CONFIG=configs/data/youtube.py
JOB_NAME=saxgpt
MACHINE_TYPE=n1-highmem-8
MAX_NUM_WORKERS=16
SDK_CONTAINER_IMAGE=''
REQUIREMENTS_FILE=launch/requirements-dataflow.txt
STAGE=all
PYTHON=''
PREPROCESS_ARGS=()

while (($#)); do
  case $1 in
    --help | -h) usage; exit 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --project=*) PROJECT=$(flag_value "$1") ;;
    --region=*) REGION=$(flag_value "$1") ;;
    --temp_location=*) TEMP_LOCATION=$(flag_value "$1") ;;
    --output_dir=*) OUTPUT_DIR=$(flag_value "$1") ;;
    --data_dir=*) DATA_DIR=$(flag_value "$1") ;;
    --config=*) CONFIG=$(flag_value "$1") ;;
    --job_name=*) JOB_NAME=$(flag_value "$1") ;;
    --machine_type=*) MACHINE_TYPE=$(flag_value "$1") ;;
    --max_num_workers=*) MAX_NUM_WORKERS=$(flag_value "$1") ;;
    --sdk_container_image=*) SDK_CONTAINER_IMAGE=$(flag_value "$1") ;;
    --requirements_file=*) REQUIREMENTS_FILE=$(flag_value "$1") ;;
    --stage=*) STAGE=$(flag_value "$1") ;;
    --python=*) PYTHON=$(flag_value "$1") ;;
    --) shift; PREPROCESS_ARGS=("$@"); break ;;
    *) unknown_argument "$1" 'flags are --flag=value; see --help; arguments for python -m preprocessing go after --' ;;
  esac
  shift
done

[[ -n $PROJECT ]] || die 'give --project=GCP_PROJECT'
[[ -n $REGION ]] || die 'give --region=REGION (e.g. us-central1)'
[[ $TEMP_LOCATION == gs://?* ]] || die "give --temp_location=gs://BUCKET/tmp (got '$TEMP_LOCATION')"
[[ $STAGE == all || $STAGE == preprocess || $STAGE == tfds ]] || die "--stage=$STAGE: use all, preprocess or tfds"
[[ -n $OUTPUT_DIR ]] || die 'give --output_dir=DIR for the token clips (a path every worker sees)'
[[ $STAGE == preprocess || -n $DATA_DIR ]] || die 'give --data_dir=DIR for the TFDS dataset'
for dir in "$OUTPUT_DIR" "$DATA_DIR"; do
  [[ $dir != gs://* ]] || die "$dir: the pipeline writes with local file APIs; give a shared mount path, not gs://"
done
[[ $JOB_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--job_name=$JOB_NAME: use lowercase letters, digits, dashes"
[[ $MAX_NUM_WORKERS =~ ^[1-9][0-9]*$ ]] || die "--max_num_workers=$MAX_NUM_WORKERS is not a positive number"
cd "$REPO_ROOT"
[[ -f $REQUIREMENTS_FILE ]] || die "--requirements_file=$REQUIREMENTS_FILE does not exist"
[[ -f $CONFIG ]] || die "--config=$CONFIG does not exist"
if [[ -z $PYTHON ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
[[ -n $VERSION ]] || die 'cannot read the version from pyproject.toml'
WHEEL_DIR=${TMPDIR:-/tmp}/saxgpt-jax-dataflow-wheel
WHEEL=$WHEEL_DIR/saxgpt_jax-$VERSION-py3-none-any.whl

# beam_options JOB_SUFFIX: the Dataflow pipeline flags, space separated (as both entry points read them).
beam_options() {
  local options=(--runner=DataflowRunner "--project=$PROJECT" "--region=$REGION"
    "--temp_location=$TEMP_LOCATION" "--job_name=$JOB_NAME-$1"
    "--requirements_file=$REQUIREMENTS_FILE" --requirements_cache=skip "--extra_package=$WHEEL"
    "--machine_type=$MACHINE_TYPE" "--max_num_workers=$MAX_NUM_WORKERS")
  [[ -z $SDK_CONTAINER_IMAGE ]] || options+=("--sdk_container_image=$SDK_CONTAINER_IMAGE")
  quote_cmd "${options[@]}"
}

if [[ $DRY_RUN != 1 ]]; then
  # The same check as `python -m preprocessing` makes (preprocessing/beam_runners.py), before the wheel.
  missing=$("$PYTHON" -c 'from apache_beam.options.pipeline_options import PipelineOptions
from preprocessing import beam_runners
print(beam_runners.missing_extras(PipelineOptions(["--runner=DataflowRunner"])) or "")' 2>/dev/null) ||
    die "$PYTHON cannot import Apache Beam and this project: pip install -e '.[preprocess]' 'apache-beam[gcp]'"
  [[ -z $missing ]] || die "$PYTHON: $missing"
fi
run rm -rf "$WHEEL_DIR"
run "$PYTHON" -m pip wheel --no-deps --quiet "--wheel-dir=$WHEEL_DIR" .
if [[ $DRY_RUN != 1 && ! -f $WHEEL ]]; then
  die "pip wheel did not write $WHEEL"
fi
if [[ $STAGE != tfds ]]; then
  status=0
  run "$PYTHON" -m preprocessing "--config=$CONFIG" "--config.output_dir=$OUTPUT_DIR" --config.build_tfds=False \
    "${PREPROCESS_ARGS[@]}" "--beam_pipeline_options=$(beam_options preprocess)" || status=$?
  if ((status == 1)); then  # some inputs failed; the rest are in the manifest
    echo "warning: some inputs failed (see $OUTPUT_DIR/failures.jsonl); building TFDS from the others" >&2
  elif ((status)); then
    exit "$status"
  fi
fi
if [[ $STAGE != preprocess ]]; then
  run "$PYTHON" -m preprocessing.build_tfds "--tokens_dir=$OUTPUT_DIR" "--data_dir=$DATA_DIR" \
    "--beam_pipeline_options=$(beam_options tfds)"
fi
