#!/usr/bin/env bash
# One lent GPU's measurements (issue "Speed", item 5; the 2-D paper-length runs of the GAN zoo), prepared so a
# session with a device spends its 15 minutes measuring, not debugging. Parts, each well under 10 minutes on one
# H100/H200 (estimates; the first session with a device records the real ones in bench/RESULTS.md):
#   speed  GPT shakespeare_char tokens/s + MFU, ours vs PyTorch eager and torch.compile (bench/text.py gpu);
#          the DDPM paper U-Net at batch 128 images/s + MFU vs its PyTorch twin, eager then compiled; bf16
#   train  the full shakespeare_char run (5,000 iterations, bf16): validation loss and wall (nanoGPT: 1.4697,
#          ~3 min on one A100)
#   gan2d  the four PacGAN Table 1 settings (ring, grid, GAN and PacGAN2) at the paper's 400,000 steps, seed 0,
#          1,000 steps per jitted call, the four runs side by side on the one GPU, then the table
#
# Prepare HERE (no network there; the image has jax, flax, optax, orbax, torch, tensorboard, scikit-learn, but
# no TensorFlow, TFDS, clu or ml-collections):
#   echo /.devcarry/ >> .git/info/exclude; mkdir -p .devcarry/whl
#   cp ../shared/data/tinyshakespeare.txt .devcarry/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .devcarry/whl ml-collections
# Then one device call per part (tool `run`): carry [".devcarry"], timeout_s 570,
#   command "bash bench/gpu_session.sh speed"      (then train, gan2d; logs come back under $OUT)
set -uo pipefail
PART=${1:?usage: bash bench/gpu_session.sh speed|train|gan2d}
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
CARRY=.devcarry
DATA=$CARRY/tinyshakespeare.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/xla_cache
LOG=$OUT/$PART.log
{ date -u; nvidia-smi -L; python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"; } 2>&1 | tee "$LOG"

case $PART in
  speed)
    timeout 240 python3 bench/text.py gpu --preset=shakespeare_char --iters=200 --dtype=bfloat16 \
        --set data.name=text_file --set data.path="$DATA" --torch-data="$DATA" 2>&1 | tee -a "$LOG"
    timeout 200 python3 bench/train_step.py ddpm.py@128 --set dtype=bfloat16 --peak-tflops=auto --reference \
        --rounds=3 --json="$OUT/unet.json" 2>&1 | tee -a "$LOG"
    timeout 120 python3 bench/torch_unet.py --config=ddpm.py --batch=128 --steps=30 --warmup=5 --device=cuda \
        --dtype=bfloat16 --compile 2>&1 | tail -2 | tee -a "$LOG"
    ;;
  train)
    start=$(date +%s)
    timeout 540 python3 -m aigc_jax.main --config=experiments/gpt.py:shakespeare_char --workdir=/tmp/gpt_sc \
        --config.data.name=text_file --config.data.path="$DATA" --config.dtype=bfloat16 \
        --config.steps_per_dispatch=50 --config.sample_every_steps=0 2>&1 | tee -a "$LOG" | grep -E "^step|first"
    echo "wall $(( $(date +%s) - start )) s (start-up and compiles included)" | tee -a "$LOG"
    timeout 60 python3 bench/text.py val --preset=shakespeare_char --workdir=/tmp/gpt_sc \
        --set data.name=text_file --set data.path="$DATA" 2>&1 | tail -1 | tee -a "$LOG"
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
  *) echo "unknown part $PART: speed | train | gan2d"; exit 2 ;;
esac
