"""DiffAugment — Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020; and ADA — Karras, Aittala, Hellsten, Laine, Lehtinen & Aila, "Training Generative Adversarial
Networks with Limited Data", NeurIPS 2020. Both augment every image the discriminator sees (real and fake,
in D's and G's steps) with transforms differentiable w.r.t. the image (families/gan_augment_lib.py).

Setting: CIFAR-10 with 10% of the training set (`data.fraction=0.1`: a fixed class-stratified 5,000 images;
the official DiffAugment code takes the first 5,000 instead), DiffAugment's strongest policy
color,translation,cutout (what the paper uses for its 10% and 20% rows). FID as the paper's fid10k: 10k
samples against the 10k CIFAR-10 test images (the official code's FID reference split is "test"); set
eval.inception_path to the Inception weights (README) for numbers comparable to the table.

Reported (Zhao et al. 2020, the CIFAR-10 table, Table 2 of the NeurIPS version; numbers as listed in the
official repository's DiffAugment-biggan-cifar and DiffAugment-stylegan2 READMEs, which we checked; FID,
lower is better):

| CIFAR-10 training data  | 100% | 20%   | 10%   |
|-------------------------|------|-------|-------|
| BigGAN                  | 9.59 | 21.58 | 39.78 |
| BigGAN + DiffAugment    | 8.70 | 14.04 | 22.40 |
| StyleGAN2               | 11.07| 23.08 | 36.02 |
| StyleGAN2 + DiffAugment | 9.89 | 12.15 | 14.50 |

Our network is NOT BigGAN nor StyleGAN2: the presets below train the SNGAN CIFAR-10 ResNet with the settings
of experiments/sngan.py (Miyato et al. 2018: hinge loss, spectral normalisation in D, Adam 2e-4 with
beta1 = 0, beta2 = 0.9 decayed linearly to 0, 5 D steps per G step, batch 64, 50k G steps), so expect the
same direction (augmented << plain at 10%), not the same numbers. We cite no ADA row: we did not verify a
10% CIFAR-10 number from Karras et al. 2020.

  python -m aigc_jax.main --config=experiments/diffaugment.py --workdir=runs/diffaugment_c10_10    # paper
  python -m aigc_jax.main --config=experiments/diffaugment.py:paper_ada --workdir=runs/ada_c10_10   # ADA
  python -m aigc_jax.main --config=experiments/diffaugment.py:cpu --workdir=runs/diffaugment_cpu    # offline
  ... --config.model.augment=none   # the same run without augmentation, the baseline of each preset
Presets: paper (default, DiffAugment, CIFAR-10 10%), paper_ada (ADA's bgc pipeline with the paper's
controller: target r_t 0.6, adjusted every 4 steps, 500k real images for p to go 0 -> 1), cpu (dcgan.py:cpu's
DCGAN at width 32, on 20% of the bundled digits' training split: 300 images at 16x16, DiffAugment, 2,000
steps; ~10 steps/s on 2 shared CPU cores, so a few minutes).
"""
from aigc_jax.configs import lock
from aigc_jax.families import gan


def get_config(preset: str = "paper"):
  c = gan.default_config()
  c.batch_size = 64
  c.num_train_steps = 50_000  # generator updates (SNGAN's ResNet schedule)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.fraction = 0.1

  c.model.arch = "resnet"
  c.model.loss = "hinge"
  c.model.spectral_norm = True
  c.model.z_dim = 128
  c.model.g_width = 256  # SNGAN's CIFAR-10 ResNet: 256 channels in G, 128 in D
  c.model.d_width = 128
  c.model.d_steps = 5
  c.model.augment = "diffaugment"

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.schedule = "linear"  # decayed linearly to 0, as sngan.py (the SNGAN authors' config)
  c.optimizer.decay_steps = c.num_train_steps

  c.eval.metrics = ("fid", "is")
  c.eval.backbone = "inception"
  c.eval.num_samples = 10_000
  c.eval.reference_split = "test"

  if preset == "paper":
    pass
  elif preset == "paper_ada":
    c.model.augment = "ada"
  elif preset == "cpu":
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.data.fraction = 0.2
    c.num_train_steps = 2000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.model.arch = "dcgan"  # as dcgan.py:cpu (sngan_cnn measured 0.5 steps/s here vs dcgan's 10, under load)
    c.model.loss = "non_saturating"
    c.model.spectral_norm = False
    c.model.z_dim = 64
    c.model.g_width = 32
    c.model.d_width = 32
    c.model.d_steps = 1
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.999
    c.optimizer.schedule = "constant"
    c.optimizer.decay_steps = 1
    c.eval.backbone = "classifier"
    c.eval.num_samples = 1000
    c.eval.metrics = ("fid", "kid")
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, paper_ada or cpu")
  return lock(c)
