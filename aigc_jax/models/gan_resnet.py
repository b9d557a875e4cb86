"""The CIFAR-10 GAN networks of WGAN-GP and SNGAN: ResNet and "standard CNN" generators and discriminators.

ResNet pair (`ResNetGenerator`, `ResNetDiscriminator`): Gulrajani et al. 2017 (WGAN-GP, their CIFAR-10
ResNet) as re-used by Miyato et al. 2018 (SNGAN, Table 4). G: z -> dense -> bottom x bottom x width ->
log2(image_size / bottom) up-blocks (BN, ReLU, nearest 2x upsample, 3x3 conv, BN, ReLU, 3x3 conv; 1x1 conv
shortcut) -> BN, ReLU, 3x3 conv, tanh. D: an "optimised" first down-block (conv, ReLU, conv, 2x2 mean pool;
shortcut mean pool then 1x1 conv), one pre-activation down-block, two plain blocks, ReLU, global sum pooling
-> phi(x) [B, width] -> heads. The discriminator does not change with the image size (32x32 ends at 8x8
features; SNGAN's deeper STL-10/ImageNet discriminators, Tables 5-6, are not built here).

Standard CNN pair (`SNGANGenerator`, `SNGANDiscriminator`): Miyato et al. 2018, Table 3 (a)/(b). G: dense ->
bottom x bottom x (width * 2^k), BN, ReLU; k 4x4 stride-2 deconvs halving the width (BN, ReLU); 3x3 conv, tanh
(width 64, k = 3: 512 -> 256 -> 128 -> 64 at 32x32). D: (3x3 s1, 4x4 s2) conv pairs of width w, 2w, 4w, a 3x3
conv of 8w (64 -> 512), LeakyReLU(0.1) after each, flatten -> phi(x) -> heads.

Heads on phi (Miyato & Koyama 2018; Odena et al. 2017): "plain" psi(phi); "projection" psi(phi) +
<embed(y), phi>; "acgan" psi(phi) plus a linear K-way classifier's logits (`aux`). The discriminators have
no batch norm (WGAN-GP's gradient penalty is per example; SNGAN uses none). `spectral_norm` wraps every conv,
dense and embedding in `nn.SpectralNorm` (one power iteration per training application, u and sigma in
"batch_stats", so they are checkpointed); without it D has no "batch_stats" at all.

Conditional generators (`num_classes > 0`) use categorical conditional batch norm (de Vries et al. 2017;
Dumoulin et al. 2017): batch norm without scale/offset, then per-class gamma (init 1) and beta (init 0)
rows. The ResNet G has it in every up-block, its output batch norm stays unconditional (as in both
references); the standard CNN, unconditional in the paper, gets it at every batch norm (our extension).
`axis_name`: batch statistics over the global batch, so a data-parallel step is the single-device step.

Followed: pfnet-research/sngan_projection (the SNGAN authors' chainer code: resblocks, resnet_32,
snresnet_32, categorical CBN) for the ResNets, initialisation included (Glorot-uniform with gain sqrt(2) on
residual 3x3 convs, gain 1 on shortcuts, linears and embeddings; BN eps 2e-5 (Gulrajani: 1e-5), decay 0.9;
psi without bias); pfnet-research/chainer-gan-lib (DCGANGenerator, SNDCGANDiscriminator) for the standard
CNN, N(0, 0.02) weights. Deviations: the standard CNN uses LeakyReLU(0.1) as Table 3 says (chainer-gan-lib:
chainer's 0.2); biases before batch norm are dropped (BN cancels them); 1x1 shortcuts are applied at the
lower resolution (1x1 convs commute with nearest upsampling and mean pooling, so the function is the same at
a quarter of the cost); `pool="mean"` gives Gulrajani et al.'s critic (tf code: mean pooling, psi with
bias; it is `pool="sum"`, SNGAN's, by default).
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from aigc_jax.models.layers import Embed, UpConv4x4

HEADS = ("plain", "projection", "acgan")
POOLS = ("sum", "mean")
BN_ARGS = dict(momentum=0.9, epsilon=2e-5)  # chainer's BatchNormalization defaults (decay 0.9, eps 2e-5)
glorot_relu = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")  # Glorot-uniform, gain sqrt(2)
glorot = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
normal_002 = nn.initializers.normal(0.02)


def num_up_blocks(image_size: int, bottom: int) -> int:
  """k with image_size == bottom * 2^k, k >= 1: the generator's resolution doublings."""
  k = int(round(math.log2(image_size / bottom))) if image_size > 0 and bottom > 0 else 0
  if k < 1 or bottom * 2 ** k != image_size:
    raise ValueError(f"image_size must be bottom * 2^k with k >= 1, got image_size={image_size}, bottom={bottom}")
  return k


