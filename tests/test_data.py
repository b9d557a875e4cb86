"""Data: TFDS pipelines under tfds.testing.mock_data, the offline sources, and the resumable iterator."""
import os

import numpy as np
import pytest
from PIL import Image

from aigc_jax import data as data_lib
from aigc_jax.configs import base_config
from aigc_jax.data import images as sources
from aigc_jax.data.pipeline import BatchIterator
from aigc_jax.errors import UserError


def data_config(name, channels=1, image_size=16, **kw):
  c = base_config()
  c.data.name = name
  c.data.channels = channels
  c.data.image_size = image_size
  c.batch_size = 8
  for k, v in kw.items():
    c.data[k] = v
  return c


def assert_model_batch(batch, size, channels, batch_size=8):
  image = batch["image"]
  assert image.shape == (batch_size, size, size, channels) and image.dtype == np.float32
  assert image.min() >= -1.0 and image.max() <= 1.0
  assert image.max() > image.min()  # not a constant image
  assert batch["label"].shape == (batch_size,) and batch["label"].dtype == np.int32


@pytest.mark.parametrize("name,channels,native", [("mnist", 1, 28), ("cifar10", 3, 32)])
def test_tfds_pipeline_with_mock_data(tmp_path, monkeypatch, name, channels, native):
  tfds = pytest.importorskip("tensorflow_datasets")
  from aigc_jax.data import tfds_source
  # mock_data stands in for the network, so the offline probe in front of a real download must not fire.
  monkeypatch.setattr(tfds_source, "network_unreachable", lambda: False)
  config = data_config(name, channels, image_size=16, data_dir=str(tmp_path))  # empty dir: nothing cached
  with tfds.testing.mock_data(num_examples=24):
    image_set = data_lib.load_image_set(config.data)
    # Native size: no resize, and every pixel value the mock draws survives as uint8.
    native_set = data_lib.load_image_set(data_config(name, channels, image_size=native, data_dir=str(tmp_path)).data)
    iterator = data_lib.make_train_iterator(config)
    batch = next(iterator)
    iterator.close()
  assert image_set.images.shape == (24, 16, 16, channels) and image_set.images.dtype == np.uint8
  assert native_set.images.shape == (24, native, native, channels)
  assert image_set.num_classes == 10 and image_set.labels.dtype == np.int32
  assert set(np.unique(image_set.labels)) <= set(range(10))
  assert_model_batch(batch, 16, channels)
  # The batch is the [-1, 1] image of rows of the loaded set.
  rows = [np.flatnonzero((data_lib.to_model_range(image_set.images) == b).all(axis=(1, 2, 3)))
          for b in batch["image"]]
  assert all(len(r) >= 1 for r in rows)


def test_unknown_dataset_name():
  with pytest.raises(UserError, match="unknown dataset 'no_such_set'"):
    data_lib.load_image_set(data_config("no_such_set").data)


def test_digits_splits_and_range():
  train = data_lib.load_image_set(data_config("digits", image_size=32).data)
  test = data_lib.load_image_set(data_config("digits", image_size=32, split="test").data)
  everything = data_lib.load_image_set(data_config("digits", image_size=8, split="all").data)
  assert len(train) == 1797 - sources.DIGITS_NUM_TEST == 1500 and len(test) == 297 and len(everything) == 1797
  assert train.images.shape == (1500, 32, 32, 1) and train.images.dtype == np.uint8
  assert set(np.unique(train.labels)) == set(range(10)) and train.num_classes == 10
  assert everything.images.max() == 255 and everything.images.min() == 0
  np.testing.assert_array_equal(everything.labels[:1500], train.labels)
  with pytest.raises(UserError, match="split"):
    data_lib.load_image_set(data_config("digits", split="validation").data)


def test_npz_source(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 12, 12), dtype=np.uint8)  # NHW: a channel axis is added
  labels = np.arange(10) % 3
  path = tmp_path / "set.npz"
  np.savez(path, images=images, labels=labels)
  image_set = data_lib.load_image_set(data_config("npz", image_size=12, path=str(path)).data)
  np.testing.assert_array_equal(image_set.images[..., 0], images)
  np.testing.assert_array_equal(image_set.labels, labels)
  assert image_set.num_classes == 3
  resized = data_lib.load_image_set(data_config("npz", image_size=8, path=str(path)).data)
  assert resized.images.shape == (10, 8, 8, 1)
  np.savez(tmp_path / "float.npz", images=images.astype(np.float32))
  with pytest.raises(UserError, match="uint8"):
    data_lib.load_image_set(data_config("npz", path=str(tmp_path / "float.npz")).data)
  with pytest.raises(UserError, match="not found"):
    data_lib.load_image_set(data_config("npz", path=str(tmp_path / "missing.npz")).data)


def test_image_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  for cls in ("cats", "dogs"):
    (tmp_path / cls).mkdir()
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
  rgb = data_lib.load_image_set(data_config("image_folder", channels=3, image_size=8, path=str(tmp_path)).data)
  assert rgb.images.shape == (6, 8, 8, 3) and rgb.images.dtype == np.uint8
  np.testing.assert_array_equal(rgb.labels, [0, 0, 0, 1, 1, 1])
  assert rgb.num_classes == 2
  gray = data_lib.load_image_set(data_config("image_folder", channels=1, image_size=8, path=str(tmp_path)).data)
  assert gray.images.shape == (6, 8, 8, 1)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no images"):
    data_lib.load_image_set(data_config("image_folder", path=str(tmp_path / "empty")).data)


def small_set(n=21):
  images = (np.arange(n, dtype=np.uint8) * 10)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  images[:, 0, 0, 0] = 0  # an asymmetric pixel so a horizontal flip is visible
  return sources.ImageSet(images, np.arange(n, dtype=np.int32), n)


