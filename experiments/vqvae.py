"""VQ-VAE — van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", NeurIPS 2017.

Paper setting (Section 4.1, CIFAR-10): encoder of two 4x4 stride-2 convolutions and two residual 3x3 blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv), all 256 channels; the decoder mirrors it with two 4x4 stride-2 transposed
convolutions; Adam lr 2e-4, batch 128, 250,000 steps; commitment cost beta = 0.25 (Section 3.2: results were
robust for beta from 0.1 to 2.0). 32x32x3 images -> an 8x8 grid of codes. K = 512 codes as in the paper's
ImageNet setting (Section 4.2); D = 64 follows the authors' released Sonnet example (the paper does not state
K and D for CIFAR-10). Codebook trained by the codebook loss (eq. 3) by default; `ema` (Appendix A, decay
0.99) is the alternative.
Reported (Section 4.1, text, not a table): on CIFAR-10 the VQ-VAE reaches 4.67 bits/dim (a lower bound with a
uniform prior over codes), against 4.51 for a continuous VAE and 5.14 for VIMCO with the same architecture.
The paper gives no reconstruction PSNR/SSIM; this family reports them (eval_step) with codebook perplexity
and the share of dead codes.

  python -m aigc_jax.main --config=experiments/vqvae.py --workdir=runs/vqvae_cifar10         # paper, CIFAR-10
  python -m aigc_jax.main --config=experiments/vqvae.py:cpu --workdir=runs/vqvae_cpu          # offline digits
  python -m aigc_jax.main --config=experiments/vqvae.py:cpu --workdir=runs/vqvae_cpu --mode=sample  # recons
  python -m aigc_jax.main --config=experiments/vqvae.py:cpu --workdir=runs/vqvae_cpu --mode=encode  # codes npz
cpu: bundled 8x8 digits upsampled to 16x16, one stride-2 stage (8x8 grid of codes), 64 channels, K = 64
codes of D = 16, EMA codebook, Adam 1e-3, batch 64, 2,000 steps.
"""
from aigc_jax.configs import lock
from aigc_jax.families import vqvae


def get_config(preset: str = "paper"):
  c = vqvae.default_config()
  c.batch_size = 128
  c.num_train_steps = 250_000
  c.log_every_steps = 500
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3

  c.model.num_codes = 512
  c.model.code_dim = 64
  c.model.hidden = 256
  c.model.residual_hidden = 256
  c.model.num_residual_blocks = 2
  c.model.num_downsamples = 2
  c.model.beta = 0.25
  c.model.codebook_update = "loss"
  c.model.ema_decay = 0.99           # used by codebook_update = 'ema'

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4

  if preset == "paper":
    pass
  elif preset == "cpu":
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.batch_size = 64
    c.num_train_steps = 2000
    c.log_every_steps = 200
    c.checkpoint_every_steps = 1000
    c.sample_every_steps = 1000
    c.model.num_codes = 64
    c.model.code_dim = 16
    c.model.hidden = 64
    c.model.residual_hidden = 32
    c.model.num_downsamples = 1
    c.model.codebook_update = "ema"
    c.optimizer.learning_rate = 1e-3
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper or cpu")
  return lock(c)
