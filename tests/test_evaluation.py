"""Evaluation: every metric against a closed form or a peer implementation, the Flax FID Inception port
against Keras's InceptionV3 with shared random weights, the digits classifier backbone, and --mode=eval end
to end (metric card, TensorBoard scalars, chunked generation, one-line errors; the CLI's own eval errors are
tests/test_cli_errors.py's cases)."""
import hashlib
import json
import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # Keras as the independent implementation: its TF ops

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.special
from jax.sharding import Mesh

from aigc_jax import data as data_lib
from aigc_jax import media, parallel, runtime, trainer
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.evaluation import backbones, image_quality, inception, metrics, runner
from aigc_jax.families import get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- FID / KID


def random_gaussian(rng, d):
  a = rng.normal(size=(d, d))
  return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def test_fid_equals_the_analytic_frechet_distance_of_two_gaussians():
  rng = np.random.default_rng(0)
  (mu1, cov1), (mu2, cov2) = random_gaussian(rng, 16), random_gaussian(rng, 16)
  # ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) with scipy's general matrix square root, float64.
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real)
  assert metrics.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-10)
  assert abs(metrics.frechet_distance(mu1, cov1, mu1, cov1)) < 1e-9
  # Commuting case with a closed form: S1 = a^2 I, S2 = b^2 I -> d (a - b)^2.
  assert metrics.frechet_distance(np.zeros(5), 4 * np.eye(5), np.ones(5), np.eye(5)) == pytest.approx(5 + 5 * 1)


def test_running_stats_in_chunks_equal_numpy_mean_and_cov():
  x = np.random.default_rng(1).normal(3.0, 2.0, (257, 7))
  stats = metrics.RunningStats(7)
  for part in np.array_split(x, 5):
    stats.update(part.astype(np.float32))
  mu, cov = stats.mean_and_cov()
  np.testing.assert_allclose(mu, x.astype(np.float32).astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(cov, np.cov(x.astype(np.float32).astype(np.float64).T), rtol=1e-9, atol=1e-12)


def test_kid_equals_a_direct_double_loop():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.0, size=(15, 5))
  k = lambda a, b: (a @ b / 5 + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(12) for j in range(12) if i != j) / (12 * 11)
  yy = sum(k(y[i], y[j]) for i in range(15) for j in range(15) if i != j) / (15 * 14)
  xy = sum(k(x[i], y[j]) for i in range(12) for j in range(15)) / (12 * 15)
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
  # KID: the mean and std of that estimate over random subsets, drawn subset by subset (real, then fake).
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(40, 5)), rng.normal(0.3, 1.0, size=(30, 5))
  draw = np.random.default_rng(7)
  direct = [metrics.mmd2_unbiased(x[draw.choice(40, 20, replace=False)], y[draw.choice(30, 20, replace=False)])
            for _ in range(6)]
  kid, std, size = metrics.kernel_inception_distance(x, y, num_subsets=6, subset_size=20, seed=7)
  assert size == 20 and kid == pytest.approx(np.mean(direct), rel=1e-10) and std == pytest.approx(np.std(direct))
  assert metrics.kernel_inception_distance(x, y, num_subsets=2, subset_size=1000)[2] == 30  # capped


# -------------------------------------------------------------------------------------------------- IS


def test_inception_score_of_constructed_logits():
  k, n = 10, 200
  confident = 60.0 * np.eye(k)[np.arange(n) % k]  # every split holds every class, each sample certain
  assert metrics.inception_score(confident)[0] == pytest.approx(k, rel=1e-9)
  assert metrics.inception_score(60.0 * np.eye(k)[np.zeros(n, int)])[0] == pytest.approx(1.0, abs=1e-9)
  # Generic logits: exp(E_x KL(p(y|x) || p(y))) per split, then the mean over splits.
  logits = np.random.default_rng(3).normal(0, 2, (n, k))
  scores = []
  for part in np.array_split(logits, 10):
    p = scipy.special.softmax(part, axis=1)
    scores.append(np.exp(np.mean(np.sum(scipy.special.rel_entr(p, p.mean(0, keepdims=True)), axis=1))))
  mean, std = metrics.inception_score(logits)
  assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(np.std(scores), rel=1e-8)
  with pytest.raises(ValueError):
    metrics.inception_score(logits[:5])


