"""DiffWave — Kong, Ping, Huang, Zhao & Catanzaro, "DiffWave: A Versatile Diffusion Model for Audio Synthesis",
ICLR 2021 (arXiv 2009.09761v3), through the diffusion family with model.arch=diffwave.

Paper setting for SC09 (Section 5.2; Section 5.3 uses "the same dataset, model hyperparameters, and training
settings" with the digit label as a global conditioner): the ten digits of Speech Commands, 16 kHz, 1-second
clips (L = 16,000; 31,158 training utterances); a 36-layer DiffWave, kernel 3, dilation cycle [1, 2, ..., 2048],
residual channels C = 256; T = 200 with betas linear in [1e-4, 0.02]; the unweighted eps loss (their eq. 7);
Adam, batch 16, learning rate fixed at 2e-4, 1M steps, no EMA mentioned; sampling with all T steps,
sigma_t^2 = beta~_t (eq. 5: 'fixedsmall'), no clipping of the predicted x0 (eq. 5 has none). Label
conditioning (Section 3.2): a shared 128-d label embedding, a layer-specific Conv1x1 to 2C channels, added
after each dilated convolution. The fast sampler (Appendix B) is the family's sample.sampler=fast with
T_infer = 6 on the betas {0.0001, 0.001, 0.01, 0.05, 0.2, 0.7} the paper uses for its T = 200 vocoder (it
reports fast sampling for vocoding only, not on SC09).

Reported (1,000 samples, metrics on a ResNeXT SC09 classifier's 1024-d features and 10-way logits):
  Table 2, unconditional: DiffWave FID 1.287, IS 5.30, mIS 59.4, AM 0.636, NDB/K 0.74, MOS 3.39 +- 0.32
      (WaveNet-256: FID 2.947, IS 2.84; WaveGAN: FID 1.349, IS 4.53; test set: FID 0.011, IS 8.47).
  Table 3, class-conditional (100 samples per digit): DiffWave accuracy 91.20%, FID-class 1.113 +- 0.569,
      IS 6.63, mIS 117.4, MOS 3.50 +- 0.31 (WaveNet-256: 60.70%, FID-class 6.954, IS 3.46).
Our metric names for that protocol (eval.metrics) come from the project's audio evaluators; the classifier
is the project's own log-mel SC09 classifier, not the paper's ResNeXT, so the numbers are comparable in kind,
not digit for digit.

  python -m aigc_jax.main --config=experiments/diffwave.py --workdir=runs/diffwave_sc09              # Table 2
  python -m aigc_jax.main --config=experiments/diffwave.py:conditional --workdir=runs/diffwave_sc09_cond
  python -m aigc_jax.main --config=experiments/diffwave.py:conditional --workdir=runs/diffwave_sc09_cond \\
      --mode=sample --config.sample.label=7                                                     # one digit
  python -m aigc_jax.main --config=experiments/diffwave.py --workdir=runs/diffwave_sc09 --mode=sample \\
      --config.sample.sampler=fast                                                              # T_infer = 6
  python -m aigc_jax.main --config=experiments/diffwave.py:cpu --workdir=runs/diffwave_cpu          # 2 CPU cores
Presets: paper (default: unconditional SC09); conditional (Table 3's class-conditional model); cpu
(class-conditional on the offline synthetic `spoken_digits` at 8 kHz, 0.5 s clips (the loudest half second of
each word, as `wavenet.py:cpu`); not the paper's recipe, see the comments there: patches of 8 samples, C = 64,
20 layers, v prediction on data x 10, cosine schedule, batch 16, 1,200 steps, guided DDIM). Measured on 2 CPU
cores (2026-11-27, bench/RESULTS.md "DiffWave cpu preset"): ~1.8 steps/s, 11 minutes of training (12m50s for
the whole command, the final 100 samples included); with host_memory = "keep" (session 10, "Host memory"):
2.3-2.9 steps/s, 9 min 9 s for the whole command, and the same 0.70 / FID 253 / IS 4.15 as below. Class accuracy of 100 samples by the project's judge
(85% on real test clips of the same form): 0.70 (per digit 0.9 0.0 1.0 1.0 1.0 0.0 1.0 1.0 1.0 0.1: "one" and
"five" are heard as "four", "nine" as "five"), FID 253 on the judge's features, IS 4.15 (real test clips:
FID 31, IS 7.44); guidance 3 / 4 instead of 6:
0.71 / 0.70, FID 237 / 234. With 1 s clips (the preset until 2026-11-27, twice the compute: ~18 minutes on the
current step): 0.82 (per digit 1.0 0.7 0.9 1.0 1.0 0.3 1.0 0.8 0.9 0.6), FID 249; 600 steps, guidance 4: 0.46.
One training run each. The old preset (C = 32 on raw samples, eps, T = 200 linear, 450 steps, fast sampler,
guidance 2) scored 0.20, FID 504.
"""
from aigc_jax.configs import lock
from aigc_jax.families import diffusion
from aigc_jax.families.diffusion_lib import samplers

