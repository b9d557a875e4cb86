#!/usr/bin/env bash
# One lent GPU's measurements (issue "Speed", item 5; the 2-D paper-length runs of the GAN zoo), prepared so a
# session with a device spends its 15 minutes measuring, not debugging. Parts (times seen on one H200, 2026-11-27):
#   speed  (the second lease's first call, 412 s; give it timeout_s 570) bench/embed_lookup.py (the embedding
#          gradient's scatter-add vs one-hot), then GPT shakespeare_char tokens/s + MFU, ours (with and without
#          dropout) vs PyTorch eager and torch.compile (bench/text.py gpu), then the DDPM paper U-Net at batch 128
#          images/s + MFU vs its PyTorch twin, eager then compiled; bf16
#   train_short  (then, at once on the warm machine: 251 s; timeout_s 340) the full shakespeare_char run,
#          5,000 iterations, bf16, validation every 250 steps (243 s): nanoGPT's best validation loss is 1.4697
#   train  the same run plus a final `text.py val` on its last checkpoint
#   all    gpt_speed + gpt_train in one call (~7 min); then `unet` (~5 min): the first lease's plan
#   unet   the U-Net part of `speed` alone
#   gan2d  the four PacGAN Table 1 settings (ring, grid, GAN and PacGAN2) at the paper's 400,000 steps, seed 0,
#          1,000 steps per jitted call, the four runs side by side on the one GPU, then the table (not yet run:
#          4,000 steps took 107 s on 2 CPU cores, so a full run wants most of a lease)
#
# Prepare HERE (no network there; the image has jax, flax, optax, orbax, torch, tensorboard, scikit-learn, but
# no TensorFlow, TFDS, clu or ml-collections):
#   echo /.devcarry/ >> .git/info/exclude; mkdir -p .devcarry/whl
#   cp ../shared/data/tinyshakespeare.txt .devcarry/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .devcarry/whl ml-collections
# Then one device call per part (tool `run`): carry [".devcarry"], command "bash bench/gpu_session.sh speed",
#   then at once "bash bench/gpu_session.sh train_short" (logs come back under $OUT; 15 minutes hold both). Test a
#   changed part here first on CPU with tiny settings and TensorFlow blocked (a dir of stub packages that raise
#   ImportError, first on PYTHONPATH): a failed call costs a machine start.
set -uo pipefail
PART=${1:?usage: bash bench/gpu_session.sh all|unet|speed|train|train_short|gan2d}
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
CARRY=.devcarry
DATA=$CARRY/tinyshakespeare.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/xla_cache
LOG=$OUT/$PART.log
{ date -u; nvidia-smi -L; python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices(), '| torch', torch.__version__)"; } 2>&1 | tee "$LOG"

gpt_speed() {
  # The token table's lookup + gradient three ways (flax bf16 gather, float32 gather, one-hot): seconds.
  timeout 60 python3 bench/embed_lookup.py 2>&1 | tee -a "$LOG"
  timeout "${1:-240}" python3 bench/text.py gpu --preset=shakespeare_char --iters="${2:-200}" --dtype=bfloat16 \
      --profile-steps=5 --set data.name=text_file --set data.path="$DATA" --torch-data="$DATA" 2>&1 | tee -a "$LOG"
  # What the dropout costs us: the same step without any (no masks, cuDNN attention in training too).
  timeout 60 python3 bench/text.py gpu --preset=shakespeare_char --iters="${2:-200}" --dtype=bfloat16 \
      --set data.name=text_file --set data.path="$DATA" --set model.dropout=0.0 --set model.attention_dropout=0.0 \
      2>&1 | tee -a "$LOG"
}
unet_speed() {
  timeout "${1:-200}" python3 bench/train_step.py ddpm.py@128 --set dtype=bfloat16 --peak-tflops=auto --reference \
      --rounds=3 --json="$OUT/unet.json" 2>&1 | tee -a "$LOG"
  timeout "${2:-120}" python3 bench/torch_unet.py --config=ddpm.py --batch=128 --steps=30 --warmup=5 --device=cuda \
      --dtype=bfloat16 --compile 2>&1 | tail -2 | tee -a "$LOG"
}
gpt_train() {  # validation loss every 250 steps (100 windows of 64 x 256) as nanoGPT's log: its 1.4697 is the best
  start=$(date +%s)
  timeout "${1:-540}" python3 -m aigc_jax.main --config=experiments/gpt.py:shakespeare_char --workdir=/tmp/gpt_sc \
      --config.data.name=text_file --config.data.path="$DATA" --config.dtype=bfloat16 \
      --config.steps_per_dispatch=50 --config.sample_every_steps=0 --config.eval.every_steps=250 \
      --config.eval.text_batches=100 2>&1 | tee -a "$LOG" | grep -E "^step|^eval|first"
  echo "wall $(( $(date +%s) - start )) s (start-up and compiles included)" | tee -a "$LOG"
  [ "${2:-val}" = val ] || return 0
  timeout 60 python3 bench/text.py val --preset=shakespeare_char --workdir=/tmp/gpt_sc \
      --set data.name=text_file --set data.path="$DATA" 2>&1 | tail -1 | tee -a "$LOG"
}
part() { echo "== $1 at $(date -u +%T)" | tee -a "$LOG"; }

case $PART in
  all)  # GPT: speed (with and without dropout) + the run with its validation curve, ~7 minutes
    part gpt_speed; gpt_speed 140 100
    part gpt_train; gpt_train 285 noval
    part end
    ;;
  unet)  # the paper U-Net, ~5 minutes: what `all` leaves of a 15-minute lease
    part unet_speed; unet_speed 220 90
    part end
    ;;
  speed)  # GPT (ours with and without dropout, both torch twins with it) then the paper U-Net, ~8 minutes
    # (2026-11-27: 412 s with 90 s for the compiled U-Net twin, which did not finish compiling in them)
    part gpt_speed; gpt_speed 150 100
    part unet_speed; unet_speed 210 150
    part end
    ;;
  train)
    gpt_train
    ;;
  train_short)  # what is left of one lease after `all` or `speed`: the run with its validation curve
    part gpt_train; gpt_train 300 noval; part end
    ;;
  gan2d)
    # Four processes share the GPU (each run is far too small to fill it): no preallocation of its memory.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    for preset in ring ring_pac2 grid grid_pac2; do
      timeout 540 python3 bench/gan_2d.py run --root=/tmp/gan2d --presets=$preset --seeds=0 \
          -- --config.steps_per_dispatch=1000 > "$OUT/gan2d_$preset.txt" 2>&1 &
    done
    wait
    tail -n 3 /tmp/gan2d/*.log >> "$LOG"
    python3 bench/gan_2d.py table --root=/tmp/gan2d --presets=ring,ring_pac2,grid,grid_pac2 --seeds=0 \
        2>&1 | tee -a "$LOG"
    ;;
  *) echo "unknown part $PART: all | unet | speed | train | train_short | gan2d"; exit 2 ;;
esac
