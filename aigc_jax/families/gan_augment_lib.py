"""Discriminator augmentation for the GAN family: DiffAugment and ADA, as pure JAX functions (no parameters).

Both augment every image the discriminator sees, real and fake, in the discriminator's and the generator's
steps, with transforms that are differentiable w.r.t. the image, so the generator learns through them and
is not pushed to produce augmented-looking images ("leaking").

- DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"): the
  official policies of mit-han-lab/data-efficient-gans, each applied to every example:
  "color" = brightness + U(-0.5, 0.5), saturation x U(0, 2) about the per-pixel channel mean, contrast
  x U(0.5, 1.5) about the image mean; "translation" = an integer shift of up to 1/8 of the height and width
  (H // 8, W // 8) in each direction, zero padded; "cutout" = a zeroed (H // 2) x (W // 2) square at a
  uniformly drawn centre (it may stick out of the image).
- ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", Appendix B; the
  official stylegan2-ada augment.py): the "bgc" pipeline, each transformation applied to an example with
  probability p and the paper's default strengths. Blitting: x-flip, 90-degree rotations, integer
  translation by up to 1/8 of the image. General geometric: isotropic scaling (log2 std 0.2), rotation
  (uniform over the full circle, split into a pre- and post-rotation each with probability 1 - sqrt(1 - p)),
  anisotropic scaling (log2 std 0.2), fractional translation (std 1/8). Colour: brightness (std 0.2),
  contrast (log2 std 0.5), luma flip, hue rotation (full circle), saturation (log2 std 1); hue and
  saturation only for RGB, as the official code. NOT implemented: the official 2x upsampling with a sym6
  wavelet filter around the geometric resampling (we resample once, bilinearly, with reflection at the
  borders, so rotations and scalings alias a little more), and the "filter", "noise" and "cutout" groups.
  The adaptive p: r_t = E[sign(D(real))] over the global batch; every `interval` steps
  p += sign(r_t - target) * images / speed_images, clipped to [0, 1] (paper: target 0.6, every 4
  minibatches, p can go 0 -> 1 in 500k images).

Randomness is per example: every function takes one key per example (`keys_Bx2`, typed keys or raw [B, 2]
uint32 keys), which the family derives from global example indices, so an example's transform does not
depend on how the batch is split across devices, nor on the other examples. Images are in [-1, 1], NHWC.
"""
import math

import jax
import jax.numpy as jnp
import jax.scipy.special

DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")

# ADA "bgc" strengths (augment.py defaults, the paper's Appendix B).
ADA_XINT_MAX = 0.125        # integer translation, relative to the image size
ADA_SCALE_STD = 0.2         # log2 std of isotropic scaling
ADA_ROTATE_MAX = 1.0        # rotation range, 1 = full circle
ADA_ANISO_STD = 0.2         # log2 std of anisotropic scaling
ADA_XFRAC_STD = 0.125       # fractional translation std, relative to the image size
ADA_BRIGHTNESS_STD = 0.2
ADA_CONTRAST_STD = 0.5      # log2 std
ADA_HUE_MAX = 1.0           # 1 = full circle
ADA_SATURATION_STD = 1.0    # log2 std

# The ADA controller's defaults (paper Section 3; training_loop.py).
ADA_TARGET = 0.6
ADA_INTERVAL = 4
ADA_SPEED_IMAGES = 500_000


def check_policy(policy) -> tuple:
  """The policy as a tuple of known names (a ValueError naming the known ones otherwise)."""
  policy = tuple(policy)
  unknown = [p for p in policy if p not in DIFFAUGMENT_POLICIES]
  if unknown:
    raise ValueError(f"unknown DiffAugment policy {unknown}; known: {', '.join(DIFFAUGMENT_POLICIES)}")
  return policy


# ------------------------------------------------------------------------------------------------ DiffAugment

def _uniform_int(u, low: int, high: int):
  """An integer uniform in [low, high) from a uniform u in [0, 1)."""
  return jnp.minimum(jnp.floor(u * (high - low)).astype(jnp.int32), high - low - 1) + low


def _color(x_HxWxC, u_3):
  x = x_HxWxC + (u_3[0] - 0.5)
  mean_c = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - mean_c) * (u_3[1] * 2.0) + mean_c
  mean = jnp.mean(x)
  return (x - mean) * (u_3[2] + 0.5) + mean


