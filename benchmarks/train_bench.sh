#!/usr/bin/env bash
# Train every variant of the quality benchmark at the `bench` preset (32x32 px, 8 frames), one
# after the other, then run the benchmark. Budgets are wall-clock minutes per variant; every run
# passes --resume, so running the script again continues each run up to its (possibly raised)
# budget instead of starting over, and a finished run is only re-exported.
#
#   benchmarks/train_bench.sh                      # defaults below, from the repository root or anywhere
#   THREADS=2 BRIDGE_MIN=10 DIFFUSION_MIN=10 benchmarks/train_bench.sh
#   SKIP_TRAIN=1 benchmarks/train_bench.sh         # only the benchmark
#
# Model weights go to $RUNS/<variant>/ (state.pt, model.safetensors, loss.csv); the benchmark
# writes $OUT (benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
RUNS=${RUNS:-runs}
PRESET=${PRESET:-bench}
SEED=${SEED:-0}
THREADS=${THREADS:-0}          # torch threads; 0 = torch's default
STEPS=${STEPS:-100000}         # default step cap of every variant (high: the minute budgets decide)
# equal step counts make "the same budget" exact for bridge vs diffusion even on a busy machine
BRIDGE_STEPS=${BRIDGE_STEPS:-$STEPS}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-$STEPS}
NEURAL_PRIOR_STEPS=${NEURAL_PRIOR_STEPS:-$STEPS}
BRIDGE_NP_STEPS=${BRIDGE_NP_STEPS:-$STEPS}
SAF_STEPS=${SAF_STEPS:-$STEPS}
PLAIN_FINETUNE_STEPS=${PLAIN_FINETUNE_STEPS:-$STEPS}
BRIDGE_X0_STEPS=${BRIDGE_X0_STEPS:-$BRIDGE_STEPS}
SOURCES=${SOURCES:-}           # image sources, e.g. "textures"; empty = all (skimage, sklearn, templates, textures)

BRIDGE_MIN=${BRIDGE_MIN:-7}
DIFFUSION_MIN=${DIFFUSION_MIN:-7}
NEURAL_PRIOR_MIN=${NEURAL_PRIOR_MIN:-4}
BRIDGE_NP_MIN=${BRIDGE_NP_MIN:-4}        # on top of the bridge it starts from
SAF_MIN=${SAF_MIN:-3}                    # on top of the diffusion model it starts from
PLAIN_FINETUNE_MIN=${PLAIN_FINETUNE_MIN:-3}
BRIDGE_X0_MIN=${BRIDGE_X0_MIN:-$BRIDGE_MIN}   # the bridge with the bundled models' x0 output

NFE=${NFE:-5,10,25,50}
CLIPS=${CLIPS:-144}
OUT=${OUT:-benchmarks/RESULTS.md}
BENCH_ARGS=${BENCH_ARGS:-}     # more benchmark options, e.g. "--classifier-steps 1500"

if [ -z "${SKIP_TRAIN:-}" ]; then
  # 1. FrameBridge from scratch
  "$PYTHON" -m framebridge_core train --kind bridge --preset "$PRESET" --minutes "$BRIDGE_MIN" --steps "$BRIDGE_STEPS" \
    --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/bridge" --resume
  # 2. the diffusion counterpart (noise to video, DDIM)
  "$PYTHON" -m framebridge_core train --kind diffusion --preset "$PRESET" --minutes "$DIFFUSION_MIN" --steps "$DIFFUSION_STEPS" \
    --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/diffusion" --resume
  # 3. the one-pass neural prior
  "$PYTHON" -m framebridge_core train --kind neural-prior --preset "$PRESET" --minutes "$NEURAL_PRIOR_MIN" --steps "$NEURAL_PRIOR_STEPS" \
    --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/neural-prior" --resume
  # 4. FrameBridge + neural prior, warm-started from the bridge
  "$PYTHON" -m framebridge_core train --kind bridge-np --preset "$PRESET" --minutes "$BRIDGE_NP_MIN" --steps "$BRIDGE_NP_STEPS" \
    --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/bridge-np" --resume \
    --init-from "$RUNS/bridge/model.safetensors" --neural-prior "$RUNS/neural-prior/model.safetensors"
  # 5. SAF: the diffusion model fine-tuned into a bridge with SNR alignment
  "$PYTHON" -m framebridge_core train --kind saf --preset "$PRESET" --minutes "$SAF_MIN" --steps "$SAF_STEPS" \
    --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/saf" --resume \
    --init-from "$RUNS/diffusion/model.safetensors"
  # 6. the same fine-tuning without alignment
  "$PYTHON" -m framebridge_core train --kind plain-finetune --preset "$PRESET" --minutes "$PLAIN_FINETUNE_MIN" --steps "$PLAIN_FINETUNE_STEPS" \
    --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/plain-finetune" --resume \
    --init-from "$RUNS/diffusion/model.safetensors"
  # 7. FrameBridge from scratch with the x0 output of the bundled tiny models
  "$PYTHON" -m framebridge_core train --kind bridge --bridge-output x0 --preset "$PRESET" --minutes "$BRIDGE_X0_MIN" \
    --steps "$BRIDGE_X0_STEPS" --seed "$SEED" --threads "$THREADS" ${SOURCES:+--sources "$SOURCES"} --out "$RUNS/bridge-x0" --resume
fi

# the benchmark (trains and caches $RUNS/motion-classifier.safetensors on first use)
"$PYTHON" -m framebridge_core bench quality --runs "$RUNS" --nfe "$NFE" --clips "$CLIPS" --seed "$SEED" \
  --threads "$THREADS" --out "$OUT" $BENCH_ARGS
