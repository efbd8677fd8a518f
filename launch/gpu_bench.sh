#!/usr/bin/env bash
# The GPU benchmarks of BENCHMARKS.md on this machine's first GPU, in one command (see --help).
#   bash launch/gpu_bench.sh [--out=DIR] [--only=train,decode,flash] [--wheels=DIR] [--quick] [--dry_run]
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/_common.sh
source "$REPO_ROOT/launch/_common.sh"

usage() {
  cat <<'USAGE'
Usage: bash launch/gpu_bench.sh [FLAGS]

Runs the GPU benchmarks of BENCHMARKS.md on one GPU, from the repository (nothing is installed unless
--wheels says so; the interpreter must already have JAX for the GPU, flax, optax, orbax and absl):
  train   configs/xlarge.py, bfloat16, batch 16 x 1500 frames: step time and MFU (target >= 40%)
  decode  configs/large.py, bfloat16, batch 1, 1 x 16 and 16, 300 steps, and a 30 s solo:
          ms per step (target <= 0.3 ms at batch 1) and real-time factor
  flash   the cuDNN flash-attention and written-out-gradient tests (pytest, JAX_PLATFORMS=cuda)
Each benchmark prints its table here and appends its JSON line to OUT/bench.jsonl; logs go to
OUT/<part>.log and the compile cache to OUT/jax_cache, so a rerun on the same machine compiles less. A
failed part is reported and the others still run; the exit status is then 1.

Flags (--flag=value):
  --out=runs/gpu_bench      output folder
  --only=train,decode,flash the parts to run, in this order
  --python=PY               interpreter (default .venv/bin/python if present, else python3)
  --wheels=DIR              first pip install --no-deps every wheel in DIR: for a machine that cannot reach
                            a package index, carry the wheels its image lacks (ml-collections is the usual
                            one: pip download --no-deps ml-collections==1.1.0 -d DIR)
  --quick                   tiny configs and a few steps on any backend: checks the set-up in a minute
  --dry_run                 print the commands instead of running them
  --help                    this text

Examples:
  bash launch/gpu_bench.sh --out=runs/h100
  bash launch/gpu_bench.sh --only=decode --quick
USAGE
}

OUT=runs/gpu_bench
ONLY=train,decode,flash
PYTHON=''
WHEELS=''
QUICK=0

while (($#)); do
  case $1 in
    --help | -h) usage; exit 0 ;;
    --dry_run) DRY_RUN=1 ;;
    --quick) QUICK=1 ;;
    --out=*) OUT=$(flag_value "$1") ;;
    --only=*) ONLY=$(flag_value "$1") ;;
    --python=*) PYTHON=$(flag_value "$1") ;;
    --wheels=*) WHEELS=$(flag_value "$1") ;;
    *) unknown_argument "$1" 'flags are --flag=value; see --help' ;;
  esac
  shift
done

IFS=, read -r -a PARTS <<<"$ONLY"
((${#PARTS[@]})) || die '--only is empty: name one or more of train,decode,flash'
for part in "${PARTS[@]}"; do
  [[ $part == train || $part == decode || $part == flash ]] || die "--only: unknown part '$part' (use train, decode, flash)"
done
if [[ -n $WHEELS ]]; then
  compgen -G "$WHEELS/*.whl" >/dev/null || die "--wheels=$WHEELS holds no .whl files"
fi
if [[ -z $PYTHON ]]; then
  if [[ -x $REPO_ROOT/.venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
cd "$REPO_ROOT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the repository's code, installed or not
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}
if [[ $DRY_RUN == 1 ]]; then  # so that the printed commands run by hand as they would here
  echo "cd $(quote_cmd "$REPO_ROOT")"
  echo "export PYTHONPATH=$(quote_cmd "$PYTHONPATH") JAX_COMPILATION_CACHE_DIR=$(quote_cmd "$JAX_COMPILATION_CACHE_DIR")"
fi

if ((QUICK)); then
  TRAIN=(--config=configs/tiny.py --batch=2 --frames=16 --steps=2 --warmup=1)
  DECODE=(--config=configs/tiny.py '--batch=1,1x2' --steps=20 --rtf_frames=16 --repeats=1 --warmup=0)
  FLASH_ENV=()  # on a CPU the flash tests skip themselves
else
  TRAIN=(--config=configs/xlarge.py --dtype=bfloat16 --batch=16 --frames=1500 --steps=5 --warmup=2)
  DECODE=(--config=configs/large.py --dtype=bfloat16 '--batch=1,1x16,16' --steps=300 --repeats=3 --rtf_frames=1500)
  FLASH_ENV=(JAX_PLATFORMS=cuda)
fi

FAILED=()
# part NAME CMD...: runs one part with its stdout shown and kept in OUT/NAME.txt and its stderr in
# OUT/NAME.log (with --dry_run: prints the command and its redirections).
part() {
  local name=$1
  shift
  if [[ $DRY_RUN == 1 ]]; then
    echo "$(quote_cmd "$@") 2>$(quote_cmd "$OUT/$name.log") | tee $(quote_cmd "$OUT/$name.txt")"
    return
  fi
  echo "+ $(quote_cmd "$@") 2>$OUT/$name.log | tee $OUT/$name.txt" >&2
  if ! "$@" 2>"$OUT/$name.log" | tee "$OUT/$name.txt"; then
    echo "error: $name failed; the end of $OUT/$name.log:" >&2
    tail -n 20 "$OUT/$name.log" >&2
    FAILED+=("$name")
  fi
}

run mkdir -p "$OUT"
if [[ -n $WHEELS ]]; then
  run "$PYTHON" -m pip install --quiet --no-deps --no-index "$WHEELS"/*.whl
fi
# What runs here; without --quick, stop unless JAX sees a GPU.
CHECK='import sys, jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())'
((QUICK)) || CHECK+='; sys.exit(0 if jax.default_backend() == "gpu" else "no GPU visible to JAX: use --quick, or install JAX for the GPU")'
part setup "$PYTHON" -c "$CHECK"
if ((${#FAILED[@]})); then
  die "the set-up check failed (see above); nothing was benchmarked"
fi
BENCH=("$PYTHON" -m saxgpt_jax.bench)
for name in "${PARTS[@]}"; do
  case $name in
    train) part train "${BENCH[@]}" train "${TRAIN[@]}" "--json_file=$OUT/bench.jsonl" ;;
    decode) part decode "${BENCH[@]}" decode "${DECODE[@]}" "--json_file=$OUT/bench.jsonl" ;;
    flash) part flash env "${FLASH_ENV[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/saxgpt_jax/test_model.py \
      -k 'flash or written_out or bfloat16 or attention_impl' ;;
  esac
done
if [[ $DRY_RUN != 1 ]]; then
  if ((${#FAILED[@]})); then
    echo "error: ${FAILED[*]} failed; JSON lines of the rest in $OUT/bench.jsonl" >&2
    exit 1
  fi
  if [[ -f $OUT/bench.jsonl ]]; then
    echo "done: JSON lines in $OUT/bench.jsonl, tables in $OUT/*.txt, logs in $OUT/*.log" >&2
  else
    echo "done: logs in $OUT/*.log" >&2
  fi
fi