def _translation(x_HxWxC, u_2):
  """out[i, j] = x[i + ty, j + tx] where that pixel exists, else 0; ty, tx uniform integers in
  [-H // 8, H // 8], [-W // 8, W // 8] (the official code's zero-padded gather)."""
  h, w, _ = x_HxWxC.shape
  ty = _uniform_int(u_2[0], -(h // 8), h // 8 + 1)
  tx = _uniform_int(u_2[1], -(w // 8), w // 8 + 1)
  rows, cols = jnp.arange(h) + ty, jnp.arange(w) + tx
  valid_HxW = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
  moved = jnp.take(jnp.take(x_HxWxC, jnp.clip(rows, 0, h - 1), axis=0), jnp.clip(cols, 0, w - 1), axis=1)
  return jnp.where(valid_HxW[..., None], moved, 0.0)


def _cutout(x_HxWxC, u_2):
  """Zeroes rows [oy - sh // 2, oy - sh // 2 + sh) x columns likewise, sh = H // 2, the centre oy uniform in
  [0, H + 1 - sh % 2) (as the official code; the square is clipped at the borders)."""
  h, w, _ = x_HxWxC.shape
  sh, sw = h // 2, w // 2
  top = _uniform_int(u_2[0], 0, h + (1 - sh % 2)) - sh // 2
  left = _uniform_int(u_2[1], 0, w + (1 - sw % 2)) - sw // 2
  rows, cols = jnp.arange(h), jnp.arange(w)
  inside_HxW = ((rows >= top) & (rows < top + sh))[:, None] & ((cols >= left) & (cols < left + sw))[None, :]
  return x_HxWxC * jnp.where(inside_HxW, 0.0, 1.0)[..., None].astype(x_HxWxC.dtype)


# name -> (function, slice of the example's uniforms it reads): fixed slots, so adding a policy does not change
# what the others draw. One draw per example (few threefry calls keep the step's compile time small).
_DIFFAUGMENT_OPS = {"color": (_color, slice(0, 3)), "translation": (_translation, slice(3, 5)),
                    "cutout": (_cutout, slice(5, 7))}
_DIFFAUGMENT_DRAWS = 7


def diffaugment(x_BxHxWxC, keys_Bx2, policy: tuple):
  """DiffAugment with `policy` (names of DIFFAUGMENT_POLICIES, applied in the given order); () = identity.
  Example b's transform depends on keys_Bx2[b] alone."""
  policy = check_policy(policy)
  if not policy:
    return x_BxHxWxC

  def one(x, key):
    u = jax.random.uniform(key, (_DIFFAUGMENT_DRAWS,))
    for name in policy:
      op, slot = _DIFFAUGMENT_OPS[name]
      x = op(x, u[slot])
    return x

  return jax.vmap(one)(x_BxHxWxC, keys_Bx2)


# -------------------------------------------------------------------------------------------------------- ADA

def _reflect(u, n: int):
  """Mirrors continuous pixel coordinates into [0, n - 1] (reflection without repeating the edge pixel, as
  torch's 'reflect' padding: -1 -> 1, n -> n - 2)."""
  if n == 1:
    return jnp.zeros_like(u)
  period = 2.0 * (n - 1)
  return (n - 1) - jnp.abs(jnp.mod(u, period) - (n - 1))


def affine_sample(x_HxWxC, g_inv_3x3):
  """Bilinear resampling: out at pixel (i, j) = x at G_inv @ (j - cx, i - cy, 1) + (cx, cy), coordinates
  relative to the image centre (cx, cy) = ((W - 1) / 2, (H - 1) / 2), mirrored at the borders. Identity,
  flips, 90-degree rotations (square images) and integer translations land on pixel centres and copy pixels
  exactly. Differentiable w.r.t. x (a weighted gather)."""
  h, w, c = x_HxWxC.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  xc, yc = jj - cx, ii - cy
  u = _reflect(g_inv_3x3[0, 0] * xc + g_inv_3x3[0, 1] * yc + g_inv_3x3[0, 2] + cx, w)
  v = _reflect(g_inv_3x3[1, 0] * xc + g_inv_3x3[1, 1] * yc + g_inv_3x3[1, 2] + cy, h)
  u0f, v0f = jnp.floor(u), jnp.floor(v)
  fu, fv = (u - u0f)[..., None], (v - v0f)[..., None]
  u0 = jnp.clip(u0f.astype(jnp.int32), 0, w - 1)
  v0 = jnp.clip(v0f.astype(jnp.int32), 0, h - 1)
  u1, v1 = jnp.minimum(u0 + 1, w - 1), jnp.minimum(v0 + 1, h - 1)
  flat = x_HxWxC.reshape(h * w, c)
  at = lambda r, q: jnp.take(flat, r * w + q, axis=0)  # [H, W, C]
  return ((1 - fv) * ((1 - fu) * at(v0, u0) + fu * at(v0, u1)) +
          fv * ((1 - fu) * at(v1, u0) + fu * at(v1, u1)))


def _geometric_matrix(u, z, p, h: int, w: int):
  """G_inv (output pixel -> input pixel, centred coordinates) of the blit and general geometric groups, from
  uniforms u[0:14] and normals z[0:4]: the product, in this order, of the inverses of x-flip, 90-degree
  rotation, integer translation, isotropic scaling, pre-rotation, anisotropic scaling, post-rotation and
  fractional translation, each replaced by the identity where not applied. Built as one [8, 3, 3] stack
  (a few vector ops instead of dozens of scalar ones: the train step compiles faster)."""
  flip = 1.0 - 2.0 * jnp.floor(u[1] * 2)  # with probability p, flip with probability 1/2
  quarter = jnp.minimum(jnp.floor(u[3] * 4).astype(jnp.int32), 3)  # exact cos/sin: 90-degree turns copy pixels
  cos90, sin90 = jnp.array([1.0, 0.0, -1.0, 0.0])[quarter], jnp.array([0.0, 1.0, 0.0, -1.0])[quarter]
  shift = -jnp.round((u[5:7] * 2 - 1) * ADA_XINT_MAX * jnp.array([w, h]))
  scale = jnp.exp2(z[0] * ADA_SCALE_STD)
  theta = (u[jnp.array([9, 12])] * 2 - 1) * math.pi * ADA_ROTATE_MAX  # pre- and post-rotation
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  aniso = jnp.exp2(z[1] * ADA_ANISO_STD)
  frac = -z[2:4] * ADA_XFRAC_STD * jnp.array([w, h])
  zero, one = jnp.zeros(()), jnp.ones(())
  a11 = jnp.stack([flip, cos90, one, 1 / scale, cos[0], 1 / aniso, cos[1], one])
  a12 = jnp.stack([zero, -sin90, zero, zero, -sin[0], zero, -sin[1], zero])
  a21 = jnp.stack([zero, sin90, zero, zero, sin[0], zero, sin[1], zero])
  a22 = jnp.stack([one, cos90, one, 1 / scale, cos[0], aniso, cos[1], one])
  tx = jnp.stack([zero, zero, shift[0], zero, zero, zero, zero, frac[0]])
  ty = jnp.stack([zero, zero, shift[1], zero, zero, zero, zero, frac[1]])
  # Rotation is split into a pre- and a post-rotation, each with 1 - sqrt(1 - p): P(either) = p.
  p_rot = 1.0 - jnp.sqrt(jnp.clip(1.0 - p, 0.0, 1.0))
  applied = u[jnp.array([0, 2, 4, 7, 8, 10, 11, 13])] < jnp.stack([p, p, p, p, p_rot, p, p_rot, p])
  rows = jnp.stack([a11, a12, tx, a21, a22, ty, zero * a11, zero * a11, one + zero * a11], axis=-1)
  mats = jnp.where(applied[:, None], rows, jnp.eye(3).reshape(9)).reshape(8, 3, 3)
  g = mats[0]
  for i in range(1, 8):
    g = g @ mats[i]
  return g


def _color_matrix(u, z, p, channels: int):
  """C (homogeneous 4x4 on RGB) of the colour group from uniforms u[0:8] and normals z[0:3]; hue and
  saturation only for RGB."""
  eye = jnp.eye(4)
  luma = jnp.array([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3.0)
  vvt = jnp.outer(luma, luma)
  c_mat = jnp.where(u[0] < p, eye.at[:3, 3].set(z[0] * ADA_BRIGHTNESS_STD), eye)
  con = jnp.exp2(z[1] * ADA_CONTRAST_STD)
  c_mat = jnp.where(u[1] < p, jnp.diag(jnp.array([con, con, con, 1.0])), eye) @ c_mat
  flip = jnp.floor(u[3] * 2)
  c_mat = jnp.where(u[2] < p, eye - 2.0 * vvt * flip, eye) @ c_mat  # Householder reflection of the luma axis
  if channels > 1:
    theta = (u[5] * 2 - 1) * math.pi * ADA_HUE_MAX
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cross = jnp.array([[0.0, -luma[2], luma[1]], [luma[2], 0.0, -luma[0]], [-luma[1], luma[0], 0.0]])
    rot3 = cos * jnp.eye(3) + sin * cross + (1 - cos) * vvt[:3, :3]  # Rodrigues: rotation about the luma axis
    c_mat = jnp.where(u[4] < p, eye.at[:3, :3].set(rot3), eye) @ c_mat
    sat = jnp.exp2(z[2] * ADA_SATURATION_STD)
    c_mat = jnp.where(u[6] < p, vvt + (eye - vvt) * sat, eye) @ c_mat
  return c_mat


def ada_augment(x_BxHxWxC, keys_Bx2, p):
  """ADA's "bgc" pipeline (see the module docstring) with probability `p` (a 0-d array, may be traced) per
  transformation and example. p = 0 returns x unchanged, bit for bit. Images with 1 or 3 channels."""
  _, h, w, channels = x_BxHxWxC.shape
  if channels not in (1, 3):
    raise ValueError(f"ADA augments 1- or 3-channel images, got {channels} channels")
  p = jnp.asarray(p, jnp.float32)

  def one(x, key):
    # One draw per example, fixed slots per transformation (one threefry call keeps the compile small); the
    # normals by the inverse CDF, as jax.random.normal makes them.
    u = jax.random.uniform(key, (28,))
    u, z = u[:21], math.sqrt(2.0) * jax.scipy.special.erfinv(jnp.maximum(u[21:] * 2 - 1, -1 + 2.0 ** -23))
    x = affine_sample(x, _geometric_matrix(u[:14], z[:4], p, h, w).astype(x.dtype))
    c_mat = _color_matrix(u[14:], z[4:], p, channels).astype(x.dtype)
    if channels == 3:
      return x @ c_mat[:3, :3].T + c_mat[:3, 3]
    # Greyscale: the official code's mean of the RGB rows (a gain and an offset).
    return x * (jnp.sum(c_mat[:3, :3]) / 3.0) + jnp.sum(c_mat[:3, 3]) / 3.0

  return jax.vmap(one)(x_BxHxWxC, keys_Bx2)


# ------------------------------------------------------------------------------------------- ADA's adaptive p

def ada_init_state(p: float = 0.0) -> dict:
  """The controller's state, kept in the run state (so checkpointed): p and the running sum of sign(D(real))
  with its count since the last adjustment."""
  return {"p": jnp.asarray(p, jnp.float32), "sign_sum": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}


def ada_accumulate(ada: dict, real_logits_B, axis_name=None) -> dict:
  """Adds sum(sign(D(real))) and the number of logits of the GLOBAL batch (psum over `axis_name`, the
  family's "data" axis inside shard_map; None outside a mesh)."""
  logits = jax.lax.stop_gradient(jnp.asarray(real_logits_B, jnp.float32))
  total, count = jnp.sum(jnp.sign(logits)), jnp.asarray(logits.size, jnp.float32)
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return {**ada, "sign_sum": ada["sign_sum"] + total, "count": ada["count"] + count}


def ada_rt(ada: dict):
  """The overfitting heuristic r_t = E[sign(D(real))] of what was accumulated (0 when nothing was)."""
  return ada["sign_sum"] / jnp.maximum(ada["count"], 1.0)


def ada_adjust(ada: dict, images_seen_per_adjust, target: float = ADA_TARGET,
               speed_images: float = ADA_SPEED_IMAGES) -> dict:
  """p += sign(r_t - target) * images_seen_per_adjust / speed_images, clipped to [0, 1]; the accumulators
  restart. With nothing accumulated p stays. Jit-able (no Python branch on traced values)."""
  direction = jnp.where(ada["count"] > 0, jnp.sign(ada_rt(ada) - target), 0.0)
  p = jnp.clip(ada["p"] + direction * (jnp.asarray(images_seen_per_adjust, jnp.float32) / speed_images), 0.0, 1.0)
  return {"p": p.astype(jnp.float32), "sign_sum": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}


def ada_maybe_adjust(ada: dict, adjust_now, images_seen_per_adjust, target: float = ADA_TARGET,
                     speed_images: float = ADA_SPEED_IMAGES) -> dict:
  """`ada_adjust` where the traced boolean `adjust_now` holds (every `interval` steps), else `ada` as is."""
  adjusted = ada_adjust(ada, images_seen_per_adjust, target, speed_images)
  return jax.tree.map(lambda a, b: jnp.where(adjust_now, a, b), adjusted, ada)
