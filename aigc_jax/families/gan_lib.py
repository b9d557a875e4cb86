"""The GAN family's losses and regularisers, as pure functions of logits and a discriminator function.

- Losses (`LOSSES`): non-saturating and minimax (Goodfellow et al. 2014, D = sigmoid(logit)), hinge (Lim & Ye
  2017; Miyato et al. 2018), Wasserstein (Arjovsky et al. 2017: the critic maximises E[D(x)] - E[D(G(z))]).
- Gradient penalties (`PENALTIES`): WGAN-GP (Gulrajani et al. 2017, eq. 3: lambda E[(||grad D(x_hat)||_2 - 1)^2]
  on x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per example) and R1 (Mescheder et al. 2018, eq. 9:
  gamma/2 E[||grad D(x)||^2] on real data). Both take per-example input gradients, so the critic must treat
  examples independently: no batch norm (the family refuses that combination).
- PacGAN packing (Lin et al. 2018): m consecutive examples become one discriminator input, concatenated on the
  last (channel or feature) axis.
- AC-GAN's auxiliary classification loss (Odena et al. 2017, eq. 2-3).
"""
import jax
import jax.numpy as jnp

LOSSES = ("non_saturating", "minimax", "hinge", "wasserstein")
PENALTIES = ("none", "wgan_gp", "r1")


def discriminator_loss(kind: str, real_logits, fake_logits):
  if kind == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  if kind == "wasserstein":
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  # -log D(x) - log(1 - D(G(z))) with D = sigmoid(logit)
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(kind: str, fake_logits):
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))  # -log D(G(z))
  if kind == "minimax":
    return -jnp.mean(jax.nn.softplus(fake_logits))  # log(1 - D(G(z)))
  return -jnp.mean(fake_logits)  # hinge and Wasserstein: the generator raises the critic's score


def input_gradient_norms(critic, x):
  """||d critic(x)_i / d x_i||_2 per example: [B]. `critic(x) -> logits [B]` must not mix examples (no batch
  norm), so the gradient of the sum w.r.t. x holds each example's own input gradient."""
  grads = jax.grad(lambda x_: jnp.sum(critic(x_)))(x)
  return jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1) + 1e-12)


def interpolates(real, fake, eps_B):
  """WGAN-GP's x_hat = eps x + (1 - eps) G(z), one eps per example."""
  eps = eps_B.reshape((-1,) + (1,) * (real.ndim - 1))
  return eps * real + (1.0 - eps) * fake


def wgan_gp_penalty(critic, real, fake, eps_B):
  norms_B = input_gradient_norms(critic, interpolates(real, fake, eps_B))
  return jnp.mean(jnp.square(norms_B - 1.0))


def r1_penalty(critic, real):
  """E[||grad D(x)||^2] on real data (multiply by gamma / 2)."""
  return jnp.mean(jnp.square(input_gradient_norms(critic, real)))


def pack(x, m: int):
  """PacGAN: [B, ..., C] -> [B/m, ..., m*C], consecutive examples side by side on the last axis (B % m == 0)."""
  if m == 1:
    return x
  b = x.shape[0]
  x = x.reshape((b // m, m) + x.shape[1:])
  # Move the pack axis next to the last axis, then merge: example k of a pack fills channels k*C..(k+1)*C-1.
  x = jnp.moveaxis(x, 1, -2)
  return x.reshape(x.shape[:-2] + (m * x.shape[-1],))


def classification_loss(aux_logits_BxK, labels_B):
  """Mean cross-entropy of AC-GAN's auxiliary classifier."""
  logp = jax.nn.log_softmax(aux_logits_BxK.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels_B[:, None], axis=-1))
