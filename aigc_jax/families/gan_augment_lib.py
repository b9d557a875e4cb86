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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special
from ml_collections import ConfigDict

from aigc_jax.errors import UserError

AUGMENTS = ("none", "diffaugment", "ada")
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
    return x.astype(x_BxHxWxC.dtype)  # the float32 draws would promote bfloat16 images

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
  exactly. Differentiable w.r.t. x (a weighted gather: one gather of the four taps)."""
  h, w, c = x_HxWxC.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  xc, yc = jj - cx, ii - cy
  u = _reflect(g_inv_3x3[0, 0] * xc + g_inv_3x3[0, 1] * yc + g_inv_3x3[0, 2] + cx, w)
  v = _reflect(g_inv_3x3[1, 0] * xc + g_inv_3x3[1, 1] * yc + g_inv_3x3[1, 2] + cy, h)
  u0f, v0f = jnp.floor(u), jnp.floor(v)
  fu, fv = u - u0f, v - v0f
  u0 = jnp.clip(u0f.astype(jnp.int32), 0, w - 1)
  v0 = jnp.clip(v0f.astype(jnp.int32), 0, h - 1)
  u1, v1 = jnp.minimum(u0 + 1, w - 1), jnp.minimum(v0 + 1, h - 1)
  taps_4xHxW = jnp.stack([v0 * w + u0, v0 * w + u1, v1 * w + u0, v1 * w + u1])
  weights_4xHxW = jnp.stack([(1 - fv) * (1 - fu), (1 - fv) * fu, fv * (1 - fu), fv * fu])
  gathered = jnp.take(x_HxWxC.reshape(h * w, c), taps_4xHxW, axis=0)  # [4, H, W, C]
  return jnp.sum(weights_4xHxW[..., None].astype(x_HxWxC.dtype) * gathered, axis=0)


def _geometric_matrices(u_Bx14, z_Bx4, p, h: int, w: int):
  """G_inv [B, 3, 3] (output pixel -> input pixel, centred coordinates): the product, in this order, of the
  inverses of x-flip, 90-degree rotation, integer translation, isotropic scaling, pre-rotation, anisotropic
  scaling, post-rotation and fractional translation, each with its parameter set to the identity's where not
  applied (so p = 0 gives exactly the identity). Written on [B] vectors in closed form: the translations only
  add a shift, so G_inv = [F R90 L, F R90 t_int + F R90 L t_frac] with L = S^-1 R_pre A^-1 R_post; far fewer
  ops than composing eight 3x3 matrices per example, which keeps the train step's compile time down."""
  u, z = u_Bx14, z_Bx4
  on = lambda slot, prob=p: u[:, slot] < prob
  flip = jnp.where(on(0), 1.0 - 2.0 * jnp.floor(u[:, 1] * 2), 1.0)  # with probability p, flip half the time
  quarter = jnp.where(on(2), jnp.minimum(jnp.floor(u[:, 3] * 4), 3), 0)
  cos90 = jnp.where(quarter == 0, 1.0, jnp.where(quarter == 2, -1.0, 0.0))  # exact, so that turns copy pixels
  sin90 = jnp.where(quarter == 1, 1.0, jnp.where(quarter == 3, -1.0, 0.0))
  size = jnp.array([w, h], jnp.float32)
  t_int = jnp.where(on(4)[:, None], -jnp.round((u[:, 5:7] * 2 - 1) * ADA_XINT_MAX * size), 0.0)
  scale = jnp.where(on(7), jnp.exp2(z[:, 0] * ADA_SCALE_STD), 1.0)
  # Rotation is split into a pre- and a post-rotation, each with 1 - sqrt(1 - p): P(either) = p.
  p_rot = 1.0 - jnp.sqrt(jnp.clip(1.0 - p, 0.0, 1.0))
  pre = jnp.where(on(8, p_rot), (u[:, 9] * 2 - 1) * math.pi * ADA_ROTATE_MAX, 0.0)
  aniso = jnp.where(on(10), jnp.exp2(z[:, 1] * ADA_ANISO_STD), 1.0)
  post = jnp.where(on(11, p_rot), (u[:, 12] * 2 - 1) * math.pi * ADA_ROTATE_MAX, 0.0)
  t_frac = jnp.where(on(13)[:, None], -z[:, 2:4] * ADA_XFRAC_STD * size, 0.0)
  # 2x2 products written out elementwise (no tiny matmul kernels): matrices as (a, b, c, d) = [[a, b], [c, d]].
  mul = lambda m, n: (m[0] * n[0] + m[1] * n[2], m[0] * n[1] + m[1] * n[3],
                      m[2] * n[0] + m[3] * n[2], m[2] * n[1] + m[3] * n[3])
  rotation = lambda t: (jnp.cos(t), -jnp.sin(t), jnp.sin(t), jnp.cos(t))
  blit = (flip * cos90, -flip * sin90, sin90, cos90)  # diag(flip, 1) @ R(90 q)
  r_pre = rotation(pre)
  general = mul((r_pre[0] / aniso, r_pre[1] * aniso, r_pre[2] / aniso, r_pre[3] * aniso), rotation(post))
  linear = [e / scale for e in mul(blit, general)]
  shift_x = blit[0] * t_int[:, 0] + blit[1] * t_int[:, 1] + linear[0] * t_frac[:, 0] + linear[1] * t_frac[:, 1]
  shift_y = blit[2] * t_int[:, 0] + blit[3] * t_int[:, 1] + linear[2] * t_frac[:, 0] + linear[3] * t_frac[:, 1]
  zero, one = jnp.zeros_like(flip), jnp.ones_like(flip)
  rows = [linear[0], linear[1], shift_x, linear[2], linear[3], shift_y, zero, zero, one]
  return jnp.stack(rows, axis=-1).reshape(-1, 3, 3)


