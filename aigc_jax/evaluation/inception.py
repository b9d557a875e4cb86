"""Inception-v3 as FID uses it, in Flax: the 2015-12-05 TensorFlow graph of TTUR, as ported by pytorch-fid.

It differs from the torchvision/Keras ImageNet model in the details FID depends on: average pools in the
Mixed blocks ignore padded pixels (TensorFlow's behaviour), the last block (Mixed_7c) pools with max
instead of average, and the classifier has 1008 outputs. `pool3` (2048-d) feeds FID/KID/PR, `logits` IS.

Weights come from a local file (`eval.inception_path`), never downloaded: the pytorch-fid state dict
`pt_inception-2015-12-05-6726825d.pth` (needs torch to read) or the same dict saved as .npz (see README).
Parameter names follow that state dict ("Mixed_5b.branch1x1.conv.weight", PyTorch layouts).
"""
import functools
import hashlib
import os
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax.errors import UserError

INPUT_SIZE = 299
NUM_LOGITS = 1008
BN_EPSILON = 1e-3


def _same(kernel):
  return tuple((k // 2, k // 2) for k in kernel)


# (name, features, kernel, strides, padding) per conv, in the order the reference implementations create
# them (the tests map weights by this order); the wiring lives in the block functions below.
STEM = (("Conv2d_1a_3x3", 32, (3, 3), 2, "VALID"), ("Conv2d_2a_3x3", 32, (3, 3), 1, "VALID"),
        ("Conv2d_2b_3x3", 64, (3, 3), 1, _same((3, 3))), ("Conv2d_3b_1x1", 80, (1, 1), 1, "VALID"),
        ("Conv2d_4a_3x3", 192, (3, 3), 1, "VALID"))


def block_a(pool_features):
  return (("branch1x1", 64, (1, 1)), ("branch5x5_1", 48, (1, 1)), ("branch5x5_2", 64, (5, 5)),
          ("branch3x3dbl_1", 64, (1, 1)), ("branch3x3dbl_2", 96, (3, 3)), ("branch3x3dbl_3", 96, (3, 3)),
          ("branch_pool", pool_features, (1, 1)))


def block_b(_):
  return (("branch3x3", 384, (3, 3), 2), ("branch3x3dbl_1", 64, (1, 1)), ("branch3x3dbl_2", 96, (3, 3)),
          ("branch3x3dbl_3", 96, (3, 3), 2))


def block_c(c7):
  return (("branch1x1", 192, (1, 1)), ("branch7x7_1", c7, (1, 1)), ("branch7x7_2", c7, (1, 7)),
          ("branch7x7_3", 192, (7, 1)), ("branch7x7dbl_1", c7, (1, 1)), ("branch7x7dbl_2", c7, (7, 1)),
          ("branch7x7dbl_3", c7, (1, 7)), ("branch7x7dbl_4", c7, (7, 1)), ("branch7x7dbl_5", 192, (1, 7)),
          ("branch_pool", 192, (1, 1)))


def block_d(_):
  return (("branch3x3_1", 192, (1, 1)), ("branch3x3_2", 320, (3, 3), 2), ("branch7x7x3_1", 192, (1, 1)),
          ("branch7x7x3_2", 192, (1, 7)), ("branch7x7x3_3", 192, (7, 1)), ("branch7x7x3_4", 192, (3, 3), 2))


def block_e(_):
  return (("branch1x1", 320, (1, 1)), ("branch3x3_1", 384, (1, 1)), ("branch3x3_2a", 384, (1, 3)),
          ("branch3x3_2b", 384, (3, 1)), ("branch3x3dbl_1", 448, (1, 1)), ("branch3x3dbl_2", 384, (3, 3)),
          ("branch3x3dbl_3a", 384, (1, 3)), ("branch3x3dbl_3b", 384, (3, 1)), ("branch_pool", 192, (1, 1)))


# (name, kind, argument): pool_features for "a", channels of the 7x7 branches for "c", the pooling of the
# branch_pool for "e" (None: FIDInceptionV3.last_block_pool decides).
BLOCKS = (("Mixed_5b", "a", 32), ("Mixed_5c", "a", 64), ("Mixed_5d", "a", 64), ("Mixed_6a", "b", None),
          ("Mixed_6b", "c", 128), ("Mixed_6c", "c", 160), ("Mixed_6d", "c", 160), ("Mixed_6e", "c", 192),
          ("Mixed_7a", "d", None), ("Mixed_7b", "e", "avg"), ("Mixed_7c", "e", None))
BLOCK_SPECS = {"a": block_a, "b": block_b, "c": block_c, "d": block_d, "e": block_e}


def conv_specs():
  """[(dotted name, features, kernel)] for every conv+BN unit, in creation order."""
  out = [(name, f, k) for name, f, k, _, _ in STEM]
  for block, kind, arg in BLOCKS:
    out += [(f"{block}.{spec[0]}", spec[1], spec[2]) for spec in BLOCK_SPECS[kind](arg)]
  return out


class ConvBN(nn.Module):
  """Conv (no bias) -> inference batch norm (eps 1e-3) -> ReLU, the unit every branch is made of."""
  features: int
  kernel: tuple
  strides: int = 1
  padding: object = "VALID"

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=self.padding, use_bias=False,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # TensorFlow's SAME average pool divides by the number of real pixels under the window.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class Block(nn.Module):
  kind: str
  arg: object

  @nn.compact
  def __call__(self, x):
    c = {}
    for spec in BLOCK_SPECS[self.kind](self.arg):
      name, features, kernel = spec[:3]
      strides = spec[3] if len(spec) > 3 else 1
      c[name] = ConvBN(features, kernel, strides, "VALID" if strides == 2 else _same(kernel), name=name)
    if self.kind == "a":
      return jnp.concatenate([
          c["branch1x1"](x), c["branch5x5_2"](c["branch5x5_1"](x)),
          c["branch3x3dbl_3"](c["branch3x3dbl_2"](c["branch3x3dbl_1"](x))),
          c["branch_pool"](_avg_pool_3x3(x))], axis=-1)
    if self.kind == "b":
      return jnp.concatenate([
          c["branch3x3"](x), c["branch3x3dbl_3"](c["branch3x3dbl_2"](c["branch3x3dbl_1"](x))),
          _max_pool_3x3_s2(x)], axis=-1)
    if self.kind == "c":
      b7 = c["branch7x7_3"](c["branch7x7_2"](c["branch7x7_1"](x)))
      d7 = x
      for i in range(1, 6):
        d7 = c[f"branch7x7dbl_{i}"](d7)
      return jnp.concatenate([c["branch1x1"](x), b7, d7, c["branch_pool"](_avg_pool_3x3(x))], axis=-1)
    if self.kind == "d":
      b3 = c["branch3x3_2"](c["branch3x3_1"](x))
      b7 = x
      for i in range(1, 5):
        b7 = c[f"branch7x7x3_{i}"](b7)
      return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)
    b3 = c["branch3x3_1"](x)
    d3 = c["branch3x3dbl_2"](c["branch3x3dbl_1"](x))
    # The FID graph's last block max-pools (pytorch-fid's FIDInceptionE_2); the one before averages.
    pooled = (nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))) if self.arg == "max" else _avg_pool_3x3(x))
    return jnp.concatenate([
        c["branch1x1"](x), c["branch3x3_2a"](b3), c["branch3x3_2b"](b3), c["branch3x3dbl_3a"](d3),
        c["branch3x3dbl_3b"](d3), c["branch_pool"](pooled)], axis=-1)