# ----------------------------------------------------------------------------------------- PSNR / SSIM


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_equal_scikit_image(channels):
  skm = pytest.importorskip("skimage.metrics")
  rng = np.random.default_rng(4)
  a = rng.uniform(-1, 1, (3, 24, 20, channels)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1).astype(np.float32)
  b[1] = np.clip(0.5 * a[1] + 0.1, -1, 1)  # a structural change, not only noise
  psnr = np.asarray(image_quality.psnr(a, b, data_range=2.0))
  ssim = np.asarray(image_quality.ssim(a, b, data_range=2.0))
  for i in range(3):
    assert psnr[i] == pytest.approx(skm.peak_signal_noise_ratio(a[i], b[i], data_range=2.0), rel=1e-5)
    expected = skm.structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=2.0, channel_axis=-1)
    assert ssim[i] == pytest.approx(expected, abs=2e-5)


# ------------------------------------------------------------------------------------ precision / recall


def test_precision_recall_identical_and_disjoint_sets():
  x = np.random.default_rng(5).normal(size=(50, 8))
  assert metrics.precision_recall(x, x, k=3) == (1.0, 1.0)
  assert metrics.precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_equal_a_brute_force_computation():
  rng = np.random.default_rng(6)
  real, fake = rng.normal(size=(40, 4)), rng.normal(0.7, 1.3, size=(30, 4))

  def brute(manifold, queries, k):
    d = np.linalg.norm(manifold[:, None] - manifold[None], axis=-1)
    radius = np.sort(d, axis=1)[:, k]  # column 0 is the point itself
    return np.mean([np.any(np.linalg.norm(manifold - q, axis=-1) <= radius) for q in queries])

  precision, recall = metrics.precision_recall(real, fake, k=3, chunk=7)  # chunking must not matter
  assert precision == pytest.approx(brute(real, fake, 3)) and recall == pytest.approx(brute(fake, real, 3))


# ---------------------------------------------------------------------------------------------- Parzen


def direct_parzen(centers, x, sigma):
  sq = np.sum((x[:, None, :] - centers[None, :, :]) ** 2, axis=-1)
  d = x.shape[1]
  return (scipy.special.logsumexp(-sq / (2 * sigma ** 2), axis=1) - np.log(len(centers))
          - d * np.log(sigma * np.sqrt(2 * np.pi)))


def test_parzen_log_likelihood_matches_a_direct_logsumexp_and_sigma_is_chosen_on_validation():
  rng = np.random.default_rng(7)
  centers = rng.uniform(0, 1, (300, 20))
  validation = np.clip(centers[:100] + rng.normal(0, 0.15, (100, 20)), 0, 1)
  test = np.clip(centers[100:200] + rng.normal(0, 0.15, (100, 20)), 0, 1)
  for sigma in (0.1, 0.3):
    np.testing.assert_allclose(metrics.parzen_log_likelihood(centers, test, sigma),
                               direct_parzen(centers, test, sigma), rtol=2e-5, atol=1e-3)
  grid = np.logspace(-1.5, 0, 8)
  values, info = metrics.parzen_evaluate(centers, validation, test, sigmas=grid)
  best = grid[np.argmax([direct_parzen(centers, validation, s).mean() for s in grid])]
  assert values["parzen_sigma"] == pytest.approx(best)
  direct_test = direct_parzen(centers, test, best)
  assert values["parzen_ll"] == pytest.approx(direct_test.mean(), rel=1e-5)
  assert values["parzen_ll_se"] == pytest.approx(direct_test.std() / np.sqrt(len(test)), rel=1e-3)
  assert len(info["validation_ll"]) == len(grid)


# ---------------------------------------------------------------------------- FID Inception-v3 port


