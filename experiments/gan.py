"""GAN — Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014 (MNIST, fully connected nets).

Paper setting (Section 5 and the released pylearn2 `mnist.yaml`): generator 100-d uniform noise -> ReLU 1200
-> ReLU 1200 -> 784 outputs; discriminator maxout 240 units x 5 pieces -> maxout 240 x 5 -> logit, dropout
0.2 on its input and 0.5 on hidden layers; k = 1 discriminator step per generator step; SGD with momentum
0.5, learning rate 0.1 decayed by a factor 1.000004 per update, minibatch 100. (The released setup also
ramps momentum from 0.5 to 0.7; this config keeps it at 0.5.) Images are 28x28 in [-1, 1] (tanh output)
instead of the paper's [0, 1] sigmoid.
Reported: Parzen-window log-likelihood 225 ± 2 on the MNIST test set (Table 1), with sigma chosen on a
validation set; `--mode=eval` reports the same estimate (see aigc_jax/evaluation).

  python -m aigc_jax.main --config=experiments/gan.py --workdir=runs/gan_mnist       # paper, MNIST (TFDS)
  python -m aigc_jax.main --config=experiments/gan.py:cpu --workdir=runs/gan_cpu     # offline digits, minutes
The `cpu` preset trains the same MLP pair on the bundled 8x8 digits upsampled to 16x16 with Adam
(2e-4, beta1 0.5), normal noise and no discriminator dropout: with the paper's dropout the pair collapsed to
a single blurry digit on this 1,497-image set (sample std across z 7.8/255 vs 41/255 without, 4k steps), and
the paper's SGD at lr 0.1 let D win outright (D(G(z)) ~ 1e-14) within 2k steps.
"""
from aigc_jax.configs import lock
from aigc_jax.families import gan


def get_config(preset: str = "paper"):
  c = gan.default_config()
  c.batch_size = 100
  c.num_train_steps = 300_000  # ~500 epochs of MNIST's 60k images
  c.log_every_steps = 500
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000

  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.channels = 1

  c.model.arch = "mlp"
  c.model.z_dim = 100
  c.model.noise = "uniform"
  c.model.loss = "non_saturating"  # the paper trains G to maximise log D(G(z)) in practice (Section 3)
  c.model.d_steps = 1
  c.model.g_hidden = (1200, 1200)
  c.model.d_hidden = (240, 240)
  c.model.d_pieces = 5
  c.model.d_input_dropout = 0.2
  c.model.d_hidden_dropout = 0.5

  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.5
  c.optimizer.schedule = "exponential"
  c.optimizer.decay_rate = 1 / 1.000004
  c.optimizer.min_learning_rate = 1e-6

  # The paper's metric first: Parzen-window log-likelihood (nats) of the test set under a window fitted to
  # 10,000 samples, sigma chosen on a validation set (paper preset: the 10,000 training images it does not
  # train on; cpu preset: the last eval.parzen_num_validation images of the train split); then the
  # sample-quality metrics of the classifier backbone.
  c.eval.metrics = ("parzen", "fid", "kid", "is", "pr")
  c.eval.num_samples = 10_000

  if preset == "paper":
    # Goodfellow et al. hold out the last 10,000 training images as the validation set for sigma.
    c.data.split = "train[:50000]"
    c.eval.parzen_validation_split = "train[50000:]"
  elif preset == "cpu":
    c.data.name = "digits"
    c.data.image_size = 16
    c.batch_size = 64
    c.num_train_steps = 4000
    c.log_every_steps = 200
    c.checkpoint_every_steps = 1000
    c.sample_every_steps = 1000
    c.model.noise = "normal"
    c.model.d_input_dropout = 0.0
    c.model.d_hidden_dropout = 0.0
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.b1 = 0.5
    c.optimizer.schedule = "constant"
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper or cpu")
  return lock(c)