class FIDInceptionV3(nn.Module):
  """images_NxHxWx3 in [-1, 1] at any size >= 75 -> {"pool3": [N, 2048], "logits": [N, 1008],
  "logits_unbiased": [N, 1008]}.

  last_block_pool: "max" is the FID graph; "avg" gives the ImageNet Inception-v3 topology (Keras,
  torchvision), which the tests use to check this port against Keras with shared weights.
  logits_unbiased leaves out the fc bias: the Inception Score code of Salimans et al. multiplies pool3 by
  the softmax weights only, so IS uses these (as torch-fidelity and torchmetrics do).
  """
  last_block_pool: str = "max"

  @nn.compact
  def __call__(self, x):
    if self.last_block_pool not in ("max", "avg"):
      raise ValueError(f"last_block_pool must be 'max' or 'avg', got {self.last_block_pool!r}")
    for i, (name, features, kernel, strides, padding) in enumerate(STEM):
      x = ConvBN(features, kernel, strides, padding, name=name)(x)
      if i in (2, 4):
        x = _max_pool_3x3_s2(x)
    for name, kind, arg in BLOCKS:
      x = Block(kind, self.last_block_pool if arg is None and kind == "e" else arg, name=name)(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_LOGITS, name="fc")
    logits = fc(pool3)
    return {"pool3": pool3, "logits": logits, "logits_unbiased": pool3 @ fc.variables["params"]["kernel"]}


