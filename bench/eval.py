"""Evaluation throughput: samples/s of feature extraction (the digits classifier backbone and the FID
Inception-v3 port) and of a whole `--mode=eval`; prints a table (rows go to bench/RESULTS.md).

  python bench/eval.py                                    # everything, CPU-sized defaults
  python bench/eval.py --workdir=runs/dcgan_cpu           # whole eval of a trained dcgan.py:cpu run
  python bench/eval.py --inception-batch=256 --inception-images=4096 --eval-samples=50000   # on a GPU
It also prints the classifier FID of real test images and of noise against the train split (realvsreal).

Feature extraction runs exactly as --mode=eval runs it (backbones.make_extractor: jitted, data-parallel over
every device, fixed-size padded chunks). The Inception port uses random weights of the right shapes (the
real file cannot be downloaded here; speed does not depend on the values) on 32x32 RGB inputs resized to
299x299 inside the jitted function, as CIFAR-10 samples would be. Keras's InceptionV3 (TensorFlow) on the
same 299x299 batch is the side-by-side reference. Without --workdir the whole-eval row uses a freshly
initialised dcgan.py:cpu generator (same cost as a trained one).
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from aigc_jax import data as data_lib  # noqa: E402
from aigc_jax import parallel, trainer  # noqa: E402
from aigc_jax.configs import load_experiment  # noqa: E402
from aigc_jax.evaluation import backbones, inception, metrics, runner  # noqa: E402
from aigc_jax.families import get_family  # noqa: E402


def timed(fn, repeats):
  """Seconds per call after one warm-up call (compilation)."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def random_inception_backbone():
  """A Backbone with random FID Inception weights of the right shapes (He-scaled convs, identity BN)."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.key(0), np.zeros((1, 75, 75, 3)))["params"]
  state = {}
  for name, features, _ in inception.conv_specs():
    node = shapes
    for part in name.split("."):
      node = node[part]
    h, w, cin, cout = node["conv"]["kernel"].shape
    state[f"{name}.conv.weight"] = rng.normal(0, np.sqrt(2.0 / (h * w * cin)), (cout, cin, h, w)).astype(np.float32)
    state[f"{name}.bn.bias"] = np.zeros(features, np.float32)
    state[f"{name}.bn.running_mean"] = np.zeros(features, np.float32)
    state[f"{name}.bn.running_var"] = np.ones(features, np.float32)
  state["fc.weight"] = rng.normal(0, 0.02, (inception.NUM_LOGITS, 2048)).astype(np.float32)
  state["fc.bias"] = np.zeros(inception.NUM_LOGITS, np.float32)
  variables = inception.params_from_state_dict(state, "random weights")
  model = inception.FIDInceptionV3()

  def apply(v, x):
    out = model.apply(v, inception.preprocess(x))
    return {"features": out["pool3"], "logits": out["logits_unbiased"]}

  return backbones.Backbone("inception-v3-fid (random weights)", variables, apply,
                            {"feature_dim": 2048, "weights_sha256": "random"})


def classifier_rows(a, config, mesh, cache, rows):
  """One-off training of the classifier backbone (cached afterwards), then extraction on digits images."""
  start = time.perf_counter()
  clf = backbones.get_backbone(config, cache, log=lambda m: None)
  rows.append((f"classifier backbone training ({config.eval.classifier_steps} steps, once per cache dir)",
               f"{time.perf_counter() - start:.1f} s", "-"))
  images = data_lib.to_model_range(data_lib.load_image_set(config.data, "train").images)
  images = np.resize(images, (a.classifier_images, *images.shape[1:]))
  extract = backbones.make_extractor(clf, mesh, a.classifier_batch)
  secs = timed(lambda: extract(images)["features"], a.repeats)
  rows.append((f"classifier features, {a.classifier_images} x 32x32x1, chunks of {a.classifier_batch}",
               f"{secs:.3f} s", f"{a.classifier_images / secs:,.0f}"))


def real_vs_real(config, mesh, cache):
  """Classifier FID of the digits test split (297 real images) and of as many uniform-noise images against
  the train split's reference statistics: the floor and the ceiling that generated samples sit between."""
  clf = backbones.get_backbone(config, cache, log=lambda m: None)
  extract = backbones.make_extractor(clf, mesh, 256)
  features = lambda split: extract(data_lib.to_model_range(data_lib.load_image_set(config.data, split).images))
  ref = metrics.feature_stats(features("train")["features"])
  test = features("test")["features"]
  noise = extract(np.random.default_rng(0).uniform(-1, 1, (len(test), 32, 32, 1)).astype(np.float32))["features"]
  fid = lambda f: metrics.frechet_distance(*metrics.feature_stats(f), *ref)
  print(f"classifier {clf.info['weights_sha256'][:12]} (test accuracy {clf.info['test_accuracy']:.3f}): FID vs "
        f"train stats (1500 images): test split {fid(test):.2f} | uniform noise {fid(noise):.2f} "
        f"({len(test)} images each)")