def take(iterator, n):
  out = [next(iterator) for _ in range(n)]
  iterator.close()
  return out


def test_iterator_batch_at_matches_iteration_and_restart():
  image_set = small_set()
  stream = take(BatchIterator(image_set, 6, seed=3, random_flip=True), 9)  # crosses two epoch boundaries
  pure = BatchIterator(image_set, 6, seed=3, random_flip=True, prefetch=0)
  for b, batch in enumerate(stream):
    np.testing.assert_array_equal(batch["image"], pure.batch_at(b)["image"])
    np.testing.assert_array_equal(batch["label"], pure.batch_at(b)["label"])
  resumed = BatchIterator(image_set, 6, seed=3, random_flip=True, start_batch=4)
  for b, batch in enumerate(take(resumed, 5), start=4):
    np.testing.assert_array_equal(batch["image"], stream[b]["image"])
    np.testing.assert_array_equal(batch["label"], stream[b]["label"])
  # Each epoch is a permutation: 21 examples, batch 6 -> the first 3 batches + 3 rows hold each label once.
  first_epoch = np.concatenate([s["label"] for s in stream])[:21]
  assert sorted(first_epoch) == list(range(21))
  other_seed = take(BatchIterator(image_set, 6, seed=4), 1)[0]
  assert not np.array_equal(other_seed["label"], stream[0]["label"])


def test_iterator_counts_batches_consumed():
  iterator = BatchIterator(small_set(), 6, seed=0, start_batch=2)
  assert iterator.batches_consumed == 2
  take(iterator, 3)
  assert iterator.batches_consumed == 5


def test_two_hosts_slices_concatenate_to_one_host_batch():
  image_set = small_set()
  one = BatchIterator(image_set, 8, seed=1, random_flip=True, prefetch=0)
  hosts = [BatchIterator(image_set, 8, seed=1, random_flip=True, process_index=h, process_count=2, prefetch=0)
           for h in range(2)]
  for b in range(6):
    parts = [h.batch_at(b) for h in hosts]
    assert parts[0]["image"].shape[0] == 4
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), one.batch_at(b)[key])


def test_random_flip_is_deterministic_and_flips_some():
  image_set = small_set()
  flipped = BatchIterator(image_set, 21, seed=5, random_flip=True, prefetch=0).batch_at(0)
  again = BatchIterator(image_set, 21, seed=5, random_flip=True, prefetch=0).batch_at(0)
  plain = BatchIterator(image_set, 21, seed=5, random_flip=False, prefetch=0).batch_at(0)
  np.testing.assert_array_equal(flipped["image"], again["image"])
  np.testing.assert_array_equal(flipped["label"], plain["label"])  # flips change pixels, not order
  is_flipped = [not np.array_equal(f, p) for f, p in zip(flipped["image"], plain["image"])]
  assert 0 < sum(is_flipped) < 21
  for f, p, was in zip(flipped["image"], plain["image"], is_flipped):
    np.testing.assert_array_equal(f, p[:, ::-1] if was else p)


def test_mnist_5k_is_real_mnist_with_fixed_splits():
  train = data_lib.load_image_set(data_config("mnist_5k", image_size=28, split="train").data)
  test = data_lib.load_image_set(data_config("mnist_5k", image_size=28).data, "test")
  assert train.images.shape == (4500, 28, 28, 1) and test.images.shape == (500, 28, 28, 1)
  assert list(np.bincount(train.labels)) == [450] * 10 and list(np.bincount(test.labels)) == [50] * 10
  # MNIST digits: mostly black background, white strokes, ~19% of pixels lit.
  lit = (train.images > 127).mean()
  assert train.images.dtype == np.uint8 and train.images.max() == 255 and 0.1 < lit < 0.3
  assert not {r.tobytes() for r in test.images[:50]} & {r.tobytes() for r in train.images}  # disjoint splits
  with pytest.raises(UserError, match="mnist_5k has splits"):
    data_lib.load_image_set(data_config("mnist_5k").data, "validation")


def test_registry_knows_every_built_in_source_and_its_medium():
  names = data_lib.known_sources()
  for name in ("digits", "mnist_5k", "npz", "image_folder", "mnist", "cifar10", "text_file", "python_stdlib",
               "tiny_shakespeare"):
    assert name in names
  assert data_lib.get_source("digits").medium == "images" and data_lib.get_source("text_file").medium == "text"
  with pytest.raises(UserError, match="registered sources: .*digits"):
    data_lib.get_source("no_such_source_anywhere")


def test_a_data_key_the_source_does_not_read_is_an_error_naming_the_sources_that_do():
  config = base_config()
  config.data.name = "python_stdlib"
  with pytest.raises(UserError) as e:
    data_lib.check_set_keys(config.data, ["data.path", "batch_size"])
  message = str(e.value)
  assert "--config.data.path is not used by data source 'python_stdlib'" in message and "text_file" in message
  assert "\n" not in message
  config.data.name = "digits"
  data_lib.check_set_keys(config.data, ["data.image_size", "data.split", "seed"])  # all read by digits
  with pytest.raises(UserError, match="image_folder, npz"):
    data_lib.check_set_keys(config.data, ["data.path"])


def test_cli_rejects_a_data_path_the_source_would_ignore(tmp_path, monkeypatch, capsys):
  import sys

  from aigc_jax import main
  monkeypatch.setattr(sys, "argv", ["aigc_jax", "--config=experiments/gpt.py:cpu", f"--workdir={tmp_path}",
                                    "--config.data.path=input.txt"])
  with pytest.raises(SystemExit) as exit_info:
    main.run()
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: --config.data.path")
  assert "text_file" in err[0] and not os.listdir(tmp_path)