KERAS_SIZE = 139  # the smallest size at which Mixed_7b/7c see a 3x3 map, so their 3x3 pools have edges


def _keras_layers_in_creation_order(model, cls):
  # Keras lists functional layers topologically; their automatic names (conv2d, conv2d_1, ...) follow
  # creation order, which is the order pytorch-fid's state dict and inception.conv_specs() use.
  number = lambda layer: int(re.search(r"_(\d+)$", layer.name).group(1)) if re.search(r"_\d+$", layer.name) else 0
  return sorted([layer for layer in model.layers if type(layer) is cls], key=number)


@pytest.fixture(scope="module")
def keras_inception():
  """(Keras [pool3, logits] model with random weights and BN statistics, the same weights as a
  pytorch-fid-layout state dict, Keras with Mixed_7c's pool swapped to max as the FID graph has it)."""
  keras = pytest.importorskip("keras")
  keras.backend.clear_session()
  model = keras.applications.InceptionV3(weights=None, include_top=True, classes=inception.NUM_LOGITS,
                                         input_shape=(KERAS_SIZE, KERAS_SIZE, 3), classifier_activation=None)
  rng = np.random.default_rng(8)
  convs = _keras_layers_in_creation_order(model, keras.layers.Conv2D)
  bns = _keras_layers_in_creation_order(model, keras.layers.BatchNormalization)
  specs = inception.conv_specs()
  assert len(convs) == len(bns) == len(specs) == 94
  state = {}
  for (name, features, kernel), conv, bn in zip(specs, convs, bns):
    assert bn.scale is False and bn.epsilon == inception.BN_EPSILON  # Keras BN has no gamma: gamma = 1
    c = features
    # Random BN statistics and offsets, so a wrongly wired batch norm cannot go unnoticed.
    bn.set_weights([rng.normal(0, 0.1, c).astype(np.float32), rng.normal(0, 0.2, c).astype(np.float32),
                    rng.uniform(0.5, 2.0, c).astype(np.float32)])
    w = conv.get_weights()[0]  # HWIO
    assert w.shape[:2] == tuple(kernel) and w.shape[3] == features, name
    beta, mean, var = bn.get_weights()
    state.update({f"{name}.conv.weight": w.transpose(3, 2, 0, 1), f"{name}.bn.weight": np.ones_like(beta),
                  f"{name}.bn.bias": beta, f"{name}.bn.running_mean": mean, f"{name}.bn.running_var": var})
  fc = model.get_layer("predictions")
  fc.set_weights([rng.normal(0, 0.05, (2048, inception.NUM_LOGITS)).astype(np.float32),
                  rng.normal(0, 0.5, inception.NUM_LOGITS).astype(np.float32)])
  kernel, bias = fc.get_weights()
  state.update({"fc.weight": kernel.T, "fc.bias": bias})
  avg = keras.Model(model.input, [model.get_layer("avg_pool").output, model.output])
  last_pool = _keras_layers_in_creation_order(model, keras.layers.AveragePooling2D)[-1]  # Mixed_7c's
  # Same layers (so the same weights), except Mixed_7c's branch_pool pools with max, stride 1, SAME.
  fid = keras.models.clone_model(avg, clone_function=lambda layer: keras.layers.MaxPooling2D(
      (3, 3), strides=(1, 1), padding="same") if layer is last_pool else layer)
  return avg, state, fid


def _allclose(a, b, rtol=1e-4):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


