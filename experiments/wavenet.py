"""WaveNet — van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016 — on SC09 spoken digits.

The WaveNet paper reports no SC09 numbers; the SC09 numbers come from later papers that trained WaveNet as
their baseline, with a ResNeXt SC09 classifier for FID / IS / mIS / AM (Kong et al., "DiffWave: A Versatile
Diffusion Model for Audio Synthesis", ICLR 2021, Section 5.2-5.3; 1,000 generated samples for Table 2, 100 per
digit for Table 3):

  Table 2 (unconditional)   FID     IS     mIS    AM     NDB/K  MOS
    WaveNet-128             3.279   2.54   7.6    1.368  0.86   1.34 +- 0.29
    WaveNet-256             2.947   2.84   10.0   1.260  0.86   1.43 +- 0.30
    (DiffWave 1.287 / 5.30 / 59.4 / 0.636 / 0.74 / 3.39; test set 0.011 / 8.47 / 275.2 / 0.166 / 0.10 / 3.72)
  Table 3 (class-conditional)  accuracy  FID-class        IS     mIS    MOS
    WaveNet-128                56.20%    7.876 +- 2.469   3.29   15.8   1.46 +- 0.30
    WaveNet-256                60.70%    6.954 +- 2.114   3.46   18.9   1.58 +- 0.36

Their setting (DiffWave Section 5.2): 30-layer WaveNet (we read "30 layers" with the paper's remark that a
larger dilation cycle, up to 2048, was unstable, as 3 stacks of dilations 1..512), residual channels 128 or 256,
full 1-second utterances at 16 kHz, Adam with batch 16, learning rate 1e-3 halved every 200K iterations, 1M
steps; the conditional model adds the digit label (Table 3 uses the same hyper-parameters). Dilation (gate) and
skip channels are not stated; we use the residual width for the gate and 256 for the skip sum. Our schedule
halves the rate smoothly every 200K steps (optax exponential decay) rather than in steps.
The test-set NLL of WaveNet on SC09 (bits per sample, mu-law 8-bit) is reported by Goel et al., "It's Raw!
Audio Generation with State-Space Models" (SaShiMi, ICML 2022) for a 4.2M-parameter WaveNet: 1.925 according to
a secondary copy of that table (unverified; not checked against the paper), with a different architecture.

Presets:
  sc09 (default)       WaveNet-256, unconditional, SC09 from TFDS (speech_commands digits), DiffWave Table 2
  sc09_128             WaveNet-128, unconditional
  sc09_conditional     WaveNet-256 with the digit label, DiffWave Table 3
  cpu                  conditional, offline synthetic digits (spoken_digits: eSpeak NG voices, not SC09) at
                       8 kHz in 0.5-second clips, ONE stack of 10 layers of width 32 (receptive field 1,025
                       samples = 0.13 s) plus a learned position code (model.position_frames = 10: local
                       conditioning on (digit, where in the clip), NOT in the paper, see models/wavenet.py),
                       batch 8, Adam 3e-3 (not the paper's 1e-3: this small net trains much faster at it)
                       with cosine decay over 2,400 steps. 12 min 5 s for the whole training command on 2
                       CPU cores (2.9-3.9 steps/s on a slow day for this VM: its old 2,000-step preset ran
                       in 9 min 27 s the day before with a step 1.19x slower than today's)
Commands:
  python -m aigc_jax.main --config=experiments/wavenet.py --workdir=runs/wavenet_sc09
  python -m aigc_jax.main --config=experiments/wavenet.py:cpu --workdir=runs/wavenet_cpu
  python -m aigc_jax.main --config=experiments/wavenet.py:cpu --workdir=runs/wavenet_cpu --mode=sample \\
      --config.sample.label=7
  python -m aigc_jax.main --config=experiments/wavenet.py:cpu --workdir=runs/wavenet_cpu --mode=eval  # bits/sample
Measured (bench/RESULTS.md "WaveNet cpu preset: a position code", 2026-11-27, quiet 2-core Xeon, judge test
accuracy 85.3% on real clips): the `cpu` preset reaches 6.18 test bits per sample and class accuracy 0.52 /
0.40 (eval seeds 0 / 1, 100 clips each; per digit, both seeds pooled: 0.50 0.35 0.05 0.15 0.80 0.20 0.65 0.95
0.15 0.80: "two", "three", "five" and "eight" are mostly not recognised), FID 279 / 286. Without the position
code, same run otherwise: 0.34 / 0.31, FID 312 / 316, 6.15 bits (the old preset, 2 stacks, 500 steps: 0.08).
Two stacks with the code at equal compute (1,200 steps): 0.28; 20 frames: 0.42; classifier-free guidance
(label dropout 0.1) at scale 1 / 1.5 / 3 / 5: 0.37 / 0.48 / 0.25 / 0.28 (guidance on every sample's logits
collapses to two digits), so the preset has none; the mixture-of-logistics output
(`--config.model.output_distribution=logistic_mixture`): 0.40 / 0.35, FID 289 / 300, 6.28 bits. One training run
per setting. Rerun of the preset after the channel-major rewrite (session 9, /tmp/runs/wN): the same training
losses to 3 decimals, 6.175 test bits, class accuracy 0.41 (eval seed 0), FID 286. Rerun with hostmem.py
(session 10, /tmp/runs/wS): the same losses again, 9 min 27 s, class accuracy 0.41 / 0.40 (eval seeds 0 / 1),
FID 286 / 289: "most k" is still not met.
Learning rate (session 11, bench/RESULTS.md "WaveNet cpu: the learning rate", one training run each, eval seeds
0 / 1): 1e-3 x 3,000 steps 0.54 / 0.50 (FID 269 / 267, 6.10 bits); 3e-3 x 2,000 steps 0.55 / 0.66 (FID 239 /
231, 6.01 bits); **3e-3 x 2,400 steps = the preset: class accuracy 0.73 / 0.72, FID 217 / 224, IS 3.37 /
3.04, 5.985 test bits**; per digit, both seeds pooled: 0.85 0.75 0.30 0.70 1.00 0.65 0.95 1.00 0.45 0.60 (eight
of ten digits recognised as themselves at least half the time; "two" and "eight" are the misses).
"""
from aigc_jax.configs import lock
from aigc_jax.families import wavenet

