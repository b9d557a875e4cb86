"""DDPM — Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.

Paper setting (Section 4, Appendix B): CIFAR-10 32x32, U-Net with 128 channels, multipliers (1, 2, 2, 2),
2 residual blocks per resolution, self-attention at 16x16, dropout 0.1 (35.7M parameters); T = 1000 with
betas linear from 1e-4 to 0.02; L_simple (epsilon prediction, unweighted); Adam lr 2e-4 with 5,000 linear
warm-up steps, gradient clipping at norm 1, batch 128, EMA decay 0.9999, random horizontal flips, 800k
steps; ancestral sampling with all 1000 steps and sigma_t^2 = beta_t ("fixedlarge").
Reported: unconditional CIFAR-10 FID 3.17, IS 9.46, NLL <= 3.75 bits/dim (Table 1); training ran at 21
steps/s at batch 128 on a TPU v3-8 (Appendix B), about 10.6 hours for 800k steps.

  python -m aigc_jax.main --config=experiments/ddpm.py --workdir=runs/ddpm_cifar10               # paper
  python -m aigc_jax.main --config=experiments/ddpm.py --workdir=runs/ddpm_cifar10 --mode=sample \\
      --config.sample.sampler=ddim --config.sample.steps=100 --config.sample.num=1000             # fast DDIM
  python -m aigc_jax.main --config=experiments/ddpm.py --workdir=runs/ddpm_cifar10 --mode=eval    # bits/dim
  python -m aigc_jax.main --config=experiments/ddpm.py:cpu --workdir=runs/ddpm_cpu               # offline digits
  python -m aigc_jax.main --config=experiments/ddpm.py:cpu_cond --workdir=runs/ddpm_cpu_cond     # + guidance
Presets: paper (default); cifar10_cfg (class-conditional CIFAR-10 with classifier-free guidance, Ho &
Salimans 2022: label dropout 0.1, guidance scale 1.3, i.e. their w = 0.3); cpu (small U-Net on the bundled
8x8 digits at their native size, 3,000 steps: 5m08s on 2 idle CPU cores, 2026-11-25); cpu_cond (cpu + 10
classes, label dropout 0.1, sampled with guidance scale 2: row r of the 10x10 grid is digit r).
Guidance scale convention: output = uncond + scale (cond - uncond), so 0 = unconditional, 1 = conditional.
"""
from aigc_jax.configs import lock
from aigc_jax.families import diffusion


def get_config(preset: str = "paper"):
  c = diffusion.default_config()
  c.batch_size = 128
  c.num_train_steps = 800_000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 50_000

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True

  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.ema_decay = 0.9999

  c.diffusion.num_timesteps = 1000
  c.diffusion.schedule = "linear"
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.prediction = "eps"
  c.diffusion.loss_weighting = "simple"
  c.diffusion.variance = "fixedlarge"

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 5000
  c.optimizer.grad_clip_norm = 1.0

  c.sample.sampler = "ddpm"   # all T ancestral steps
  c.sample.steps = 0

  # Table 1's protocol: FID and IS of 50k samples (FID against the training set), the bound in bits/dim.
  c.eval.num_samples = 50_000
  c.eval.backbone = "inception"
  c.eval.metrics = ("fid", "is", "eval_step")

  if preset == "paper":
    pass
  elif preset == "cifar10_cfg":
    c.model.num_classes = 10
    c.diffusion.label_dropout = 0.1
    c.sample.guidance_scale = 1.3
  elif preset in ("cpu", "cpu_cond"):
    c.data.name = "digits"
    c.data.image_size = 8       # the digits' native size: upsampling adds pixels, not information
    c.data.channels = 1
    c.data.random_flip = False  # digits are not mirror-symmetric
    c.batch_size = 64
    c.num_train_steps = 3000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.sample_every_steps = 1000
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.0
    c.model.ema_decay = 0.999
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.sample.sampler = "ddim"   # 100 deterministic steps: seconds on a CPU instead of a minute
    c.sample.steps = 100
    c.eval.num_samples = 1000
    c.eval.backbone = "classifier"
    c.eval.metrics = ("fid", "kid")
    if preset == "cpu_cond":
      c.model.num_classes = 10
      c.diffusion.label_dropout = 0.1
      c.sample.guidance_scale = 2.0
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, cifar10_cfg, cpu or cpu_cond")
  return lock(c)