def test_inception_port_matches_keras_with_shared_random_weights(keras_inception):
  keras_avg, state, keras_fid = keras_inception
  variables = inception.params_from_state_dict(state)
  inception.check_input_channels(variables, "keras weights")
  x = np.random.default_rng(9).uniform(-1, 1, (2, KERAS_SIZE, KERAS_SIZE, 3)).astype(np.float32)
  # ImageNet topology (average pool in Mixed_7c) against Keras's InceptionV3 as shipped.
  ours = jax.jit(inception.FIDInceptionV3(last_block_pool="avg").apply)(variables, x)
  pool3, logits = (np.asarray(t) for t in keras_avg(x, training=False))
  _allclose(ours["pool3"], pool3)
  _allclose(ours["logits"], logits)
  _allclose(ours["logits_unbiased"], logits - state["fc.bias"])
  # The FID graph (max pool in Mixed_7c) against Keras with that one pooling layer swapped.
  fid = jax.jit(inception.FIDInceptionV3().apply)(variables, x)
  fid_pool3, fid_logits = (np.asarray(t) for t in keras_fid(x, training=False))
  _allclose(fid["pool3"], fid_pool3)
  _allclose(fid["logits"], fid_logits)
  assert np.abs(fid_pool3 - pool3).max() > 100 * np.abs(pool3).max() * 1e-4  # the two variants differ


def to_state_dict(variables):
  """Inverse of params_from_state_dict: Flax variables -> pytorch-fid names and layouts."""
  state = {}
  for name, _, _ in inception.conv_specs():
    p, s = variables["params"], variables["batch_stats"]
    for part in name.split("."):
      p, s = p[part], s[part]
    state.update({f"{name}.conv.weight": np.asarray(p["conv"]["kernel"]).transpose(3, 2, 0, 1),
                  f"{name}.bn.weight": np.asarray(p["bn"]["scale"]), f"{name}.bn.bias": np.asarray(p["bn"]["bias"]),
                  f"{name}.bn.running_mean": np.asarray(s["bn"]["mean"]),
                  f"{name}.bn.running_var": np.asarray(s["bn"]["var"])})
  state["fc.weight"] = np.asarray(variables["params"]["fc"]["kernel"]).T
  state["fc.bias"] = np.asarray(variables["params"]["fc"]["bias"])
  return state


