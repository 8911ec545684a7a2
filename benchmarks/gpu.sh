#!/usr/bin/env bash
# The GPU measurements of issues 4 and 6 in one call of a lent accelerator machine, each under its own
# time limit so that one slow compilation cannot take the others' time; most important first. Every
# phase prints a timestamped line as it ends (the first call, 2026-11-29, had none and every run timed
# out without saying where: see vrn_jax/host_memory.py).
#   OUT=DIR bash benchmarks/gpu.sh      (repo root; python3 with JAX, flax, optax, ml_collections, torch)
# Writes DIR/log.txt (everything printed), DIR/train_run.jsonl (benchmarks/train_run.py, one line per
# config) and DIR/training.json (benchmarks/run.py --only training, if it finishes in the time left).
# DRY=1: the same sequence at a tiny size (a CPU check of the script itself, a few minutes).
#
# Autotuning (BENCHMARKS.md, "Paper-size training on an H200"). Measured 2026-11-30 with JAX 0.11.2:
# `--xla_gpu_autotune_level=1` (no buffer initialisation or correctness checks) compiled configs/vrn.py
# in 22-41 s and gave the figures; level 0 (no autotuning) made steps over 100x slower; with the default
# (level 4) the compilation had not finished when its time ran out. So the measured rows use level 1, and
# the tiny config first runs with the default, to show the stack works before the big compilations.
set -u
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}  # seconds for the whole script
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
log=$OUT/log.txt

step() {  # step SECONDS ARGS...: runs "$PY ARGS..." for at most SECONDS (less if the budget is short)
  local left=$((BUDGET - SECONDS - 5)) limit=$1
  shift
  ((left < limit)) && limit=$left
  if ((limit < 30)); then echo "## skipped (budget spent): $*" | tee -a "$log"; return; fi
  echo "## XLA_FLAGS=${XLA_FLAGS:-} $* (limit ${limit} s, at ${SECONDS} s)" | tee -a "$log"
  timeout "$limit" "$PY" "$@" 2>&1 | grep -v -e "^WARNING: All log messages" -e "^I0000" | tee -a "$log"
  echo "## exit ${PIPESTATUS[0]} at ${SECONDS} s" | tee -a "$log"
}

{ uname -r; nproc; } 2>&1 | tr '\n' ' ' | tee -a "$log"; echo | tee -a "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$log"
"$PY" -c "import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version.split()[0], 'jax', jax.__version__,
  'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$log"

run=benchmarks/train_run.py
size=() tiny=()
if [[ ${DRY:-0} == 1 ]]; then
  size=(--config.model.features=8 --config.model.depth=2 --batch=2 --steps=4 --chunk=2 --distinct=2)
  tiny=(--tiny)
fi
# First a tiny config (seconds when all is well) with XLA's default autotuning.
step 60 $run --config=configs/default.py:test --steps=20 --chunk=10 --batch=4 --distinct=2
export XLA_FLAGS=--xla_gpu_autotune_level=1
step 110 $run --config=configs/vrn.py --dtype=bfloat16 --steps=300 --chunk=25 --json="$OUT/train_run.jsonl" "${size[@]}"
step 90 $run --config=configs/vrn.py --dtype=float32 --steps=300 --chunk=25 --json="$OUT/train_run.jsonl" "${size[@]}"
step 100 $run --config=configs/vrn_multitask.py --dtype=bfloat16 --steps=200 --json="$OUT/train_run.jsonl" "${size[@]}"
step 100 $run --config=configs/vrn_guided.py --dtype=bfloat16 --steps=200 --json="$OUT/train_run.jsonl" "${size[@]}"
# Side by side with PyTorch (issue 6): prints each variant as measured, the table only at the end.
step 600 benchmarks/run.py --only training --json="$OUT/training.json" "${tiny[@]}"
