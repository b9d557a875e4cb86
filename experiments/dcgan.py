"""DCGAN — Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016.

Paper setting (Section 4): all-convolutional G/D with batch norm (not on G's output nor D's input), ReLU in
G and LeakyReLU(0.2) in D, weights ~ N(0, 0.02), Adam lr 2e-4 with beta1 = 0.5, minibatch 128, images
scaled to [-1, 1], no pooling, no fully connected hidden layers.
Reported: the DCGAN paper gives no CIFAR-10 sample-quality number; the reference figure is the Inception
Score 6.16 on CIFAR-10 that Gulrajani et al. 2017 ("Improved Training of Wasserstein GANs", Table 3,
unsupervised) report for DCGAN.

  python -m aigc_jax.main --config=experiments/dcgan.py --workdir=runs/dcgan_cifar10          # paper, CIFAR-10
  python -m aigc_jax.main --config=experiments/dcgan.py:mnist --workdir=runs/dcgan_mnist      # MNIST
  python -m aigc_jax.main --config=experiments/dcgan.py:cpu --workdir=runs/dcgan_cpu          # offline digits
Presets: paper (default, CIFAR-10 32x32x3), mnist (32x32x1), cpu (bundled 8x8 digits upsampled to 32x32,
minutes on 2 CPU cores).
"""
from aigc_jax.configs import lock
from aigc_jax.families import gan


def get_config(preset: str = "paper"):
  c = gan.default_config()
  c.batch_size = 128
  c.num_train_steps = 100_000  # ~256 epochs of CIFAR-10 at batch 128
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3

  c.model.arch = "dcgan"
  c.model.z_dim = 100
  c.model.g_width = 64
  c.model.d_width = 64

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5

  if preset == "paper":
    pass
  elif preset == "mnist":
    c.data.name = "mnist"
    c.data.channels = 1
    c.num_train_steps = 20_000
  elif preset == "cpu":
    c.data.name = "digits"
    c.data.channels = 1
    c.batch_size = 64
    c.num_train_steps = 1500
    c.log_every_steps = 100
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.model.g_width = 32
    c.model.d_width = 32
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, mnist or cpu")
  return lock(c)