def check_labels(num_classes: int, labels_B, who: str):
  if num_classes > 0 and labels_B is None:
    raise ValueError(f"{who} has num_classes={num_classes}: pass labels_B (int class ids [B])")


def apply_layer(layer: nn.Module, spectral_norm: bool, train: bool, *args):
  """layer(*args), through nn.SpectralNorm (named `<layer>_sn`, one power iteration) when asked."""
  if not spectral_norm:
    return layer(*args)
  return nn.SpectralNorm(layer, name=f"{layer.name}_sn")(*args, update_stats=train)


def upsample_2x(x_BxHxWxC):
  """Nearest-neighbour 2x upsampling (chainer unpooling_2d; tf depth_to_space of 4 copies)."""
  b, h, w, c = x_BxHxWxC.shape
  return jnp.broadcast_to(x_BxHxWxC[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def mean_pool_2x(x_BxHxWxC):
  return nn.avg_pool(x_BxHxWxC, (2, 2), strides=(2, 2))


class ConditionalBatchNorm(nn.Module):
  """Batch norm over all axes but the last; per-class gamma/beta when num_classes > 0, else plain BN."""
  num_classes: int = 0
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, labels_B, train: bool):
    conditional = self.num_classes > 0
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name, use_scale=not conditional,
                     use_bias=not conditional, dtype=self.dtype, **BN_ARGS)(x)
    if not conditional:
      return x
    c = x.shape[-1]
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
    gamma = Embed(self.num_classes, c, embedding_init=nn.initializers.ones, dtype=self.dtype, name="gammas")
    beta = Embed(self.num_classes, c, embedding_init=nn.initializers.zeros, dtype=self.dtype, name="betas")
    return x * gamma(labels_B).reshape(shape) + beta(labels_B).reshape(shape)


class DiscriminatorHead(nn.Module):
  """phi [B, F] -> (logits [B], aux logits [B, K] | None). Sows phi as intermediates "phi"."""
  num_classes: int = 0
  head: str = "plain"
  spectral_norm: bool = True
  use_bias: bool = False
  kernel_init: Any = glorot
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, phi_BxF, labels_B, train: bool):
    self.sow("intermediates", "phi", phi_BxF)
    sn = lambda layer, *args: apply_layer(layer, self.spectral_norm, train, *args)
    psi = nn.Dense(1, use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype, name="psi")
    logits_B = sn(psi, phi_BxF)[:, 0]
    aux_BxK = None
    if self.head == "projection":
      embed = Embed(self.num_classes, phi_BxF.shape[-1], embedding_init=glorot, dtype=self.dtype, name="embed")
      logits_B = logits_B + jnp.sum(sn(embed, labels_B) * phi_BxF, axis=-1)
    elif self.head == "acgan":
      aux = nn.Dense(self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype, name="aux")
      aux_BxK = sn(aux, phi_BxF).astype(jnp.float32)
    return logits_B.astype(jnp.float32), aux_BxK