def _ada_color(x_BxHxWxC, u_Bx7, z_Bx3, p):
  """The colour group: brightness b, contrast c, luma flip (Householder reflection H of the luma axis), hue
  rotation about it and saturation, composed as the official code's C = Sat Hue H diag(c) T(b): out = M x +
  M (b, b, b) with M = c Sat Hue H. Greyscale (hue and saturation skipped, the RGB rows averaged as the
  official code does) reduces to out = (1 - 2 flip) c (x + b)."""
  u, z = u_Bx7, z_Bx3
  on = lambda slot: u[:, slot] < p
  bright = jnp.where(on(0), z[:, 0] * ADA_BRIGHTNESS_STD, 0.0)
  contrast = jnp.where(on(1), jnp.exp2(z[:, 1] * ADA_CONTRAST_STD), 1.0)
  flip = jnp.where(on(2), jnp.floor(u[:, 3] * 2), 0.0)
  as4 = lambda v_B: v_B[:, None, None, None].astype(x_BxHxWxC.dtype)
  if x_BxHxWxC.shape[-1] == 1:
    return as4((1 - 2 * flip) * contrast) * (x_BxHxWxC + as4(bright))
  theta = jnp.where(on(4), (u[:, 5] * 2 - 1) * math.pi * ADA_HUE_MAX, 0.0)
  sat = jnp.where(on(6), jnp.exp2(z[:, 2] * ADA_SATURATION_STD), 1.0)
  eye, vvt = jnp.eye(3), jnp.full((3, 3), 1.0 / 3.0)  # v v^T of the unit luma axis v = (1, 1, 1) / sqrt(3)
  cross = jnp.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)  # [v]_x
  b3 = lambda v_B: v_B[:, None, None]
  householder = eye - 2.0 * b3(flip) * vvt
  hue = b3(jnp.cos(theta)) * eye + b3(jnp.sin(theta)) * cross + b3(1 - jnp.cos(theta)) * vvt  # Rodrigues
  saturation = eye + b3(sat - 1) * (eye - vvt)  # = v v^T + sat (I - v v^T), exactly I at sat = 1
  m = jnp.einsum("bij,bjk,bkl->bil", saturation, hue, householder) * b3(contrast)
  offset = bright[:, None] * jnp.sum(m, axis=-1)  # M (b, b, b)
  m, offset = m.astype(x_BxHxWxC.dtype), offset.astype(x_BxHxWxC.dtype)
  return jnp.einsum("bhwc,bdc->bhwd", x_BxHxWxC, m) + offset[:, None, None, :]


def ada_augment(x_BxHxWxC, keys_Bx2, p):
  """ADA's "bgc" pipeline (see the module docstring) with probability `p` (a 0-d array, may be traced) per
  transformation and example. p = 0 returns x unchanged, bit for bit. Images with 1 or 3 channels."""
  _, h, w, channels = x_BxHxWxC.shape
  if channels not in (1, 3):
    raise ValueError(f"ADA augments 1- or 3-channel images, got {channels} channels")
  p = jnp.asarray(p, jnp.float32)
  # One draw per example, fixed slots per transformation (one threefry call keeps the compile small); the
  # normals by the inverse CDF, as jax.random.normal makes them.
  u_Bx28 = jax.vmap(lambda k: jax.random.uniform(k, (28,)))(keys_Bx2)
  z_Bx7 = math.sqrt(2.0) * jax.scipy.special.erfinv(jnp.maximum(u_Bx28[:, 21:] * 2 - 1, -1 + 2.0 ** -23))
  g_inv = _geometric_matrices(u_Bx28[:, :14], z_Bx7[:, :4], p, h, w)  # float32 coordinates for any image dtype
  x = jax.vmap(affine_sample)(x_BxHxWxC, g_inv)
  return _ada_color(x, u_Bx28[:, 14:21], z_Bx7[:, 4:], p)


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