NUM_CPU_STEPS = 1200


def get_config(preset: str = "paper"):
  c = diffusion.default_config()
  c.batch_size = 16
  c.num_train_steps = 1_000_000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 50_000

  c.data.name = "speech_commands"   # SC09: the digits "zero".."nine"
  c.data.sample_rate = 16000
  c.data.clip_seconds = 1.0

  c.model.arch = "diffwave"
  c.model.residual_channels = 256
  c.model.residual_layers = 36
  c.model.dilation_cycle = 12       # dilations 1, 2, ..., 2048, three times
  c.model.num_classes = 0

  c.diffusion.num_timesteps = 200
  c.diffusion.schedule = "linear"
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.prediction = "eps"
  c.diffusion.loss_weighting = "simple"
  c.diffusion.variance = "fixedsmall"   # sigma_t^2 = beta~_t (eq. 5)
  c.diffusion.clip_denoised = False     # eq. 5 does not clip

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 0

  c.sample.sampler = "ddpm"             # Algorithm 2, all T = 200 steps
  c.sample.steps = 0
  c.sample.fast_schedule = samplers.FAST_SCHEDULE_T200  # for --config.sample.sampler=fast (Appendix B)
  c.sample.use_ema = False              # the paper samples its trained weights
  c.sample.num = 16

  c.eval.num_samples = 1000             # Section 5.2: 1,000 samples; 5.3: 100 per digit
  c.eval.metrics = ("fid", "is", "mis", "am")  # the SC09 protocol (evaluation/audio_classifier.py)

  if preset == "paper":
    pass
  elif preset == "conditional":
    c.model.num_classes = 10
    c.eval.metrics = ("fid", "is", "mis", "am", "class_accuracy")
    c.sample.num = 100                  # a 10x10 grid of spectrograms, row r = digit r
  elif preset == "cpu":
    # Not the paper's recipe: four changes that let a DiffWave learn spoken digits in minutes on 2 CPU cores
    # (bench/RESULTS.md, "DiffWave cpu preset", 2026-11-27, has each one's effect):
    #  - patches of 8 samples (model.patch_size): the layers run at 1 kHz, so C = 64 and a receptive field of
    #    4,093 frames (the whole clip, several times) cost what C = 32 at 8 kHz did;
    #  - data_scale 10 (speech here has std ~0.07) with v prediction: the paper's eps network at this scale gave
    #    x0 estimates worse than predicting silence for t >= 40 of 200, so sampling started from junk;
    #  - the cosine schedule (ends at pure noise; the T = 200 linear one keeps sqrt(abar_T) = 0.36 of s x);
    #  - guidance 6 with DDIM, 25 steps (the fast sampler's betas do not fit the cosine chain).
    c.data.name = "spoken_digits"       # offline synthetic speech (eSpeak NG), not SC09
    c.host_memory = "keep"              # freed host memory reused: 1.2-1.3x steps/s (bench/RESULTS.md "Host memory")
    c.data.sample_rate = 8000
    c.data.clip_seconds = 0.5           # the word's loudest half second: half the compute of 1 s clips
    c.batch_size = 16
    c.num_train_steps = NUM_CPU_STEPS
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.sample_every_steps = NUM_CPU_STEPS  # once, at the end
    c.model.residual_channels = 64
    c.model.residual_layers = 20
    c.model.dilation_cycle = 10         # frame dilations 1 .. 512, twice
    c.model.patch_size = 8
    c.model.num_classes = 10
    c.model.ema_decay = 0.999
    c.diffusion.schedule = "cosine"
    c.diffusion.prediction = "v"
    c.diffusion.data_scale = 10.0
    c.diffusion.label_dropout = 0.1
    c.diffusion.clip_denoised = True    # to the scaled range [-10, 10], i.e. the data's [-1, 1]
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.grad_clip_norm = 1.0
    c.sample.sampler = "ddim"
    c.sample.steps = 25
    c.sample.guidance_scale = 6.0       # 0.5 s clips: 3 -> 0.71, 4 -> 0.70, 6 -> 0.70 (1 s: 4 -> 0.74, 6 -> 0.82)
    c.sample.use_ema = True
    c.sample.num = 100
    c.eval.num_samples = 100            # 10 per digit
    c.eval.batch_size = 100
    c.eval.metrics = ("fid", "is", "mis", "am", "class_accuracy")
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, conditional or cpu")
  return lock(c)
