"""Mode collapse on 2-D mixtures of Gaussians: GAN and PacGAN (Lin et al., "PacGAN: The power of two samples in
generative adversarial networks", NeurIPS 2018, Table 1), the benchmark of VEEGAN (Srivastava et al. 2017,
Table 1) and Unrolled GAN.

Data (data/sources/gaussian_mixtures.py): `ring` = 8 Gaussians on the unit circle, std 0.01; `grid` = 25
Gaussians at {-4, -2, 0, 2, 4}^2, std 0.05. Metrics (evaluation/evaluators/mode_coverage.py) on 2,500 samples:
modes captured (a mode counts when it is the nearest centre of at least one sample within 3 std of it), the
share of high-quality samples (within 3 std of their nearest mode), and the reverse KL of the high-quality
samples' mode histogram from the uniform one.

Settings: PacGAN's reference code (github fjxmlzn/PacGAN, synthetic_data_experiments/2DRing_GAN&PacGAN and
2DGrid_GAN&PacGAN: config.py and pacgan_task.py), the same for ring and grid:
  G: 2-d standard normal noise -> 4 x [linear 400 (no bias) -> batch norm -> ReLU] -> linear 2;
  D: 3 x maxout(200 units, 5 pieces) -> linear logit, no dropout; input: `pack` points side by side;
  weights ~ N(0, 0.02), biases 0; Adam lr 1e-4, beta1 0.8; loss -log D(x) - log(1 - D(G(z))) for D and
  -log D(G(z)) for G; a batch is 100 packed D inputs, so 100 * pack real and 100 * pack generated points;
  400 epochs of a 100,000-point set = 400,000 updates; 10 runs per setting (Table 1: mean +- standard error).
Where ours differs from that code: the code updates D and G simultaneously from the same generated batch (one
gradient evaluation, ALI's training algorithm); here D steps first and G then steps against the updated D with
fresh noise (the gan family's order). The code normalises each pack slot's 100 generated points as its own
batch; here batch norm sees all 100 * pack. The code samples with batch norm's population statistics; here with
the statistics of the 2,500 samples (one eval chunk; the gan family samples in training mode). Data: infinite
draws instead of a fixed 100,000-point set.

Published rows (modes captured / high-quality samples / reverse KL), checked against PacGAN's Table 1 as its
repository shows it (synthetic_data_experiments/results/Table1.png) and VEEGAN's Table 1 as its project page
shows it (github akashgit/VEEGAN, tab.png):

  | PacGAN Table 1 (10 runs, +- s.e.) | 2D-ring modes (of 8) | high quality | reverse KL | 2D-grid modes (of 25) | high quality | reverse KL |
  |---|---|---|---|---|---|---|
  | GAN      | 6.3 +- 0.5 | 98.2 +- 0.2 % | 0.45 +- 0.09 | 17.3 +- 0.8 | 94.8 +- 0.7 % | 0.70 +- 0.07 |
  | ALI      | 6.6 +- 0.3 | 97.6 +- 0.4 % | 0.36 +- 0.04 | 24.1 +- 0.4 | 95.7 +- 0.6 % | 0.14 +- 0.03 |
  | PacGAN2  | 7.9 +- 0.1 | 95.6 +- 2.0 % | 0.07 +- 0.03 | 23.8 +- 0.7 | 91.3 +- 0.8 % | 0.13 +- 0.04 |
  | PacGAN3  | 7.8 +- 0.1 | 97.7 +- 0.3 % | 0.10 +- 0.02 | 24.6 +- 0.4 | 94.2 +- 0.4 % | 0.06 +- 0.02 |
  | PacGAN4  | 7.8 +- 0.1 | 95.9 +- 1.4 % | 0.07 +- 0.02 | 24.8 +- 0.2 | 93.6 +- 0.6 % | 0.04 +- 0.01 |

  | VEEGAN Table 1 (5 runs, its own smaller nets) | ring modes | high quality | grid modes | high quality |
  |---|---|---|---|---|
  | GAN          | 1   | 99.3 % | 3.3  | 0.5 % |
  | ALI          | 2.8 | 0.13 % | 15.8 | 1.6 % |
  | Unrolled GAN | 7.6 | 35.6 % | 23.6 | 16 %  |
  | VEEGAN       | 8   | 52.9 % | 24.6 | 40 %  |

Presets: `ring`, `grid` (GAN) and `ring_pac<m>`, `grid_pac<m>` for m = 2, 3, 4 (PacGAN<m>), each with the
paper's 400,000 steps; add `_cpu` (e.g. `ring_pac2_cpu`) for the shortened run measured below.

  python -m aigc_jax.main --config=experiments/gan_2d.py:ring_pac2_cpu --workdir=runs/ring_pac2 --config.seed=1

Ours (bench/RESULTS.md has the commands): the `_cpu` presets at 5,000 steps (1.25% of the paper's 400,000),
3 seeds (0, 1, 2), 2026-11-26, 2-core AMD EPYC VM under load; mean (per-seed values).

  | ours, 5,000 steps | modes | high quality | reverse KL |
  |---|---|---|---|
  | ring, GAN      | 7.7 (7, 8, 8)   | 66.5 % (62.7, 86.2, 50.7) | 0.25 (0.37, 0.05, 0.33) |
  | ring, PacGAN2  | 8.0 (8, 8, 8)   | 64.4 % (66.9, 54.0, 72.4) | 0.23 (0.11, 0.56, 0.04) |
  | grid, GAN      | 15.0 (12, 18, 15) | 8.4 % (3.9, 13.9, 7.3)  | 1.08 (1.08, 1.20, 0.96) |
  | grid, PacGAN2  | 12.7 (17, 12, 9)  | 1.7 % (2.1, 1.5, 1.4)   | 0.95 (0.68, 1.08, 1.11) |

At 5,000 steps the generators have not yet sharpened onto the modes (high-quality shares far below the papers'
~95%), so these runs do not reproduce Table 1 yet: they are the first 1.25% of it. Continued runs (seed 0 only):
grid GAN 20 modes / 39.2% at 10,000 steps, 22 / 57.1% at 15,000, 21 / 57.4% at 20,000; grid PacGAN2 14 / 3.7%
at 10,000, 17 / 12.7% at 15,000: still rising. The paper-length presets
(`ring`, `grid`, `*_pac<m>`, 400,000 steps) are the ones to run for the comparison.
"""
import re