def inception_rows(a, mesh, rows):
  """The Flax FID Inception port (random weights, 32x32x3 resized to 299 inside the jitted extractor), and
  Keras's InceptionV3 on the same, already resized, batch."""
  x = np.random.default_rng(1).uniform(-1, 1, (a.inception_images, 32, 32, 3)).astype(np.float32)
  extract = backbones.make_extractor(random_inception_backbone(), mesh, a.inception_batch)
  secs = timed(lambda: extract(x)["features"], a.repeats)
  rows.append((f"FID Inception port (Flax), {a.inception_images} x 32x32x3 -> 299, chunks of {a.inception_batch}",
               f"{secs:.3f} s", f"{a.inception_images / secs:,.1f}"))
  if a.skip_keras:
    return
  import keras
  import tensorflow as tf
  model = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3))
  resized = tf.image.resize(x, (299, 299), method="bilinear")
  predict = tf.function(lambda t: model(t, training=False))
  batches = [resized[i:i + a.inception_batch] for i in range(0, len(x), a.inception_batch)]
  secs = timed(lambda: [predict(b).numpy() for b in batches][-1], a.repeats)
  rows.append((f"  reference: Keras InceptionV3 (TF, tf.function), same images pre-resized, batches of "
               f"{a.inception_batch}", f"{secs:.3f} s", f"{a.inception_images / secs:,.1f}"))


def whole_eval_rows(a, config, mesh, tmp, rows):
  """evaluate_state as --mode=eval runs it (generation + extraction + FID/KID/IS/PR + the card), first with
  the reference statistics computed, then read from the cache; the classifier is already cached."""
  family = get_family(config)
  if a.workdir:
    state, step, _ = trainer.load_latest(config, a.workdir, family, mesh)
    what = f"{a.workdir} step {step}"
  else:
    state, step, what = trainer.init_state(family, config, mesh), 0, "fresh init"
  for label in ("reference stats computed", "reference stats cached"):
    start = time.perf_counter()
    card = runner.evaluate_state(config, os.path.join(tmp, "eval_run"), family, mesh, state, step,
                                 checkpoint=what, log=lambda m: None)
    secs = time.perf_counter() - start
    rows.append((f"whole eval dcgan.py:cpu ({what}), {a.eval_samples} samples, fid/kid/is/pr, {label}",
                 f"{secs:.2f} s", f"{a.eval_samples / secs:,.0f}"))
  m = card["metrics"]
  print(f"card: fid {m['fid']:.2f} | kid {m['kid']:.4g} | is {m['is']:.3f} | precision {m['precision']:.3f} | "
        f"recall {m['recall']:.3f} | wall_seconds {card['wall_seconds']}")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="", help="a trained dcgan.py:cpu run for the whole-eval row")
  p.add_argument("--classifier-images", type=int, default=8192)
  p.add_argument("--classifier-batch", type=int, default=256)
  p.add_argument("--inception-images", type=int, default=64)
  p.add_argument("--inception-batch", type=int, default=16)
  p.add_argument("--eval-samples", type=int, default=1000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--skip-keras", action="store_true")
  p.add_argument("--parts", default="classifier,realvsreal,inception,eval", help="comma-separated subset to run")
  a = p.parse_args()
  parts = set(a.parts.split(","))

  mesh = parallel.make_mesh()
  config = load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu")
  config.eval.num_samples = a.eval_samples
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    config.eval.cache_dir = cache
    if "classifier" in parts or "eval" in parts:
      classifier_rows(a, config, mesh, cache, rows)
    if "realvsreal" in parts:
      real_vs_real(config, mesh, cache)
    if "inception" in parts:
      inception_rows(a, mesh, rows)
    if "eval" in parts:
      whole_eval_rows(a, config, mesh, tmp, rows)

  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; jax {jax.__version__}")
  print(f"| {'what':<104} | {'wall':>9} | {'samples/s':>10} |")
  print(f"|{'-' * 106}|{'-' * 11}|{'-' * 12}|")
  for what, wall, rate in rows:
    print(f"| {what:<104} | {wall:>9} | {rate:>10} |")


if __name__ == "__main__":
  main()
