"""Sample-quality metrics over feature vectors: FID, KID, IS, precision/recall, Parzen log-likelihood.

Everything here takes host numpy arrays (features, logits or flattened pixels) so the metrics do not
depend on which backbone produced them. Statistics are accumulated in float64: FID is a small difference
of large traces and float32 covariances visibly move it in the second decimal.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


class RunningStats:
  """Mean and covariance of a stream of feature batches in float64, without holding the features."""

  def __init__(self, dim: int):
    self.count = 0
    self.sum_D = np.zeros((dim,), np.float64)
    self.outer_DxD = np.zeros((dim, dim), np.float64)

  def update(self, features_NxD: np.ndarray):
    f = np.asarray(features_NxD, np.float64)
    self.count += f.shape[0]
    self.sum_D += f.sum(axis=0)
    self.outer_DxD += f.T @ f

  def mean_and_cov(self):
    if self.count < 2:
      raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
    mu = self.sum_D / self.count
    # Unbiased (n - 1) covariance, as numpy.cov and the reference FID implementations use.
    cov = (self.outer_DxD - self.count * np.outer(mu, mu)) / (self.count - 1)
    return mu, cov


def feature_stats(features_NxD: np.ndarray):
  stats = RunningStats(features_NxD.shape[1])
  stats.update(features_NxD)
  return stats.mean_and_cov()


def _psd_sqrt(cov_DxD: np.ndarray) -> np.ndarray:
  """Symmetric square root of a covariance; tiny negative eigenvalues from round-off are clipped to 0."""
  w, v = np.linalg.eigh((cov_DxD + cov_DxD.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64.

  tr((S1 S2)^(1/2)) equals the sum of square roots of the eigenvalues of the symmetric PSD matrix
  S1^(1/2) S2 S1^(1/2), so two symmetric eigendecompositions replace the general (non-symmetric) sqrtm
  whose complex round-off other implementations have to patch over with eps offsets. It stays defined for
  singular covariances (fewer samples than feature dimensions).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
    raise ValueError(f"statistics of different dimension: {mu1.shape} vs {mu2.shape}")
  root1 = _psd_sqrt(cov1)
  middle = root1 @ cov2 @ root1
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eig, 0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def fid_from_features(features1_NxD, features2_MxD) -> float:
  return frechet_distance(*feature_stats(features1_NxD), *feature_stats(features2_MxD))


def polynomial_kernel(x_NxD, y_MxD):
  """The KID kernel of Binkowski et al. 2018: (x.y / d + 1)^3."""
  d = x_NxD.shape[1]
  return (x_NxD @ y_MxD.T / d + 1.0) ** 3


def mmd2_unbiased(x_NxD, y_MxD) -> float:
  """Unbiased estimate of the squared MMD with the cubic polynomial kernel (diagonals excluded)."""
  x, y = np.asarray(x_NxD, np.float64), np.asarray(y_MxD, np.float64)
  n, m = len(x), len(y)
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  term_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
  term_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(term_xx + term_yy - 2 * k_xy.mean())


def _subset_kernel_sums(a_NxD, b_MxD, members_NxS, members_MxS, block=1024):
  """[S]: for each subset s, the sum of k(a_i, b_j) over i in subset s of a and j in subset s of b.

  Equals members[:, s]^T K members[:, s], computed from row blocks of the kernel matrix K, so K is built
  once for all subsets and never held whole.
  """
  d = a_NxD.shape[1]
  out = np.zeros(members_NxS.shape[1], np.float64)
  for start in range(0, len(a_NxD), block):
    k_block = (a_NxD[start:start + block] @ b_MxD.T / d + 1.0) ** 3
    out += np.sum(members_NxS[start:start + block] * (k_block @ members_MxS), axis=0)
  return out


def kernel_inception_distance(real_NxD, fake_MxD, num_subsets=100, subset_size=1000, seed=0):
  """(mean, std, subset size) of the unbiased MMD^2 (mmd2_unbiased) over `num_subsets` random subsets of
  `subset_size` of each set, Binkowski et al. 2018.

  The subset size is capped by the smaller set, as the reference implementation does. Instead of three
  subset-sized kernel matrices per subset, every subset's sums come from one pass over the full kernel
  matrices (indicator vectors): the same estimates in ~1/100 of the time for 1,000-sample sets.
  """
  real, fake = np.asarray(real_NxD, np.float64), np.asarray(fake_MxD, np.float64)
  n, m = len(real), len(fake)
  size = min(subset_size, n, m)
  if size < 2:
    raise ValueError(f"KID needs at least 2 samples per set, got {n} and {m}")
  rng = np.random.default_rng(seed)
  in_real, in_fake = np.zeros((n, num_subsets)), np.zeros((m, num_subsets))
  for s in range(num_subsets):  # drawn in the order a loop over subsets would draw them
    in_real[rng.choice(n, size, replace=False), s] = 1.0
    in_fake[rng.choice(m, size, replace=False), s] = 1.0
  d = real.shape[1]
  diag_real = (np.sum(real * real, axis=1) / d + 1.0) ** 3  # k(x, x), excluded from the within-set terms
  diag_fake = (np.sum(fake * fake, axis=1) / d + 1.0) ** 3
  xx = (_subset_kernel_sums(real, real, in_real, in_real) - diag_real @ in_real) / (size * (size - 1))
  yy = (_subset_kernel_sums(fake, fake, in_fake, in_fake) - diag_fake @ in_fake) / (size * (size - 1))
  xy = _subset_kernel_sums(real, fake, in_real, in_fake) / (size * size)
  values = xx + yy - 2 * xy
  return float(np.mean(values)), float(np.std(values)), size


def log_softmax(logits_NxK) -> np.ndarray:
  """float64 log-probabilities (max-shifted, so confident classifiers do not produce log(0))."""
  logits = np.asarray(logits_NxK, np.float64)
  log_p = logits - logits.max(axis=1, keepdims=True)
  return log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))


def softmax(logits_NxK) -> np.ndarray:
  return np.exp(log_softmax(logits_NxK))


def inception_score(logits_NxK, num_splits=10, seed=None):
  """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), Salimans et al. 2016.

  Works on logits with a float64 log-softmax, so confident classifiers do not produce log(0). The splits are
  consecutive rows; `seed` shuffles the rows first (a fixed permutation). Evaluators pass one: class-conditional
  samples come ordered by label, and a split holding one class has p(y) = p(y|x), so IS ~ 1 whatever the samples.
  """
  logits = np.asarray(logits_NxK, np.float64)
  if len(logits) < num_splits:
    raise ValueError(f"the Inception Score with {num_splits} splits needs at least {num_splits} samples, "
                     f"got {len(logits)}")
  if seed is not None:
    logits = logits[np.random.default_rng(seed).permutation(len(logits))]
  log_p = log_softmax(logits)
  scores = []
  for part in np.array_split(log_p, num_splits):
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0))
    kl = np.sum(p * (part - log_marginal), axis=1)
    scores.append(math.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def modified_inception_score(logits_NxK) -> float:
  """exp(E_{x, x'} KL(p(y|x) || p(y|x'))) over independent pairs of samples, Gurumurthy et al. 2017 (DeLiGAN):
  high when each sample is confidently classified AND samples differ from each other (within-class diversity
  is invisible to it, but a generator repeating one confident sample scores 1).

  The expectation over all N^2 ordered pairs (x = x' included, KL 0, as pairs drawn with replacement) is exact in
  O(N K): KL(p_i || p_j) = sum_y p_i log p_i - sum_y p_i log p_j, so its mean over (i, j) is
  mean_i sum_y p_i log p_i - sum_y mean_i p_i(y) mean_j log p_j(y). (SaShiMi's SC09 script estimates the same
  mean from 10,000 random pairs.)
  """
  log_p = log_softmax(logits_NxK)
  p = np.exp(log_p)
  neg_entropy = np.mean(np.sum(p * log_p, axis=1))
  cross = np.sum(p.mean(axis=0) * log_p.mean(axis=0))
  return float(math.exp(neg_entropy - cross))


def am_score(logits_NxK, train_probs_K) -> tuple:
  """(AM score, KL term, entropy term), Zhou et al. 2018: KL(p_train(y) || p_gen(y)) + E_x H(p(y|x)), in nats;
  lower is better (0: every sample confidently classified and the classes as frequent as in the training data).

  p_train is the classifier's mean prediction on its training data, p_gen its mean prediction on the samples.
  A class p_gen never predicts where p_train does makes the KL term infinite; float64 softmax keeps p_gen > 0 for
  any finite logits.
  """
  log_p = log_softmax(logits_NxK)
  p = np.exp(log_p)
  p_train = np.asarray(train_probs_K, np.float64)
  if p_train.shape != (p.shape[1],):
    raise ValueError(f"p_train has shape {p_train.shape}, the classifier {p.shape[1]} classes")
  p_gen = p.mean(axis=0)
  present = p_train > 0
  kl = float(np.sum(p_train[present] * (np.log(p_train[present]) - np.log(p_gen[present]))))
  entropy = float(np.mean(-np.sum(p * log_p, axis=1)))
  return kl + entropy, kl, entropy


def _pairwise_sq_dists(a_NxD, b_MxD):
  a, b = np.asarray(a_NxD, np.float64), np.asarray(b_MxD, np.float64)
  d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
  return np.maximum(d, 0)


def _knn_radii_sq(features_NxD, k, chunk):
  """Squared distance of every point to its k-th nearest neighbour in the same set (itself excluded)."""
  radii = np.empty(len(features_NxD), np.float64)
  for s in range(0, len(features_NxD), chunk):
    d = _pairwise_sq_dists(features_NxD[s:s + chunk], features_NxD)
    # Column k of the sorted row: column 0 is the point itself at distance 0.
    radii[s:s + chunk] = np.partition(d, k, axis=1)[:, k]
  return radii


def _coverage(manifold_NxD, radii_sq_N, queries_MxD, chunk):
  """Fraction of queries inside at least one hypersphere of the manifold."""
  inside = np.zeros(len(queries_MxD), bool)
  for s in range(0, len(queries_MxD), chunk):
    d = _pairwise_sq_dists(queries_MxD[s:s + chunk], manifold_NxD)
    inside[s:s + chunk] = np.any(d <= radii_sq_N[None, :], axis=1)
  return float(inside.mean())


def precision_recall(real_NxD, fake_MxD, k=3, chunk=1024):
  """Improved precision and recall, Kynkaanniemi et al. 2019: k-NN hyperspheres around each set.

  Precision: share of fake samples inside the real manifold; recall: share of real inside the fake one.
  """
  if min(len(real_NxD), len(fake_MxD)) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
  real_radii = _knn_radii_sq(real_NxD, k, chunk)
  fake_radii = _knn_radii_sq(fake_MxD, k, chunk)
  return _coverage(real_NxD, real_radii, fake_MxD, chunk), _coverage(fake_MxD, fake_radii, real_NxD, chunk)


@jax.jit
def _parzen_log_density(centers_NxD, x_BxD, sigmas_S):
  """[B, S]: log-density of each x under the Parzen window on the centers, for every sigma."""
  d = x_BxD.shape[1]
  # HIGHEST: on GPUs the default float32 matmul rounds inputs to ~10 bits (TF32), which would wreck the
  # squared distances this expansion relies on.
  cross = jnp.matmul(x_BxD, centers_NxD.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.maximum(jnp.sum(x_BxD ** 2, 1)[:, None] - 2 * cross + jnp.sum(centers_NxD ** 2, 1)[None, :], 0)
  log_kernel = -sq[:, :, None] / (2 * sigmas_S ** 2)  # [B, N, S]
  return (jax.nn.logsumexp(log_kernel, axis=1) - jnp.log(centers_NxD.shape[0])
          - d * (jnp.log(sigmas_S) + 0.5 * jnp.log(2 * jnp.pi)))


def parzen_log_likelihood(centers_NxD, x_MxD, sigmas, chunk=256) -> np.ndarray:
  """Per-example log-density (nats) of x under an isotropic Gaussian Parzen window on the centers:
  [M] for one sigma, [M, S] for a sequence of S sigmas (the distances are computed once for all of them).

  The centers are shifted by their mean first (distances do not change), so the float32 expansion
  |x|^2 - 2 x.c + |c|^2 cancels less.
  """
  scalar = np.ndim(sigmas) == 0
  sigmas_S = jnp.asarray(np.atleast_1d(np.asarray(sigmas, np.float64)), jnp.float32)
  shift = np.mean(np.asarray(centers_NxD, np.float64), axis=0)
  centers = jnp.asarray(np.asarray(centers_NxD, np.float64) - shift, jnp.float32)
  x = np.asarray(x_MxD, np.float64) - shift
  out = [np.asarray(_parzen_log_density(centers, jnp.asarray(x[s:s + chunk], jnp.float32), sigmas_S))
         for s in range(0, len(x), chunk)]
  ll = np.concatenate(out).astype(np.float64)
  return ll[:, 0] if scalar else ll


SIGMA_GRID = tuple(np.logspace(-1.0, 0.0, 10))


def parzen_evaluate(samples_NxD, validation_MxD, test_KxD, sigmas=SIGMA_GRID):
  """The Goodfellow et al. 2014 protocol: fit the window on generated samples, pick sigma by the mean
  validation log-likelihood over a grid (their code searches logspace(-1, 0, 10) for pixels in [0, 1]),
  then report the test mean and its standard error, in nats.

  Returns (values, info): values {parzen_ll, parzen_ll_se, parzen_sigma}; info has the validation curve and
  whether the chosen sigma sits on an edge of the grid (then the optimum may lie outside it).
  """
  sigmas = np.asarray(sigmas, np.float64)
  validation_ll = parzen_log_likelihood(samples_NxD, validation_MxD, sigmas).mean(axis=0)
  best = int(np.argmax(validation_ll))
  test_ll = parzen_log_likelihood(samples_NxD, test_KxD, sigmas[best])
  values = {"parzen_ll": float(test_ll.mean()), "parzen_ll_se": float(test_ll.std() / math.sqrt(len(test_ll))),
            "parzen_sigma": float(sigmas[best])}
  info = {"sigma_grid": [float(x) for x in sigmas], "validation_ll": [float(x) for x in validation_ll],
          "sigma_at_grid_edge": len(sigmas) > 1 and best in (0, len(sigmas) - 1)}
  return values, info