from aigc_jax.configs import lock
from aigc_jax.families import gan

PAPER_STEPS = 400_000  # 400 epochs x (100,000 points / 100 per batch)
CPU_STEPS = 5_000      # what the contended 2-core CPU allowed for 12 runs (see the table)


def get_config(preset: str = "ring"):
  match = re.fullmatch(r"(ring|grid)(?:_pac([2-9]))?(_cpu)?", preset)
  if not match:
    raise ValueError(f"unknown preset {preset!r}; use ring or grid, optionally with _pac2/_pac3/_pac4 and _cpu "
                     "(e.g. ring_pac2_cpu)")
  mixture, pack, cpu = match.group(1), int(match.group(2) or 1), bool(match.group(3))
  c = gan.default_config()
  c.data.name = mixture            # ring: 8 modes, radius 1, std 0.01; grid: 5x5, spacing 2, std 0.05
  c.model.arch = "points_mlp"
  c.model.z_dim = 2
  c.model.noise = "normal"
  c.model.loss = "non_saturating"
  c.model.pack = pack
  c.model.g_hidden = (400, 400, 400, 400)
  c.model.d_hidden = (200, 200, 200)
  c.model.d_pieces = 5
  c.batch_size = 100 * pack        # 100 packed discriminator inputs per step
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.8
  c.num_train_steps = CPU_STEPS if cpu else PAPER_STEPS
  every = min(10_000, c.num_train_steps)  # checkpoint, scatter plot and evaluation, also at the last step
  c.log_every_steps = 500
  c.checkpoint_every_steps = every
  c.sample_every_steps = every
  c.sample.num = 2500              # the papers' scatter plots and metrics use 2,500 samples
  c.sample.use_ema = False         # the papers sample the trained generator itself
  c.eval.metrics = ("mode_coverage",)
  c.eval.num_samples = 2500
  c.eval.batch_size = 2500         # one chunk: batch norm sees all 2,500 samples at once
  c.eval.every_steps = every
  return lock(c)
