"""WGAN-GP — Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of Wasserstein GANs",
NeurIPS 2017: the CIFAR-10 ResNet critic trained with the gradient penalty.

Paper setting (Appendix F; the authors' gan_cifar_resnet.py): ResNet G (z 128 -> 4x4x128 -> 3 up-blocks of 128
channels, batch norm) and critic (2 down-blocks, 2 plain blocks of 128, mean pooling, no batch norm);
Wasserstein loss with gradient penalty lambda = 10 on interpolates; n_critic = 5; Adam lr 2e-4, beta1 = 0,
beta2 = 0.9, decayed linearly to 0 over 100k generator iterations; batch 64.
Deviations: the authors' code feeds the generator step 128 samples (2 x 64); here every step uses batch_size
for both. `paper_conditional` conditions G by conditional batch norm and adds AC-GAN's classifier to the
critic with one weight (their code: 1 on the critic, 0.1 on the generator).
Reported (Table 3, CIFAR-10 Inception score): WGAN-GP ResNet 7.86 ± .07 unsupervised, 8.42 ± .10 supervised
(DCGAN 6.16 ± .07). Re-measured by StudioGAN (PyTorch-StudioGAN README, CIFAR-10, its own protocol): IS 6.71,
FID 36.84 for the standard-CNN WGAN-GP whose paper value is 6.68 / 40.1 (Miyato et al. 2018, Table 2).

  python -m aigc_jax.main --config=experiments/wgan_gp.py --workdir=runs/wgan_gp_cifar10     # paper, CIFAR-10
  python -m aigc_jax.main --config=experiments/wgan_gp.py:cpu --workdir=runs/wgan_gp_cpu     # offline digits
Presets: paper (default), paper_conditional, cpu (the same recipe, narrow, on the bundled digits at 16x16).
"""
from aigc_jax.configs import lock
from aigc_jax.families import gan


def get_config(preset: str = "paper"):
  c = gan.default_config()
  c.batch_size = 64
  c.num_train_steps = 100_000  # generator iterations
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3

  c.model.arch = "resnet"
  c.model.z_dim = 128
  c.model.g_width = 128
  c.model.d_width = 128
  c.model.d_pool = "mean"          # the authors' critic averages the last features
  c.model.loss = "wasserstein"
  c.model.gradient_penalty = "wgan_gp"
  c.model.gp_weight = 10.0
  c.model.d_steps = 5

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.schedule = "linear"
  c.optimizer.decay_steps = c.num_train_steps

  c.eval.metrics = ("is", "fid")
  c.eval.num_samples = 50_000
  c.eval.backbone = "inception"

  if preset == "paper":
    pass
  elif preset == "paper_conditional":
    c.model.num_classes = 10
    c.model.cond_head = "acgan"
  elif preset == "cpu":
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.num_train_steps = 1500
    c.optimizer.decay_steps = c.num_train_steps
    c.log_every_steps = 100
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.model.g_width = 32
    c.model.d_width = 32
    c.eval.metrics = ("fid", "kid", "is")
    c.eval.num_samples = 1000
    c.eval.backbone = "classifier"
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, paper_conditional or cpu")
  return lock(c)
