"""VQ codes as data: --mode=encode's provenance, the `codes` source (batches, resume, hosts, the VQ's own images
for FID), the VQ decoder restored from the recorded checkpoint, and one-line errors for mismatched files."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import encoding, parallel, runtime, trainer
from aigc_jax.configs import load_experiment
from aigc_jax.data.sources import codes as codes_source
from aigc_jax.errors import UserError
from aigc_jax.evaluation import classifier, reference
from aigc_jax.families import code_prior_lib, get_family
from aigc_jax.families import vqvae as vq_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_vq_config():
  c = load_experiment(os.path.join(ROOT, "experiments", "vqvae.py"), "cpu")
  c.model.hidden, c.model.residual_hidden, c.model.num_codes, c.model.code_dim = 16, 8, 16, 4
  c.batch_size, c.num_train_steps = 32, 4
  c.checkpoint_every_steps = c.log_every_steps = 4
  c.sample_every_steps = 0
  return c


def train_and_encode(workdir: str):
  """A tiny VQ-VAE on 16x16 digits (8x8 code grids), 4 steps, train and test splits encoded."""
  config = tiny_vq_config()
  trainer.train_and_evaluate(config, workdir)
  paths = {}
  for split in ("train", "test"):
    config.data.split = split
    paths[split] = encoding.encode(config, workdir)
  config.data.split = "train"
  return config, paths


def prior_data(vq_workdir, **overrides):
  d = ConfigDict({"name": "codes", "split": "train", "vq_workdir": str(vq_workdir), "num_codes": 16,
                  "grid_size": 8, "image_size": 16, "channels": 1})
  d.update(overrides)
  return d


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vq")
  config, paths = train_and_encode(str(workdir))
  return workdir, config, paths


def test_encode_records_its_provenance(vq_run):
  workdir, config, paths = vq_run
  assert paths["train"].endswith(os.path.join("codes", "train_4.npz"))
  with np.load(paths["test"]) as npz:
    assert npz["codes"].shape == (297, 8, 8) and npz["codes"].dtype == np.int32
    assert npz["labels"].shape == (297,) and int(npz["step"]) == 4 and int(npz["num_codes"]) == 16
    assert str(npz["vq_workdir"]) == os.path.abspath(workdir)
    recorded = json.loads(str(npz["vq_config"]))
  assert recorded["family"] == "vqvae" and recorded["model"]["num_codes"] == 16
  assert recorded["data"]["name"] == "digits" and recorded["data"]["image_size"] == 16


def test_codes_source_batches_resume_and_split_across_hosts(vq_run):
  workdir, _, paths = vq_run
  data = prior_data(workdir)
  code_set = data_lib.load_split(data)
  with np.load(paths["train"]) as npz:
    np.testing.assert_array_equal(code_set.codes, npz["codes"])
    np.testing.assert_array_equal(code_set.labels, npz["labels"])
  config = ConfigDict({"data": data, "batch_size": 8, "seed": 3})
  assert data_lib.get_source("codes").medium == "images"
  example = data_lib.example_batch(config, 8)
  it = codes_source.CodeBatchIterator(code_set, 8, seed=3)
  batches = [next(it) for _ in range(3)]
  assert jax.tree.map(lambda a: (a.shape, a.dtype), batches[0]) == jax.tree.map(lambda a: (a.shape, a.dtype), example)
  resumed = codes_source.CodeBatchIterator(code_set, 8, seed=3, start_batch=2)
  np.testing.assert_array_equal(next(resumed)["codes"], batches[2]["codes"])
  hosts = [codes_source.CodeBatchIterator(code_set, 8, seed=3, process_index=h, process_count=2).batch_at(1)
           for h in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["label"] for h in hosts]), batches[1]["label"])
  # One epoch visits every grid once; the next epoch is shuffled differently.
  n = len(code_set)
  epoch = codes_source.CodeBatchIterator(code_set, n, seed=3)
  first, second = epoch.batch_at(0)["codes"], epoch.batch_at(1)["codes"]
  assert sorted(map(bytes, first)) == sorted(map(bytes, code_set.codes))
  assert not np.array_equal(first, second)


def test_fid_reference_images_are_the_vq_runs_own_dataset(vq_run):
  workdir, config, _ = vq_run
  images = data_lib.load_image_set(prior_data(workdir), "test")
  np.testing.assert_array_equal(images.images, data_lib.load_image_set(config.data, "test").images)
  assert images.images.shape == (297, 16, 16, 1) and images.num_classes == 10


def test_decoded_codes_equal_the_vq_reconstruction(vq_run):
  workdir, config, paths = vq_run
  decode, info = code_prior_lib.load_vq_decoder(str(workdir), 4)
  assert info["num_codes"] == 16 and info["grid"] == (8, 8) and info["image_shape"] == (16, 16, 1)
  assert info["step"] == 4 and info["num_classes"] == 10
  family = get_family(config)
  state, _, _ = runtime.load_latest(config, str(workdir), family, parallel.make_mesh(config))
  x = data_lib.to_model_range(data_lib.load_image_set(config.data, "test").images[:8])
  variables = {"params": state["params"], "codebook": state["codebook"]}
  recon = np.clip(jax.jit(vq_family.build_model(config).apply)(variables, x)[0], -1, 1)
  codes = np.load(paths["test"])["codes"][:8]
  images = jax.jit(decode)(codes)
  assert images.shape == (8, 16, 16, 1)
  np.testing.assert_allclose(images, recon, atol=1e-5)


def one_line_error(match, fn, *args):
  with pytest.raises(UserError, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_bad_code_files_and_missing_checkpoints_are_one_line_errors(vq_run, tmp_path):
  workdir, _, _ = vq_run
  load = lambda d, split="train": codes_source.load_codes(d, split)
  one_line_error("data.num_codes=512", load, prior_data(workdir, num_codes=512))
  one_line_error("data.grid_size=4", load, prior_data(workdir, grid_size=4))
  one_line_error("data.image_size=32", load, prior_data(workdir, image_size=32))
  one_line_error("data.vq_workdir is empty", load, prior_data(""))
  message = one_line_error("no codes of split 'train'", load, prior_data(tmp_path))
  assert "--mode=encode" in message
  message = one_line_error("split 'validation' was not encoded", load, prior_data(workdir), "validation")
  assert "--config.data.split=validation" in message
  one_line_error("data.vq_workdir=.* has no checkpoints", code_prior_lib.load_vq_decoder, str(tmp_path))
  one_line_error("no checkpoint of step 3 .*data.vq_workdir", code_prior_lib.load_vq_decoder, str(workdir), 3)
  prior = ConfigDict({"data": prior_data(workdir), "model": {"num_classes": 5}})
  one_line_error("model.num_classes=5 .* labels up to 9", code_prior_lib.check_prior, prior)
  prior.model.num_classes = 10
  assert code_prior_lib.check_prior(prior).step == 4
  # The codes were written by a checkpoint that is gone: decoding them would use the wrong codebook.
  moved = tmp_path / "vq_copy"
  shutil.copytree(workdir / "codes", moved / "codes")
  one_line_error("checkpoint 4, which wrote", code_prior_lib.check_prior,
                 ConfigDict({"data": prior_data(moved), "model": {"num_classes": 10}}))


def test_evaluation_caches_tell_two_vq_runs_apart():
  """Two priors over different VQ runs' codes (both data.name='codes') must not share a cached classifier or
  reference statistics; other sources' cache keys are unchanged."""
  def config(vq_workdir):
    return ConfigDict({"data": {"name": "codes", "path": "", "image_size": 16, "channels": 1,
                                "vq_workdir": vq_workdir},
                       "eval": {"classifier_steps": 600, "max_pairwise_samples": 100}})
  info = {"weights_sha256": "x", "resize": "none"}
  a, b = config("runs/vq_a"), config("runs/vq_b")
  assert classifier.cache_path(a, "/c", 10) != classifier.cache_path(b, "/c", 10)
  assert reference.cache_key(a, "test", "classifier", info) != reference.cache_key(b, "test", "classifier", info)
  digits = ConfigDict({"data": {"name": "digits", "path": "", "image_size": 16, "channels": 1},
                       "eval": {"max_pairwise_samples": 100}})
  assert "vq_workdir" not in reference.cache_key(digits, "test", "classifier", info)