def test_weights_file_round_trip_and_clear_errors(keras_inception, tmp_path):
  _, state, _ = keras_inception
  variables = inception.params_from_state_dict(state)
  back = to_state_dict(variables)
  assert sorted(back) == sorted(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k], err_msg=k)

  path = tmp_path / "fid_inception.npz"
  np.savez(path, **state)
  loaded, hashes = inception.load_fid_inception(str(path))
  assert hashes["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)

  def one_line_error(path_, *words):
    with pytest.raises(UserError) as e:
      inception.load_fid_inception(path_)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message

  one_line_error("", "eval.inception_path")
  one_line_error(str(tmp_path / "missing.pth"), "not found", "eval.inception_path")
  wrong = dict(state)
  wrong["Mixed_6b.branch7x7_2.conv.weight"] = wrong["Mixed_6b.branch7x7_2.conv.weight"].transpose(0, 1, 3, 2)
  np.savez(tmp_path / "wrong_shape.npz", **wrong)
  one_line_error(str(tmp_path / "wrong_shape.npz"), "Mixed_6b.branch7x7_2.conv.weight", "eval.inception_path")
  np.savez(tmp_path / "other_model.npz", **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
  one_line_error(str(tmp_path / "other_model.npz"), "eval.inception_path")
  (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
  one_line_error(str(tmp_path / "garbage.npz"), "cannot read")

  torch = pytest.importorskip("torch")  # the .pth route (pytorch-fid's own file format)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "fid_inception.pth")
  from_pth, pth_hashes = inception.load_fid_inception(str(tmp_path / "fid_inception.pth"))
  jax.tree.map(np.testing.assert_array_equal, from_pth, variables)
  # The card's weights hash is of the weights, not the container: .pth and .npz agree.
  assert pth_hashes["weights_sha256"] == hashes["weights_sha256"] != pth_hashes["file_sha256"]


def test_inception_backbone_wiring(keras_inception, tmp_path):
  """eval.backbone=inception: grayscale 8x8 samples are resized to 299 and repeated over RGB, features are
  pool3, IS logits leave out the fc bias, and the card gets the weights hash."""
  _, state, _ = keras_inception
  np.savez(tmp_path / "w.npz", **state)
  config = experiment_config("dcgan", **{"data.image_size": 8, "eval.backbone": "inception",
                                         "eval.inception_path": str(tmp_path / "w.npz")})
  backbone = backbones.get_backbone(config, str(tmp_path))
  x = np.random.default_rng(12).uniform(-1, 1, (1, 8, 8, 1)).astype(np.float32)
  out = jax.jit(backbone.apply)(backbone.variables, x)
  big = np.repeat(np.asarray(jax.image.resize(x, (1, 299, 299, 1), "bilinear", antialias=False)), 3, axis=-1)
  # The port itself is checked against Keras above (at 139x139, where Keras's fixed input shape allows).
  direct = jax.jit(inception.FIDInceptionV3().apply)(inception.params_from_state_dict(state), big)
  _allclose(out["features"], direct["pool3"])
  _allclose(out["logits"], direct["logits_unbiased"])
  _allclose(direct["logits_unbiased"], np.asarray(direct["logits"]) - state["fc.bias"])
  assert backbone.info["resize"]["size"] == [299, 299] and len(backbone.info["weights_sha256"]) == 64


def test_preprocess_resizes_like_pytorch_fid():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(10)
  for shape in ((2, 32, 32, 1), (1, 350, 320, 3)):  # upsampling grayscale, downsampling RGB
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    ours = np.asarray(inception.preprocess(x))
    t = torch.from_numpy(np.repeat(x, 3, axis=-1) if shape[-1] == 1 else x).permute(0, 3, 1, 2)
    theirs = torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=2e-6)


# ----------------------------------------------------------------------------------- classifier backbone


def experiment_config(name, preset="cpu", **overrides):
  return load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"), preset, overrides)


def test_classifier_backbone_real_vs_real_fid_is_small(tmp_path):
  # 80 steps: test accuracy 0.82, real-vs-real FID 0.07 of noise-vs-real (150 steps: 0.90 and 0.06).
  config = experiment_config("dcgan", **{"data.image_size": 16, "eval.classifier_steps": 80})
  logs = []
  backbone = backbones.get_backbone(config, str(tmp_path), logs.append)
  assert backbone.name == "classifier:digits" and backbone.info["test_accuracy"] > 0.75 and logs
  mesh = parallel.make_mesh()
  extract = backbones.make_extractor(backbone, mesh, batch_size=256)
  train = data_lib.load_image_set(config.data, "train").images
  test = data_lib.load_image_set(config.data, "test").images
  f_train = extract(data_lib.to_model_range(train))["features"]
  f_test = extract(data_lib.to_model_range(test))["features"]
  noise = np.random.default_rng(11).uniform(-1, 1, test.shape).astype(np.float32)
  f_noise = extract(noise)["features"]
  real_vs_real = metrics.fid_from_features(f_test, f_train)
  noise_vs_real = metrics.fid_from_features(f_noise, f_train)
  assert real_vs_real < 0.2 * noise_vs_real, (real_vs_real, noise_vs_real)
  # Extraction is per example: chunking and device padding do not change features.
  np.testing.assert_allclose(extract(data_lib.to_model_range(test[:37]))["features"], f_test[:37], rtol=1e-5,
                             atol=1e-5)
  # Cached: the second call trains nothing and gives the same weights.
  again = backbones.get_backbone(config, str(tmp_path), lambda m: pytest.fail(f"retrained: {m}"))
  assert again.info["weights_sha256"] == backbone.info["weights_sha256"]


# -------------------------------------------------------------------------------- --mode=eval end to end


TINY_GAN = {"model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "data.image_size": 8, "batch_size": 8,
            "sample_every_steps": 0, "log_every_steps": 2, "checkpoint_every_steps": 4, "num_train_steps": 4,
            "eval.classifier_steps": 30, "eval.num_samples": 40, "eval.batch_size": 16,
            "eval.metrics": ("fid", "kid", "is", "pr", "parzen"), "eval.kid_subsets": 10,
            "eval.parzen_num_validation": 200}


def read_json(path):
  with open(path) as f:
    return json.load(f)


def read_scalars(workdir):
  import tensorflow as tf
  out = {}
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag.startswith("eval/"):
            out[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                else value.simple_value
  return out


@pytest.fixture(scope="module")
def trained_gan(tmp_path_factory):
  """A tiny DCGAN trained 4 steps in-process, with the periodic eval hook on at step 3 (only)."""
  workdir = str(tmp_path_factory.mktemp("eval_gan"))
  config = experiment_config("dcgan", **TINY_GAN, **{"eval.every_steps": 3})
  trainer.train_and_evaluate(config, workdir)
  return config, workdir


def test_mode_eval_writes_the_metric_card_and_scalars(trained_gan, monkeypatch):
  config, workdir = trained_gan
  in_training = read_json(os.path.join(workdir, "eval", "3.json"))
  assert in_training["step"] == 3 and "none" in in_training["checkpoint"]

  calls = []
  make_sampler = trainer.make_sampler

  def counting_sampler(family, mesh):
    sample = make_sampler(family, mesh)
    return lambda state, rng, num, offset=0: calls.append(num) or sample(state, rng, num, offset=offset)

  monkeypatch.setattr(runtime, "make_sampler", counting_sampler)
  config.eval.every_steps = 0
  card = runner.evaluate(config, workdir)
  assert calls == [16, 16, 8]  # 40 samples in chunks of eval.batch_size: never one batch of everything

  on_disk = read_json(os.path.join(workdir, "eval", "4.json"))
  assert on_disk["metrics"] == pytest.approx(card["metrics"])
  m = on_disk["metrics"]
  for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "parzen_ll", "parzen_ll_se",
              "parzen_sigma"):
    assert np.isfinite(m[key]), key
  assert m["fid"] > 0 and 1.0 <= m["is"] <= 10.0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
  assert on_disk["step"] == 4 and on_disk["checkpoint"] == os.path.join(os.path.abspath(workdir), "checkpoints", "4")
  assert on_disk["backbone"]["name"] == "classifier:digits"
  assert re.fullmatch(r"[0-9a-f]{64}", on_disk["backbone"]["weights_sha256"])
  assert on_disk["num_generated"] == 40 and on_disk["num_reference"] == 1500
  assert on_disk["reference_split"] == "train" and on_disk["reference"]["split"] == "train"
  assert on_disk["reference"]["stats_from_cache"]  # computed by the in-training eval at step 3
  assert on_disk["resize"]["size"] == [8, 8] and "method" in on_disk["resize"]
  assert on_disk["quantization"].startswith("uint8")
  assert on_disk["seed"] == config.eval.seed and on_disk["sampling"]["chunks"] == 3
  assert on_disk["protocol"]["kid"]["subset_size"] == 40 and on_disk["protocol"]["pr"]["k"] == 3
  assert on_disk["protocol"]["is"]["splits"] == 10 and on_disk["protocol"]["parzen"]["num_kernels"] == 40

  scalars = read_scalars(workdir)
  assert scalars[("eval/fid", 4)] == pytest.approx(m["fid"], rel=1e-5)
  assert scalars[("eval/parzen_ll", 4)] == pytest.approx(m["parzen_ll"], rel=1e-5)
  assert ("eval/fid", 3) in scalars and ("eval/fid", 2) not in scalars  # the periodic in-training eval


def test_eval_bad_input_is_one_line_user_error(trained_gan):
  config, workdir = trained_gan
  cases = {"eval.reference_split": ("validation", "eval.reference_split"),
           "eval.parzen_split": ("validation", "eval.parzen_split"),
           "eval.metrics": (("fid", "bogus"), "eval.metrics"),
           "eval.num_samples": (5, "eval.num_samples"),
           "eval.backbone": ("resnet", "eval.backbone")}
  for key, (value, words) in cases.items():
    bad = experiment_config("dcgan", **{**TINY_GAN, key: value})
    with pytest.raises(UserError) as e:
      runner.evaluate(bad, workdir)
    assert "\n" not in str(e.value) and words in str(e.value), (key, str(e.value))
  text = experiment_config("gpt", **{"eval.metrics": ("fid",)})  # image metrics on text: says what applies
  with pytest.raises(UserError, match="eval_step"):
    runner.check_eval_config(text, get_family(text))


def test_sample_quality_metrics_on_a_reconstructing_family_are_a_one_line_error():
  from aigc_jax.evaluation.registry import check_eval_config
  from aigc_jax.families import get_family
  config = experiment_config("vqvae", **{"eval.metrics": ("fid", "eval_step")})
  with pytest.raises(UserError, match=r"\['fid'\] score generated samples.*inputs and their reconstructions"):
    check_eval_config(config, get_family(config))


TINY_VQ = {"model.hidden": 16, "model.residual_hidden": 8, "model.num_residual_blocks": 1, "model.num_codes": 16,
           "model.code_dim": 4, "batch_size": 64, "num_train_steps": 2, "checkpoint_every_steps": 2,
           "sample_every_steps": 0}


@pytest.fixture(scope="module")
def trained_vq(tmp_path_factory):
  """(workdir, state) of a tiny VQ-VAE trained 2 steps in-process; the eval.* keys that the tests below set do
  not change training, so they evaluate this one checkpoint (compiling init and a train step once)."""
  workdir = str(tmp_path_factory.mktemp("eval_vq"))
  return workdir, trainer.train_and_evaluate(experiment_config("vqvae", **TINY_VQ), workdir)


def test_reconstruction_metrics_go_through_the_same_card(trained_vq):
  """PSNR/SSIM of a reconstructing family come from its eval_step over every test image, on the same card."""
  workdir, _ = trained_vq
  config = experiment_config("vqvae", **TINY_VQ, **{"eval.metrics": ("psnr", "ssim")})
  card = runner.evaluate(config, workdir)
  assert card["protocol"]["eval_step"]["num_examples"] == 297 and card["reference_split"] == "test"
  assert np.isfinite(card["metrics"]["psnr"]) and -1 <= card["metrics"]["ssim"] <= 1
  assert card["num_generated"] == 0 and card["backbone"]["name"].startswith("none")
  gan = experiment_config("dcgan", **{**TINY_GAN, "eval.metrics": ("psnr",)})
  with pytest.raises(UserError, match="eval_step"):
    runner.check_eval_config(gan, get_family(gan))


def test_reconstruction_fid_is_the_fid_of_the_split_against_its_reconstructions(trained_vq):
  workdir, state = trained_vq
  config = experiment_config("vqvae", **TINY_VQ, **{"eval.metrics": ("rfid",), "eval.classifier_steps": 20,
                                                    "eval.batch_size": 96})
  card = runner.evaluate(config, workdir)
  assert card["protocol"]["rfid"]["num_reconstructed"] == 297 and card["protocol"]["rfid"]["split"] == "test"
  # By hand, on one device: the card's classifier, the test split and decode(encode(x)) of each image.
  family = get_family(config)
  test = data_lib.to_model_range(data_lib.load_image_set(config.data, "test").images)
  codes = jax.jit(family.encode)(state, {"image": test, "label": np.zeros(len(test), np.int32)}, jax.random.key(0))
  recon = np.clip(np.asarray(jax.jit(family.decode)(state, codes["codes"])), -1, 1)
  backbone = backbones.get_backbone(config, os.path.join(workdir, "eval", "cache"), lambda _: None)
  extract = backbones.make_extractor(backbone, Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,)), 512)
  quantize = lambda x: np.asarray(media.get_medium("images").quantize(x), np.float32)
  expected = metrics.fid_from_features(extract(quantize(test))["features"], extract(quantize(recon))["features"])
  assert card["metrics"]["rfid"] == pytest.approx(expected, rel=1e-3, abs=1e-3)
  assert card["metrics"]["rfid"] > 0.1  # two training steps: far from the split itself
  gan = experiment_config("dcgan", **{**TINY_GAN, "eval.metrics": ("rfid",)})
  with pytest.raises(UserError, match="no encode/decode"):
    runner.check_eval_config(gan, get_family(gan))