PRESETS = ("sc09", "sc09_128", "sc09_conditional", "cpu")


def get_config(preset: str = "sc09"):
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; use one of {PRESETS}")
  c = wavenet.default_config()
  if preset == "cpu":
    c.batch_size = 8
    c.num_train_steps = 2400
    c.log_every_steps = 25
    c.checkpoint_every_steps = 600
    c.sample_every_steps = 1200
    c.data.name = "spoken_digits"
    c.host_memory = "keep"              # freed host memory reused: 1.5x steps/s (bench/RESULTS.md "Host memory")
    c.data.sample_rate = 8000
    c.data.clip_seconds = 0.5
    c.model.residual_channels = 32
    c.model.dilation_channels = 32
    c.model.skip_channels = 64
    c.model.layers_per_stack = 10
    c.model.stacks = 1
    c.model.num_classes = 10
    c.model.position_frames = 10
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.decay_steps = 2400
    c.optimizer.grad_clip_norm = 1.0
    c.sample.num = 10
    # The SC09 protocol (evaluation/audio_classifier.py: a log-mel classifier trained on spoken_digits' train
    # split) on 100 generated clips, 10 per digit, plus the test-split bits per sample.
    c.eval.metrics = ("eval_step", "fid", "is", "mis", "am", "class_accuracy")
    c.eval.num_samples = 100
    c.eval.batch_size = 50
    return lock(c)

  # DiffWave Section 5.2: 8 GPUs, batch 16, Adam 1e-3 halved every 200K iterations, 1M iterations.
  c.batch_size = 16
  c.num_train_steps = 1_000_000
  c.log_every_steps = 1000
  c.checkpoint_every_steps = 20_000
  c.sample_every_steps = 50_000
  c.data.name = "speech_commands"
  c.data.sample_rate = 16000
  c.data.clip_seconds = 1.0
  width = 128 if preset == "sc09_128" else 256
  c.model.residual_channels = width
  c.model.dilation_channels = width
  c.model.skip_channels = 256
  c.model.layers_per_stack = 10
  c.model.stacks = 3
  c.model.kernel_size = 2
  c.model.num_classes = 10 if preset == "sc09_conditional" else 0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "exponential"
  c.optimizer.decay_rate = 0.5 ** (1 / 200_000)
  c.optimizer.grad_clip_norm = 0.0
  c.sample.num = 10
  c.eval.num_samples = 1000       # DiffWave Table 2: 1,000 samples (Table 3: 100 per digit)
  return lock(c)
