"""Synthetic 2-D mixtures of Gaussians, the mode-collapse benchmarks of Unrolled GAN (Metz et al. 2017),
VEEGAN (Srivastava et al. 2017, Table 1) and PacGAN (Lin et al. 2018, Table 1).

  data.name=ring   `num_modes` equal-weight Gaussians on a circle of `radius`, angles 2*pi*k/num_modes
  data.name=grid   num_modes = s*s Gaussians at (i, j) * spacing for i, j in -(s-1)/2 .. (s-1)/2

Defaults are PacGAN's reference code (github fjxmlzn/PacGAN, synthetic_data_experiments/2DRing_GAN&PacGAN and
2DGrid_GAN&PacGAN config.py): ring 8 modes, radius 1, std 0.01 (variance 0.01^2); grid 25 modes at
{-4, -2, 0, 2, 4}^2 (spacing 2), std 0.05. A key left at 0 takes its source's default, so switching
data.name between ring and grid never carries one benchmark's std into the other.

Two sources rather than one with a `data.mixture` switch: `data.radius` means nothing to a grid and
`data.spacing` nothing to a ring, and with one source per layout the registry's key check
(registry.check_set_keys) makes setting the other layout's key an error instead of silently ignoring it.

Batches are {"points": float32 [B, 2], "label": int32 [B] (the mode each point was drawn from)}. The data
is infinite: global batch b of a split is drawn from numpy's generator seeded by (seed, split, b), so
`batch_at(b)` is a pure function of b (resume is exact, any host count sees the same global batch), and
"train" and "test" are independent streams of the same mixture. (PacGAN's code draws a fixed 100,000-point
set and reshuffles it every epoch; at two dimensions the two are the same distribution for any purpose here.)

`mixture(data_config)` gives the centres and std, which the mode_coverage evaluator scores samples against.
"""
import dataclasses
import math

import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data.pipeline import IndexedBatches
from aigc_jax.data.registry import DataSource, register_source
from aigc_jax.errors import UserError

DEFAULTS = {"ring": {"num_modes": 8, "radius": 1.0, "std": 0.01},
            "grid": {"num_modes": 25, "spacing": 2.0, "std": 0.05}}
SPLITS = ("train", "test")
_STREAM = {"train": 0, "test": 1}  # the split's entry in every batch's seed


@dataclasses.dataclass(frozen=True)
class Mixture:
  """An equal-weight mixture of isotropic Gaussians with one std: `centres_Kx2` and `std`."""
  name: str
  centres_Kx2: np.ndarray
  std: float
  split: str = "train"

  @property
  def num_modes(self) -> int:
    return len(self.centres_Kx2)

  def draw(self, rng: np.random.Generator, n: int):
    """(points float32 [n, 2], labels int32 [n]): a uniform mode, then its Gaussian."""
    labels = rng.integers(0, self.num_modes, size=n)
    points = self.centres_Kx2[labels] + self.std * rng.standard_normal((n, 2))
    return points.astype(np.float32), labels.astype(np.int32)


def _value(data: ConfigDict, name: str, key: str):
  """data.<key>, or the source's default when the config has no such key or leaves it at 0."""
  value = data.get(key, 0) or DEFAULTS[name][key]
  if value <= 0:
    raise UserError(f"data.{key} must be > 0 for data.name={name} (0 = the default "
                    f"{DEFAULTS[name][key]}), got {value}; set --config.data.{key}")
  return value


def mixture(data: ConfigDict, split: str = "train") -> Mixture:
  """The mixture `data.name` (ring or grid) describes, with the config's keys or the papers' defaults."""
  name = data.name
  if name not in DEFAULTS:
    raise UserError(f"data.name={name!r} is not a Gaussian mixture; use ring or grid")
  k, std = int(_value(data, name, "num_modes")), float(_value(data, name, "std"))
  if name == "ring":
    angles = 2.0 * np.pi * np.arange(k) / k
    centres = _value(data, name, "radius") * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  else:
    side = math.isqrt(k)
    if side * side != k:
      raise UserError(f"data.num_modes={k} is not a square, and a grid has side x side modes; set "
                      f"--config.data.num_modes to a square (e.g. {max(side, 1) ** 2} or {(side + 1) ** 2})")
    axis = (np.arange(side) - (side - 1) / 2.0) * _value(data, name, "spacing")
    centres = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
  return Mixture(name, centres.astype(np.float64), std, split)


def load(data: ConfigDict, split: str) -> Mixture:
  if split not in SPLITS:
    raise UserError(f"data.name={data.name} has splits {list(SPLITS)}, not {split!r}; set --config.data.split "
                    "(or the eval split key that named it)")
  return mixture(data, split)


class MixtureBatches(IndexedBatches):
  """Host-local {"points": f32 [L, 2], "label": i32 [L]}; global batch b is drawn from a generator seeded by
  (seed, split, b) and sliced by host. Same interface as pipeline.BatchIterator."""

  def __init__(self, source: Mixture, global_batch_size: int, seed: int, **kwargs):
    super().__init__(global_batch_size, **kwargs)
    self._mixture = source
    self._seed = seed

  def batch_at(self, batch_index: int) -> dict:
    rng = np.random.default_rng([self._seed, _STREAM[self._mixture.split], batch_index])
    points, labels = self._mixture.draw(rng, self._global)
    rows = slice(self._host_offset, self._host_offset + self._local)
    return {"points": points[rows], "label": labels[rows]}


def make_iterator(config: ConfigDict, source: Mixture, start_batch: int = 0) -> MixtureBatches:
  import jax  # host topology; the rest of the module stays importable without jax
  return MixtureBatches(source, config.batch_size, config.seed, process_index=jax.process_index(),
                        process_count=jax.process_count(), start_batch=start_batch)


def example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  del config
  return {"points": np.zeros((batch_size, 2), np.float32), "label": np.zeros((batch_size,), np.int32)}


def describe(source: Mixture) -> str:
  spread = np.abs(source.centres_Kx2).max()
  return (f"infinite 2-D points: {source.num_modes} Gaussians ({source.name}, std {source.std:g}, centres "
          f"within +-{spread:g})")


_DOCS = {"ring": "synthetic: 8 Gaussians on a circle (data.num_modes, data.radius, data.std), infinite",
         "grid": "synthetic: 5x5 grid of Gaussians (data.num_modes, data.spacing, data.std), infinite"}
for _name, _defaults in DEFAULTS.items():
  register_source(DataSource(name=_name, medium="points", keys=tuple(_defaults), load=load,
                             make_iterator=make_iterator, example_batch=example_batch, splits=SPLITS,
                             describe=describe, doc=_DOCS[_name]))
