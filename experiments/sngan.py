"""SNGAN — Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for Generative Adversarial Networks",
ICLR 2018: spectral normalisation of every discriminator layer, hinge loss, CIFAR-10.

Paper setting: ResNet G of width 256 and D of width 128 with global sum pooling (Table 4); hinge loss (eq. 17);
Adam lr 2e-4, beta1 = 0, beta2 = 0.9, n_dis = 5 (Appendix B.2, Gulrajani et al.'s settings); batch 64; one
power iteration per discriminator application; the authors' config (pfnet-research/sngan_projection,
sn_cifar10_unconditional.yml) trains 50k generator updates with the learning rate decayed linearly to 0.
`std_cnn` is the "standard CNN" pair of Table 3 (setting C of Table 1: Adam 2e-4, beta1 0.5, beta2 0.999,
n_dis 1 is one of the paper's six; the paper does not say which was best on CIFAR-10, so this picks C).
Reported (Table 2, CIFAR-10, Inception score / FID): ResNet SN-GAN, hinge 8.22 ± .05 / 21.7 ± .21;
standard CNN SN-GAN, hinge 7.58 ± .12 / 25.5 (non-saturating 7.42 ± .08 / 29.3). Protocol: IS on 5,000
samples x 10, FID of 5,000 samples against 10,000 real images. StudioGAN re-measured the same two
(PyTorch-StudioGAN README, its protocol): 8.98 / 9.51 (ResNet) and 8.20 / 15.66 (standard CNN).

  python -m aigc_jax.main --config=experiments/sngan.py --workdir=runs/sngan_cifar10        # paper, ResNet
  python -m aigc_jax.main --config=experiments/sngan.py:std_cnn --workdir=runs/sngan_cnn    # standard CNN
  python -m aigc_jax.main --config=experiments/sngan.py:cpu --workdir=runs/sngan_cpu        # offline digits
"""
from aigc_jax.configs import lock
from aigc_jax.families import gan


def get_config(preset: str = "paper"):
  c = gan.default_config()
  c.batch_size = 64
  c.num_train_steps = 50_000  # generator updates (the authors' config)
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

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.schedule = "linear"
  c.optimizer.decay_steps = c.num_train_steps

  c.eval.metrics = ("is", "fid")
  c.eval.num_samples = 5000
  c.eval.backbone = "inception"

  if preset == "paper":
    pass
  elif preset in ("std_cnn", "cpu"):
    c.model.arch = "sngan_cnn"
    c.model.g_width = 64
    c.model.d_width = 64
    c.model.d_steps = 1
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.999
    c.optimizer.schedule = "constant"
    c.optimizer.decay_steps = 1
    c.num_train_steps = 100_000
    if preset == "cpu":
      c.data.name = "digits"
      c.data.image_size = 16
      c.data.channels = 1
      c.num_train_steps = 2000
      c.log_every_steps = 100
      c.checkpoint_every_steps = 500
      c.sample_every_steps = 500
      c.model.g_width = 32
      c.model.d_width = 32
      c.eval.metrics = ("fid", "kid", "is")
      c.eval.num_samples = 1000
      c.eval.backbone = "classifier"
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, std_cnn or cpu")
  return lock(c)
