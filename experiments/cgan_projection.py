"""Class-conditional GANs — the projection discriminator (Miyato & Koyama, "cGANs with Projection
Discriminator", ICLR 2018) with conditional batch norm in G, and AC-GAN's auxiliary classifier (Odena, Olah &
Shlens, ICML 2017) on the same networks.

Paper setting (the authors' pfnet-research/sngan_projection, configs/sn_cifar10.yml): the SNGAN CIFAR-10 ResNet
pair (G width 256 with categorical conditional batch norm, D width 128 with spectral norm and the projection
head psi(phi(x)) + <embed(y), phi(x)>), hinge loss, n_dis 5, Adam 2e-4 / 0 / 0.9, batch 64, 50k generator
updates with linear decay. Fake examples draw uniform random classes.
Reported: the paper's experiments are on ImageNet 128x128 (deeper ResNets than built here): projection IS
29.7, intra-FID 103.1 at 450k updates (sngan_projection README_paper.md; the pre-camera-ready text's Table 1:
30.3 / 103.3; AC-GAN 28.7 / 252.0). For CIFAR-10, StudioGAN's reproducibility figure lists 8.62 / 17.5 as the
paper's IS / FID (not found in the paper text we could read) and re-measures 7.26 / 29.79; its conditional
SNGAN (cBN + projection + SN, hinge) gets 8.83 / 9.01 and ACGAN-Mod 7.19 / 33.39 (PyTorch-StudioGAN README,
CIFAR-10, its protocol). AC-GAN's own CIFAR-10 IS is 8.25 ± .07 (as cited in WGAN-GP, Table 3).

  python -m aigc_jax.main --config=experiments/cgan_projection.py --workdir=runs/cgan_cifar10     # paper
  python -m aigc_jax.main --config=experiments/cgan_projection.py:cpu --workdir=runs/cgan_cpu     # digits
  python -m aigc_jax.main --config=experiments/cgan_projection.py:cpu --workdir=runs/cgan_cpu --mode=sample \\
      --config.sample.label=7                                                                     # only sevens
Presets: paper (default), paper_acgan, cpu (standard-CNN SN pair on the bundled digits at 16x16; the metric
card's `class_accuracy` says how often samples asked for as class k are classified as k).
Measured (cpu, 2026-11-26, 2-core VM under load, 1,750 CPU-s of training): FID 2.01 and KID 0.0022 against the
digits (project classifier backbone, 1,000 samples), class_accuracy 0.959 (lowest class 0.89);
bench/RESULTS.md "GAN zoo".
"""
from aigc_jax.configs import lock
from aigc_jax.families import gan


def get_config(preset: str = "paper"):
  c = gan.default_config()
  c.batch_size = 64
  c.num_train_steps = 50_000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3

  c.model.arch = "resnet"
  c.model.z_dim = 128
  c.model.g_width = 256
  c.model.d_width = 128
  c.model.spectral_norm = True
  c.model.loss = "hinge"
  c.model.d_steps = 5
  c.model.num_classes = 10
  c.model.cond_head = "projection"

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.schedule = "linear"
  c.optimizer.decay_steps = c.num_train_steps

  c.eval.metrics = ("is", "fid", "class_accuracy")
  c.eval.num_samples = 10_000
  c.eval.backbone = "inception"

  if preset == "paper":
    pass
  elif preset == "paper_acgan":
    c.model.cond_head = "acgan"
  elif preset == "cpu":
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.num_train_steps = 2000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.model.arch = "sngan_cnn"
    c.model.g_width = 32
    c.model.d_width = 32
    c.model.d_steps = 1
    c.optimizer.b1 = 0.5             # SNGAN's setting C (Table 1): one D step per G step
    c.optimizer.b2 = 0.999
    c.optimizer.schedule = "constant"
    c.optimizer.decay_steps = 1
    c.eval.metrics = ("fid", "kid", "class_accuracy")
    c.eval.num_samples = 1000
    c.eval.backbone = "classifier"
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, paper_acgan or cpu")
  return lock(c)
