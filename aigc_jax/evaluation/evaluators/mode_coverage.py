"""mode_coverage: how many modes of a known mixture of Gaussians the samples cover, and how well.

The measures of VEEGAN (Srivastava et al. 2017, Section 5.1 and Table 1) that PacGAN (Lin et al. 2018,
Table 1) reuses on the 2-D ring and grid (data/sources/gaussian_mixtures.py):

  a sample is high quality when it lies within 3 standard deviations of its nearest mode centre
      (PacGAN's reference code: Mahalanobis distance sqrt(sum(d^2 / var)) < 3, with every mode's variance
      std^2; with one isotropic std the nearest centre by that distance is the nearest by Euclidean distance);
  modes covered = the number of mixture components that are the nearest centre of at least one high-quality
      sample;
  high quality = the share of all samples that are high quality;
  reverse KL = KL(p || uniform) = sum_k p_k log(K p_k), with p the histogram of the high-quality samples over
      the K modes (0 log 0 = 0). PacGAN Table 1 reports a "reverse KL"; its reference code ships JSD against
      the uniform distribution instead, so this form ("reverse": the generated distribution first, finite
      when modes are missing) is our reading of the name, not a formula we could check in the paper. It is
      null when no sample is high quality.

Both papers generate 2,500 samples (VEEGAN: "We generate 2500 samples from each trained model"; PacGAN's
code: num_log_figure_sample 2500): set eval.num_samples=2500 to compare with them. The card also scores the
same number of real points from the source's test split under the same rules: the ceiling (a real 2-D
Gaussian point is within 3 std with probability 1 - exp(-9/2) = 0.9889).

Resumable: `record` keeps each chunk's nearest-mode index (-1 when not high quality); `absorb` only adds counts.
"""
import math

import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.data.sources import gaussian_mixtures
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator

NAME = "mode_coverage"
HIGH_QUALITY_STDS = 3.0  # VEEGAN Section 5.1; PacGAN code MetricLogger(dis_thre=3)


def check(config, family):
  del family
  if config.data.name not in gaussian_mixtures.DEFAULTS:
    raise UserError(f"eval.metrics has {NAME!r}, which needs known mode centres, and data.name="
                    f"{config.data.name!r} has none; use data.name ring or grid, or remove {NAME!r} from eval.metrics")


def nearest_modes(points_NxD, centres_KxD, std: float, threshold: float = HIGH_QUALITY_STDS) -> np.ndarray:
  """int32 [N]: the index of each point's nearest centre when it is within `threshold` std of it, else -1
  (non-finite points are never high quality)."""
  x = np.asarray(points_NxD, np.float64)
  d2 = ((x[:, None, :] - np.asarray(centres_KxD, np.float64)[None]) ** 2).sum(-1) / std ** 2  # [N, K]
  d2 = np.where(np.isfinite(d2), d2, np.inf)
  nearest = np.argmin(d2, axis=1)
  within = d2[np.arange(len(x)), nearest] < threshold ** 2
  return np.where(within, nearest, -1).astype(np.int32)


def coverage(modes_N, num_modes: int) -> dict:
  """The measures from per-sample mode indices (-1 = not high quality)."""
  modes_N = np.asarray(modes_N)
  counts = np.bincount(modes_N[modes_N >= 0], minlength=num_modes)
  return measures(counts, len(modes_N))


def measures(counts_K, num_samples: int) -> dict:
  counts_K = np.asarray(counts_K, np.int64)
  good = int(counts_K.sum())
  reverse_kl = None
  if good:
    p = counts_K[counts_K > 0] / good
    reverse_kl = float(np.sum(p * np.log(p * len(counts_K))))
  return {"modes_covered": int((counts_K > 0).sum()), "high_quality": good / num_samples if num_samples else 0.0,
          "mode_reverse_kl": reverse_kl}


class ModeCoverage:
  record_key = NAME

  def __init__(self, ctx: EvalContext):
    config = ctx.config
    check(config, ctx.family)
    self.config = config
    self.mixture = gaussian_mixtures.mixture(config.data)
    self.counts = np.zeros(self.mixture.num_modes, np.int64)
    self.num_samples = 0
    # The ceiling: real points of the test split, as many as the samples, scored by the same rules.
    real = gaussian_mixtures.mixture(config.data, "test")
    real_points, _ = real.draw(np.random.default_rng([config.eval.seed, 1]), config.eval.num_samples)
    self.real = coverage(nearest_modes(real_points, real.centres_Kx2, real.std), real.num_modes)
    ctx.note("quantization", "none (float32 points)", weak=True)
    ctx.note("resize", "none (points)", weak=True)
    ctx.note("num_reference", int(config.eval.num_samples), weak=True)
    ctx.note("reference_split", "test", weak=True)

  def record(self, samples: dict) -> dict:
    if "points" not in samples:
      raise UserError(f"family {self.config.family!r} samples {sorted(samples)}, not points; {NAME} scores 2-D "
                      f"points; remove {NAME!r} from eval.metrics")
    points = np.asarray(samples["points"], np.float32)
    if points.ndim != 2 or points.shape[1] != self.mixture.centres_Kx2.shape[1]:
      raise UserError(f"{NAME} needs points [N, 2] like data.name={self.config.data.name}'s, got shape "
                      f"{points.shape}; the generator's output size must be 2")
    return {"mode": nearest_modes(points, self.mixture.centres_Kx2, self.mixture.std)}

  def absorb(self, record: dict):
    modes = np.asarray(record["mode"])
    self.counts += np.bincount(modes[modes >= 0], minlength=self.mixture.num_modes)
    self.num_samples += len(modes)

  def finish(self):
    values = measures(self.counts, self.num_samples)
    mix = self.mixture
    section = {
        "rules": (f"high quality: within {HIGH_QUALITY_STDS:g} std (Mahalanobis, mode variance std^2) of the nearest "
                  "mode centre; modes covered: centres nearest to >= 1 high-quality sample; high_quality: share of "
                  "all samples; mode_reverse_kl: KL(histogram of high-quality samples over modes || uniform), "
                  "natural log"),
        "source": "VEEGAN (Srivastava et al. 2017) Section 5.1 / Table 1; PacGAN (Lin et al. 2018) Table 1",
        "compare_with": "both papers score 2,500 samples per trained model (eval.num_samples=2500)",
        "mixture": {"name": mix.name, "num_modes": mix.num_modes, "std": mix.std,
                    "centres": np.round(mix.centres_Kx2, 6).tolist()},
        "num_samples": int(self.num_samples),
        "per_mode_counts": self.counts.tolist(),
        "real_test_points": {**self.real, "expected_high_quality": 1.0 - math.exp(-HIGH_QUALITY_STDS ** 2 / 2)},
    }
    return values, {NAME: section}


register_evaluator(Evaluator(
    name=NAME, media=("points",), check=check, start=ModeCoverage,
    doc="modes covered, share of high-quality samples (within 3 std) and reverse KL on a 2-D mixture of Gaussians"))
