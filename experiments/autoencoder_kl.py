"""LDM-KL autoencoder — Rombach, Blattmann, Lorenz, Esser & Ommer, "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022, Section 3.1 (aigc_jax/families/autoencoder_kl.py): the first stage of latent
diffusion, a convolutional autoencoder with a KL-regularised diagonal-Gaussian latent, trained with L1 +
perceptual + kl_weight * KL (+ a PatchGAN from disc_start, weighted adaptively as in VQGAN).

Paper setting (`paper`, the default; the CompVis code's models/first_stage_models/kl-f8/config.yaml and
configs/autoencoder/autoencoder_kl_32x32x4.yaml): f = 8, 256x256 RGB -> 32x32x4 latents; ch 128,
ch_mult (1, 2, 4, 4), 2 ResnetBlocks per level, no attention but the middle one; kl_weight 1e-6, LPIPS weight
1.0, PatchGAN (3 layers, 64 channels, hinge) with disc_weight 0.5 from step 50,001; Adam (betas 0.5, 0.9) at
4.5e-6 x the total batch (their main.py scales the base rate by batch x GPUs x accumulation: the ImageNet config's
12 x 2 accumulated = 1.08e-4 for one GPU, so batch 24 at 1.08e-4 here). Reported (the repository README's
"Pretrained Autoencoding Models" table, trained on OpenImages, rFID against ImageNet validation, PSNR and PSIM):
  f=4, KL (c=3): rFID 0.27, PSNR 27.53 +- 4.54, PSIM 0.55 +- 0.24, 176,991 steps
  f=8, KL (c=4): rFID 0.90, PSNR 24.19 +- 4.19, PSIM 1.02 +- 0.35, 246,803 steps
(checked against that README; the paper's appendix table of the autoencoder zoo, Table 8 in the arXiv v2, could
not be read offline, so its numbers are not quoted here). Ours differs: ImageNet (TFDS imagenet2012, manual
download) rather than OpenImages, as the repository's own KL training config does; LPIPS is the project's
classifier distance, which trains on the whole train split in memory (infeasible for ImageNet), so the preset
sets perceptual_weight = 0 (set it for data that fits in memory).

The CPU presets (offline, each in well under 10 minutes on 2 CPU cores) are stage 1 of the text-to-image
pipeline of issue 13. Run the three stages in this order; each later stage finds the previous one's checkpoint
at these workdirs (the diffusion config's autoencoder key defaults to runs/autoencoder_kl_cpu):

  python -m aigc_jax.main --config=experiments/autoencoder_kl.py:cpu --workdir=runs/autoencoder_kl_cpu
  python -m aigc_jax.main --config=experiments/clip.py:cpu --workdir=runs/clip_cpu
  python -m aigc_jax.main --config=experiments/latent_diffusion.py:cpu --workdir=runs/latent_diffusion_cpu

and for captioned_shapes the same with `:cpu_shapes` and runs/autoencoder_kl_cpu_shapes, runs/clip_cpu_shapes.
--mode=eval on an autoencoder run writes eval/<step>.json (PSNR, MSE, KL per latent dim, rFID on the offline
classifier's features); --mode=sample the figure (inputs next to reconstructions, then decodes of prior draws).
Other code reads a run through `aigc_jax.families.autoencoder_kl.load_autoencoder(workdir)`.

cpu: captioned_digits 8x8x1 -> 4x4x4 latents (f = 2, ch_mult (1, 2), width 32, one ResnetBlock per level,
mid attention at 4x4), L1 + perceptual (digits classifier) + 1e-6 KL, no discriminator (at 8x8 a PatchGAN has
one 2x2 logit grid and buys nothing the L1 + perceptual loss lacks, as experiments/vqgan.py found on 16x16
digits), Adam 1e-3 (betas 0.5, 0.9), batch 64.
cpu_shapes: captioned_shapes 16x16x3 -> 8x8x4 latents (f = 2, as cpu), 1,000 steps, otherwise as cpu. (At 32x32 -> 8x8x4,
f = 4 with ch_mult (1, 2, 2), a step took ~10 s on 2 shared cores: hours for 2,000 steps.)
"""
from aigc_jax.configs import lock
from aigc_jax.families import autoencoder_kl


def get_config(preset: str = "paper"):
  c = autoencoder_kl.default_config()
  c.batch_size = 24
  c.num_train_steps = 246_803
  c.log_every_steps = 500
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000
  c.data.name = "imagenet2012"
  c.data.image_size = 256
  c.data.channels = 3
  c.data.random_flip = False
  m = c.model
  m.ch = 128
  m.ch_mult = (1, 2, 4, 4)
  m.num_res_blocks = 2
  m.attn_resolutions = ()
  m.mid_attention = True
  m.latent_channels = 4
  m.kl_weight = 1e-6
  m.pixel_loss = "l1"
  m.perceptual_weight = 0.0        # LPIPS 1.0 in the paper; see the docstring
  m.use_discriminator = True
  m.disc_weight = 0.5
  m.disc_start = 50_001
  m.disc_loss = "hinge"
  m.disc_layers = 3
  m.disc_width = 64
  m.disc_norm = "batch"
  c.optimizer.learning_rate = 1.08e-4
  c.optimizer.b1, c.optimizer.b2 = 0.5, 0.9
  c.eval.metrics = ("eval_step", "rfid")
  c.eval.reference_split = "validation"
  c.eval.batch_size = 64

  if preset == "paper":
    pass
  elif preset in ("cpu", "cpu_shapes"):
    digits = preset == "cpu"
    c.batch_size = 64
    c.num_train_steps = 2_000 if digits else 1_000  # shapes: ~3x the cost of a digits step
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1_000 if digits else 500
    c.sample_every_steps = 1_000
    c.data.name = "captioned_digits" if digits else "captioned_shapes"
    c.data.image_size = 8 if digits else 16
    c.data.channels = 1 if digits else 3
    m.ch = 32
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.perceptual_weight = 1.0
    m.use_discriminator = False
    m.disc_weight = 0.5            # the family defaults, so nothing discriminator-only is set
    m.disc_start = 0
    c.optimizer.learning_rate = 1e-3
    c.eval.reference_split = "test"
    c.eval.batch_size = 256
    c.eval.num_samples = 500
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, cpu or cpu_shapes")
  return lock(c)