def check_head(num_classes: int, head: str):
  if head not in HEADS:
    raise ValueError(f"unknown discriminator head {head!r}; use one of {HEADS}")
  if head == "plain" and num_classes > 0:
    raise ValueError(f"head 'plain' would ignore num_classes={num_classes}; use 'projection' or 'acgan', "
                     "or num_classes=0")
  if head != "plain" and num_classes <= 0:
    raise ValueError(f"head {head!r} needs num_classes > 0, got {num_classes}")


class GeneratorBlock(nn.Module):
  """Pre-activation up-block: (C)BN, ReLU, upsample, 3x3 conv, (C)BN, ReLU, 3x3 conv; + 1x1 conv shortcut."""
  features: int
  num_classes: int = 0
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, labels_B, train: bool):
    conv = lambda k, init, name: nn.Conv(self.features, (k, k), padding="SAME", kernel_init=init,
                                         dtype=self.dtype, name=name)
    norm = lambda name: ConditionalBatchNorm(self.num_classes, self.axis_name, self.dtype, name=name)
    h = nn.relu(norm("bn1")(x_BxHxWxC, labels_B, train))
    h = conv(3, glorot_relu, "conv1")(upsample_2x(h))
    h = nn.relu(norm("bn2")(h, labels_B, train))
    h = conv(3, glorot_relu, "conv2")(h)
    return h + upsample_2x(conv(1, glorot, "shortcut")(x_BxHxWxC))


class DiscriminatorBlock(nn.Module):
  """Pre-activation block (ReLU, 3x3 conv, ReLU, 3x3 conv[, mean pool]); `optimised`: the first block, no
  leading ReLU and a mean-pool-then-1x1-conv shortcut. Learnable shortcut iff channels or resolution change."""
  features: int
  downsample: bool = False
  optimised: bool = False
  spectral_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    sn = lambda layer, x: apply_layer(layer, self.spectral_norm, train, x)
    conv = lambda k, init, name: nn.Conv(self.features, (k, k), padding="SAME", kernel_init=init,
                                         dtype=self.dtype, name=name)
    h = x_BxHxWxC if self.optimised else nn.relu(x_BxHxWxC)
    h = sn(conv(3, glorot_relu, "conv1"), h)
    h = sn(conv(3, glorot_relu, "conv2"), nn.relu(h))
    down = self.downsample or self.optimised
    if down:
      h = mean_pool_2x(h)
    shortcut = mean_pool_2x(x_BxHxWxC) if down else x_BxHxWxC
    if down or x_BxHxWxC.shape[-1] != self.features:
      shortcut = sn(conv(1, glorot, "shortcut"), shortcut)
    return h + shortcut


class ResNetGenerator(nn.Module):
  image_size: int = 32
  channels: int = 3
  width: int = 128  # WGAN-GP: 128; SNGAN (Table 4): 256
  num_classes: int = 0
  bottom: int = 4
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ, labels_B=None, train: bool = True):
    blocks = num_up_blocks(self.image_size, self.bottom)
    check_labels(self.num_classes, labels_B, "ResNetGenerator")
    h = nn.Dense(self.bottom * self.bottom * self.width, kernel_init=glorot, dtype=self.dtype, name="dense_in")(z_BxZ)
    h = h.reshape((-1, self.bottom, self.bottom, self.width))
    for i in range(blocks):
      h = GeneratorBlock(self.width, self.num_classes, self.axis_name, self.dtype, name=f"block{i + 1}")(
          h, labels_B, train)
    h = nn.relu(ConditionalBatchNorm(0, self.axis_name, self.dtype, name="bn_out")(h, None, train))
    h = nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=glorot, dtype=self.dtype, name="conv_out")(h)
    return jnp.tanh(h).astype(jnp.float32)