# ------------------------------------------------------------------------------------- wiring into the family

class Augmenter(NamedTuple):
  """What the GAN family calls (model.augment): `apply(x, keys_Bx2, ada)` before every discriminator call
  (real and fake, D steps and G step; `apply_both` for a real and a fake batch in one call, the same result
  as two, a smaller program); `init_state()` -> the run state's "ada" entry or None;
  `observe(ada, real_logits)` after each D step; `end_step(ada, step)` once per train step (adjusts p every
  model.ada_interval steps); `metrics(ada)` -> {"ada_p", "ada_rt"} or {}."""
  kind: str
  apply: Callable
  init_state: Callable
  observe: Callable
  end_step: Callable
  metrics: Callable

  def apply_both(self, x_a, keys_a, x_b, keys_b, ada):
    if self.kind == "none":
      return x_a, x_b
    both = self.apply(jnp.concatenate([x_a, x_b]), jnp.concatenate([keys_a, keys_b]), ada)
    return both[:x_a.shape[0]].astype(x_a.dtype), both[x_a.shape[0]:].astype(x_b.dtype)


def parse_policy(text: str) -> tuple:
  """"color,translation,cutout" -> ("color", "translation", "cutout"); a one-line UserError for unknown names."""
  policy = tuple(p.strip() for p in str(text).split(",") if p.strip())
  try:
    return check_policy(policy)
  except ValueError as e:
    raise UserError(f"model.diffaugment_policy={text!r}: {e}; set it to a comma-separated list of those") from None


def check_config(config: ConfigDict, changed: Callable):
  """One-line errors for a bad model.augment setting and for diffaugment_* / ada_* keys the chosen augment would
  ignore (`changed(keys)` -> those set away from the family's defaults)."""
  m = config.model
  if m.augment not in AUGMENTS:
    raise UserError(f"unknown model.augment {m.augment!r}; use one of {AUGMENTS}")
  for prefix, kind in (("diffaugment_", "diffaugment"), ("ada_", "ada")):
    ignored = changed([k for k in m.keys() if k.startswith(prefix)]) if m.augment != kind else []
    if ignored:
      raise UserError(f"model.{ignored[0]} only applies to model.augment={kind}; set --config.model.augment={kind} "
                      f"or leave model.{ignored[0]} at its default")
  if m.augment == "diffaugment" and not parse_policy(m.diffaugment_policy):
    raise UserError("model.diffaugment_policy is empty; name policies (color,translation,cutout) or set "
                    "model.augment=none")
  if m.augment == "ada":
    if config.data.channels not in (1, 3):
      raise UserError(f"model.augment=ada transforms 1- or 3-channel images, but data.channels="
                      f"{config.data.channels}; use model.augment=diffaugment or none")
    if not -1.0 < m.ada_target < 1.0:
      raise UserError(f"model.ada_target={m.ada_target} must lie in (-1, 1) (r_t = E[sign D(real)]; the paper "
                      "uses 0.6)")


def make_augmenter(config: ConfigDict, axis_name) -> Augmenter:
  """The Augmenter of config.model.augment; `axis_name`: the data axis the train step runs under (global r_t)."""
  m = config.model
  if m.augment == "ada":
    # Real images the discriminator sees between two adjustments (each step's d_steps batches).
    images = config.batch_size * m.d_steps * m.ada_interval

    def end_step(ada, step):
      return ada_maybe_adjust(ada, (step + 1) % m.ada_interval == 0, images, m.ada_target, m.ada_speed_images)

    return Augmenter(
        kind="ada", apply=lambda x, keys, ada: ada_augment(x, keys, ada["p"]), init_state=ada_init_state,
        observe=lambda ada, real_logits: ada_accumulate(ada, real_logits, axis_name), end_step=end_step,
        metrics=lambda ada: {"ada_p": ada["p"], "ada_rt": ada_rt(ada)})
  if m.augment == "diffaugment":
    policy = parse_policy(m.diffaugment_policy)
    apply = lambda x, keys, ada: diffaugment(x, keys, policy)
  else:
    apply = lambda x, keys, ada: x
  return Augmenter(kind=m.augment, apply=apply, init_state=lambda: None, observe=lambda ada, logits: ada,
                   end_step=lambda ada, step: ada, metrics=lambda ada: {})
