#!/usr/bin/env bash
# Train every variant of the quality benchmark at the `bench` preset (32x32 px, 8 frames) for a
# fixed number of optimizer steps, for several training seeds, then run the benchmark over them.
#
# Fairness: within a seed every variant sees the same batches in the same order (the batch stream
# depends only on --seed and --batch) and every from-scratch variant takes the same number of
# optimizer steps; the fine-tunes (bridge + neural prior, SAF, plain fine-tune) take the same number
# of extra steps on top of the model they start from. Step counts, not minutes, so a busy machine
# changes the wall time only.
#
#   benchmarks/train_bench.sh                          # seeds 0 1 2, defaults below
#   SEEDS="0" STEPS=200 FINETUNE_STEPS=100 benchmarks/train_bench.sh
#   SKIP_TRAIN=1 benchmarks/train_bench.sh             # only the benchmark
#   SKIP_BENCH=1 benchmarks/train_bench.sh             # only the training
#   ARCH=1 benchmarks/train_bench.sh                   # also the linear-head (patch grid) variants, first seed
#
# Every run passes --resume: running the script again continues unfinished runs, and a finished run
# is only re-exported. Weights go to $RUNS/seed<S>/<variant>/; the benchmark writes $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
RUNS=${RUNS:-runs}
PRESET=${PRESET:-bench}
SEEDS=${SEEDS:-0 1 2}
THREADS=${THREADS:-1}            # torch threads per run
STEPS=${STEPS:-400}              # every from-scratch variant
FINETUNE_STEPS=${FINETUNE_STEPS:-200}   # every fine-tune, on top of its starting model
SOURCES=${SOURCES:-}             # image sources, e.g. "textures"; empty = all (skimage, sklearn, templates, textures)
NFE=${NFE:-10,25}
CLIPS=${CLIPS:-72}
OUT=${OUT:-benchmarks/RESULTS.md}
BENCH_ARGS=${BENCH_ARGS:-}       # more benchmark options, e.g. "--classifier-steps 1500"

train() {  # train <seed> <variant folder> <steps> <train options...>
  local seed=$1 name=$2 steps=$3
  shift 3
  "$PYTHON" -m framebridge_core train --preset "$PRESET" --steps "$steps" --seed "$seed" --threads "$THREADS" \
    ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/seed$seed/$name" --resume "$@"
}

if [ -z "${SKIP_TRAIN:-}" ]; then
  first=${SEEDS%% *}
  for s in $SEEDS; do
    d="$RUNS/seed$s"
    train "$s" bridge "$STEPS" --kind bridge                       # FrameBridge from the still image (official eps_psi output)
    train "$s" bridge-x0 "$STEPS" --kind bridge --bridge-output x0 # the same with the bundled models' x0 output
    train "$s" diffusion "$STEPS" --kind diffusion                 # noise to video, DDIM
    train "$s" neural-prior "$STEPS" --kind neural-prior           # the one-pass neural prior
    train "$s" bridge-np "$FINETUNE_STEPS" --kind bridge-np --bridge-output x0 \
      --init-from "$d/bridge-x0/model.safetensors" --neural-prior "$d/neural-prior/model.safetensors"
    train "$s" saf "$FINETUNE_STEPS" --kind saf --init-from "$d/diffusion/model.safetensors"
    train "$s" plain-finetune "$FINETUNE_STEPS" --kind plain-finetune --init-from "$d/diffusion/model.safetensors"
    if [ -n "${ARCH:-}" ] && [ "$s" = "$first" ]; then  # the official linear unpatchify, for the architecture table
      train "$s" bridge-x0-linear "$STEPS" --kind bridge --bridge-output x0 --head-width 0
      train "$s" neural-prior-linear "$STEPS" --kind neural-prior --head-width 0
    fi
  done
fi

# the benchmark (trains and caches $RUNS/motion-classifier.safetensors on first use)
[ -n "${SKIP_BENCH:-}" ] && exit 0
"$PYTHON" -m framebridge_core bench quality --runs "$RUNS" --nfe "$NFE" --clips "$CLIPS" \
  --threads "$THREADS" --out "$OUT" $BENCH_ARGS