def preprocess(images_NxHxWxC, size: int = INPUT_SIZE):
  """[-1, 1] images at any resolution -> 299x299x3: bilinear with half-pixel centres and no antialiasing,
  as pytorch-fid's F.interpolate(align_corners=False); grayscale is repeated over RGB."""
  x = jnp.asarray(images_NxHxWxC, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)
  return x


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _read_state_dict(path: str) -> dict:
  if not path:
    raise UserError("eval.backbone='inception' needs the FID Inception weights: set --config.eval.inception_path "
                    "to pt_inception-2015-12-05-6726825d.pth or its .npz (README, 'FID Inception weights')")
  if not os.path.isfile(path):
    raise UserError(f"Inception weights file {path} not found; download pt_inception-2015-12-05-6726825d.pth "
                    "(README, 'FID Inception weights') and set --config.eval.inception_path to it")
  if path.endswith(".npz"):
    try:
      with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise UserError(f"cannot read Inception weights {path} ({type(e).__name__}: {_first_line(e)}); expected "
                      "an .npz of the pytorch-fid state dict (README, 'FID Inception weights')") from None
  try:
    import torch
  except ImportError:
    raise UserError(f"reading {path} needs torch; install it or convert the file once to .npz (README, "
                    "'FID Inception weights') and point eval.inception_path at the .npz") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
  except Exception as e:  # torch raises many types for foreign or truncated files
    raise UserError(f"cannot read Inception weights {path} ({type(e).__name__}: {_first_line(e)}); expected "
                    "pt_inception-2015-12-05-6726825d.pth or its .npz (README, 'FID Inception weights')") from None


def _first_line(error) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0][:200] if lines else ""


def params_from_state_dict(state: dict, source: str = "weights") -> dict:
  """pytorch-fid state dict (numpy, PyTorch layouts) -> Flax variables, checking every name and shape."""

  def take(key, shape, transpose=None, default=None):
    if key not in state:
      if default is not None:
        return default
      raise UserError(f"{source} has no {key!r}; it is not the pytorch-fid FID Inception state dict "
                      "(pt_inception-2015-12-05-6726825d.pth); fix eval.inception_path")
    value = np.asarray(state[key], np.float32)
    value = value.transpose(transpose) if transpose else value
    if value.shape != tuple(shape):
      raise UserError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(shape)}; this is not "
                      "the FID Inception-v3 (2015-12-05) weights file; fix eval.inception_path")
    return value

  params, stats = {}, {}
  for name, features, kernel in conv_specs():
    path = name.split(".")
    p, s = params, stats
    for part in path:
      p, s = p.setdefault(part, {}), s.setdefault(part, {})
    weight = state.get(f"{name}.conv.weight")
    cin = weight.shape[1] if weight is not None and np.ndim(weight) == 4 else -1
    p["conv"] = {"kernel": take(f"{name}.conv.weight", (*kernel, cin, features), (2, 3, 1, 0))}
    p["bn"] = {"scale": take(f"{name}.bn.weight", (features,), default=np.ones((features,), np.float32)),
               "bias": take(f"{name}.bn.bias", (features,))}
    s["bn"] = {"mean": take(f"{name}.bn.running_mean", (features,)),
               "var": take(f"{name}.bn.running_var", (features,))}
  params["fc"] = {"kernel": take("fc.weight", (2048, NUM_LOGITS), (1, 0)), "bias": take("fc.bias", (NUM_LOGITS,))}
  return {"params": params, "batch_stats": stats}


@functools.lru_cache(maxsize=1)
def _expected_shapes():
  """Every variable's shape, from a shape-only trace of the whole network (~1-2 CPU-s: traced once)."""
  expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  return jax.tree.map(lambda x: x.shape, expected)


def check_input_channels(variables: dict, source: str):
  """Input channels are read from the file itself above; verify them against a shape-only trace."""
  got = jax.tree.map(np.shape, variables)
  want = _expected_shapes()
  if got != want:
    bad = [str(jax.tree_util.keystr(p)) for (p, a), (_, b) in zip(
        jax.tree_util.tree_flatten_with_path(got, is_leaf=lambda x: isinstance(x, tuple))[0],
        jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, tuple))[0]) if a != b]
    raise UserError(f"{source}: wrong shapes at {bad[:3]}; this is not the FID Inception-v3 weights file; "
                    "fix eval.inception_path")


def weights_sha256(variables: dict) -> str:
  """SHA-256 of the weights themselves (names, shapes, float32 bytes), so the .pth and its .npz conversion
  give the same hash on the metric card."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0], key=lambda kv: str(kv[0])):
    value = np.ascontiguousarray(leaf, np.float32)
    h.update(f"{jax.tree_util.keystr(path)}{value.shape}".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def load_fid_inception(path: str):
  """(variables, {"weights_sha256", "file_sha256"}) for FIDInceptionV3 from a local weights file; UserError
  if unusable. pytorch-fid's .pth names its file by its own SHA-256 prefix (torch.hub convention): 6726825d."""
  variables = params_from_state_dict(_read_state_dict(path), source=path)
  check_input_channels(variables, path)
  return variables, {"weights_sha256": weights_sha256(variables), "file_sha256": file_sha256(path)}