class ResNetDiscriminator(nn.Module):
  width: int = 128
  num_classes: int = 0
  head: str = "plain"
  spectral_norm: bool = True
  dtype: Any = jnp.float32
  pool: str = "sum"  # sum (SNGAN, Table 4) | mean (Gulrajani et al.'s critic)

  @nn.compact
  def __call__(self, x_BxHxWxC, labels_B=None, train: bool = True):
    check_head(self.num_classes, self.head)
    check_labels(self.num_classes, labels_B, "ResNetDiscriminator")
    if self.pool not in POOLS:
      raise ValueError(f"unknown pool {self.pool!r}; use one of {POOLS}")
    h = x_BxHxWxC.astype(self.dtype)
    for i, (down, optimised) in enumerate([(True, True), (True, False), (False, False), (False, False)]):
      h = DiscriminatorBlock(self.width, down, optimised, self.spectral_norm, self.dtype, name=f"block{i + 1}")(
          h, train)
    h = nn.relu(h)
    phi_BxF = jnp.sum(h, axis=(1, 2)) if self.pool == "sum" else jnp.mean(h, axis=(1, 2))
    return DiscriminatorHead(self.num_classes, self.head, self.spectral_norm, use_bias=self.pool == "mean",
                             dtype=self.dtype, name="head")(phi_BxF, labels_B, train)


class SNGANGenerator(nn.Module):
  image_size: int = 32
  channels: int = 3
  width: int = 64  # the last deconv's channels; the dense layer has width * 2^k (512 at 32x32)
  num_classes: int = 0
  bottom: int = 4  # M_g: 4 for CIFAR-10, 6 for STL-10 (48x48)
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ, labels_B=None, train: bool = True):
    steps = num_up_blocks(self.image_size, self.bottom)
    check_labels(self.num_classes, labels_B, "SNGANGenerator")
    norm = lambda name: ConditionalBatchNorm(self.num_classes, self.axis_name, self.dtype, name=name)
    top = self.width * 2 ** steps
    # chainer-gan-lib normalises the dense output per feature (bottom^2 * top of them), before the reshape.
    h = nn.Dense(self.bottom * self.bottom * top, use_bias=False, kernel_init=normal_002, dtype=self.dtype,
                 name="dense_in")(z_BxZ)
    h = nn.relu(norm("bn0")(h, labels_B, train)).reshape((-1, self.bottom, self.bottom, top))
    for i in range(steps):
      h = UpConv4x4(top // 2 ** (i + 1), use_bias=False, kernel_init=normal_002, dtype=self.dtype,
                    name=f"deconv{i + 1}")(h)
      h = nn.relu(norm(f"bn{i + 1}")(h, labels_B, train))
    h = nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=normal_002, dtype=self.dtype, name="conv_out")(h)
    return jnp.tanh(h).astype(jnp.float32)


class SNGANDiscriminator(nn.Module):
  width: int = 64  # first conv's channels; the last conv has 8x
  num_classes: int = 0
  head: str = "plain"
  spectral_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, labels_B=None, train: bool = True):
    check_head(self.num_classes, self.head)
    check_labels(self.num_classes, labels_B, "SNGANDiscriminator")
    h = x_BxHxWxC.astype(self.dtype)
    layers = [(3, 1, 1), (4, 2, 1), (3, 1, 2), (4, 2, 2), (3, 1, 4), (4, 2, 4), (3, 1, 8)]  # (kernel, stride, x width)
    for i, (k, s, mult) in enumerate(layers):
      conv = nn.Conv(self.width * mult, (k, k), strides=(s, s), padding=((1, 1), (1, 1)), kernel_init=normal_002,
                     dtype=self.dtype, name=f"conv{i + 1}")
      h = nn.leaky_relu(apply_layer(conv, self.spectral_norm, train, h), 0.1)
    phi_BxF = h.reshape((h.shape[0], -1))
    return DiscriminatorHead(self.num_classes, self.head, self.spectral_norm, use_bias=True,
                             kernel_init=normal_002, dtype=self.dtype, name="head")(phi_BxF, labels_B, train)
