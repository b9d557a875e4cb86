"""Captioned data: the shapes renderer draws what its captions say, tokenisers round-trip, one caption per
image per step as a pure function of the batch index, coco_captions through tfds.testing.mock_data, and
one-line errors for bad caption settings."""
import collections
import json

import numpy as np
import pytest

from aigc_jax import data as data_lib
from aigc_jax.configs import base_config
from aigc_jax.data import caption_tokenizer as tok
from aigc_jax.data import captions, images
from aigc_jax.data.sources import captioned_digits, captioned_shapes as shapes
from aigc_jax.data.images import ImageSet
from aigc_jax.errors import UserError


def config(name="captioned_shapes", image_size=32, channels=3, **data):
  c = base_config()
  captions.add_caption_keys(c.data)
  c.data.name, c.data.image_size, c.data.channels = name, image_size, channels
  c.batch_size = 8
  for k, v in data.items():
    c.data[k] = v
  return c


def test_shapes_render_what_the_captions_say():
  test = captions.load_captioned(config(image_size=32).data, "test")
  assert len(test) == shapes.NUM_EXAMPLES["test"] and test.images.shape[1:] == (32, 32, 3)
  assert test.num_classes == 30 and len(set(test.labels.tolist())) == 30
  for scene, label in zip(test.scenes, test.labels):  # the main object: the largest, then the top-most
    main = shapes.main_object(scene)
    assert test.class_names[label] == f"{main['colour']} {main['shape']}"
    assert all(shapes.SIZES[o["size"]] < shapes.SIZES[main["size"]] or o["box"][1] >= main["box"][1]
               for o in scene["objects"])
  for image, scene, caps in zip(test.images[:300], test.scenes, test.captions):
    covered = np.zeros((32, 32), bool)
    for o in scene["objects"]:
      x0, y0, x1, y1 = shapes.pixel_box(o["box"], 32)
      covered[y0:y1, x0:x1] = True
      # The box centre has the object's palette colour (no shape overlaps another's box).
      np.testing.assert_array_equal(image[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2], shapes.COLOURS[o["colour"]])
      assert (x1 - x0) == round(shapes.SIZES[o["size"]] * 32) or abs(x1 - x0 - shapes.SIZES[o["size"]] * 32) <= 1
    assert (image[~covered] == shapes.BACKGROUND).all()  # nothing drawn outside the boxes
    assert len(caps) == 2
    for caption in caps:
      parsed = shapes.parse_caption(caption)
      # Each parsed object is the scene object of that colour and shape, with its size when stated.
      by_kind = {(o["colour"], o["shape"]): o for o in scene["objects"]}
      assert len(by_kind) == len(scene["objects"]) == len(parsed["objects"])
      for p in parsed["objects"]:
        assert p["size"] in (None, by_kind[p["colour"], p["shape"]]["size"])
      for a, relation, b in parsed["relations"]:
        box_a = by_kind[parsed["objects"][a]["colour"], parsed["objects"][a]["shape"]]["box"]
        box_b = by_kind[parsed["objects"][b]["colour"], parsed["objects"][b]["shape"]]["box"]
        assert shapes.relation_holds(box_a, relation, box_b)
        assert shapes.relation_holds(shapes.pixel_box(box_a, 32), relation, shapes.pixel_box(box_b, 32))
  assert collections.Counter(len(s["objects"]) for s in test.scenes).keys() == {1, 2, 3}
  assert {r for s in test.scenes for _, r, _ in s["relations"]} == set(shapes.RELATIONS)
  assert shapes.parse_caption("a red circle above a large blue square")["relations"] == [[0, "above", 1]]
  with pytest.raises(ValueError, match="not a caption"):
    shapes.parse_caption("a red circle beside a blue square")


def test_shapes_deterministic_any_size_disjoint_splits():
  small = shapes.load_shapes("test", 16)
  again = captions.load_captioned(config(image_size=24).data, "test")
  assert small.scenes == again.scenes and small.captions == again.captions  # same scenes at any size
  assert shapes.scene("test", 7) == small.scenes[7]
  assert shapes.scene("test", 7, seed=1) != shapes.scene("test", 7)
  train = {json.dumps(shapes.scene("train", i)["objects"]) for i in range(shapes.NUM_EXAMPLES["train"])}
  assert len(train) == shapes.NUM_EXAMPLES["train"]
  assert not train & {json.dumps(s["objects"]) for s in small.scenes}
  assert again.truncated == 0 and again.tokens_CxL.shape[1] == 128  # every caption fits as bytes


def test_byte_tokenizer_round_trip_padding_truncation():
  t = tok.CaptionTokenizer("byte")
  for text in ("a red circle", "naïve café ☃ 日本 🙂", "", " two  spaces\tand\nnewline "):
    ids = t.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
    assert ids.min(initial=tok.BYTE_OFFSET) >= tok.BYTE_OFFSET and ids.max(initial=0) < t.vocab_size == 259
    assert t.decode(ids) == text
  tokens, mask, cut = t.encode_padded(["ab", "abcdef"], 6)
  np.testing.assert_array_equal(tokens, [[tok.BOS_ID, 100, 101, tok.EOS_ID, 0, 0],
                                         [tok.BOS_ID, 100, 101, 102, 103, tok.EOS_ID]])
  np.testing.assert_array_equal(mask, tokens != tok.PAD_ID)
  assert cut == 1 and t.decode(tokens[1]) == "abcd" and t.decode(tokens[0]) == "ab"
  assert tok.CaptionTokenizer.from_merges_array(t.merges_array()) == t and t.merges_array().shape == (0, 2)
  with pytest.raises(UserError, match="caption_length=6"):
    captions.encode_prompts(t, ["abcdefg"], 6)


def _naive_bpe(texts, vocab_size):
  """Reference: recount every pair over the whole corpus before each merge."""
  words = collections.Counter(p for s in texts for p in tok.pieces(s))
  seqs = {w: [b + tok.BYTE_OFFSET for b in w.encode()] for w in words}
  merges = []
  while len(merges) < vocab_size - tok.BYTE_VOCAB_SIZE:
    counts = collections.Counter()
    for w, ids in seqs.items():
      for pair in zip(ids, ids[1:]):
        counts[pair] += words[w]
    if not counts or max(counts.values()) < 2:
      break
    best = min(counts, key=lambda p: (-counts[p], p))
    merges.append(best)
    seqs = {w: tok._merge(ids, best, tok.BYTE_VOCAB_SIZE + len(merges) - 1) for w, ids in seqs.items()}
  return merges


def test_bpe_round_trip_determinism_and_reference(tmp_path):
  corpus = [c for i in range(300) for c in shapes.captions(shapes.scene("train", i))]
  corpus += ["an aardvark, an aardvark!", "banana bandana", "ünïcödé ünïcödé"]
  bpe = tok.train_bpe(corpus, 400)
  assert 0 < len(bpe.merges) <= 400 - 259 and bpe.vocab_size == 400
  assert list(bpe.merges) == _naive_bpe(corpus, 400)  # the incremental counts equal a recount
  assert tok.train_bpe(corpus[::-1], 400) == bpe  # order-free: a function of the caption multiset
  for text in corpus[:50] + ["zebra 🙂 never seen", "a  red\tcircle "]:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text and ids.max() < 400
  assert len(bpe.encode(corpus[0])) < len(corpus[0]) / 2  # it compresses the captions it was trained on
  merges = bpe.merges_array()
  assert merges.shape == (141, 2) and (merges[len(bpe.merges):] == -1).all()
  assert tok.CaptionTokenizer.from_merges_array(merges) == bpe
  bpe.save(str(tmp_path / "t.json"))
  assert tok.CaptionTokenizer.load(str(tmp_path / "t.json")) == bpe
  # Through the config: written to data.tokenizer_path on first use, then read back from it.
  path = str(tmp_path / "tok" / "shapes_bpe.json")
  c = config(tokenizer="bpe", bpe_vocab_size=300, tokenizer_path=path, split="test")  # trains on data.split
  trained = captions.make_tokenizer(c.data)
  assert tok.CaptionTokenizer.load(path) == trained == captions.make_tokenizer(c.data)
  assert captions.vocab_size(c.data) == 300 and captions.vocab_size(config().data) == 259
  loaded = captions.load_captioned(c.data, "test")
  assert loaded.tokenizer == trained and loaded.tokens_CxL.max() < 300
  assert trained.decode(loaded.tokens_CxL[loaded.offsets[3] + 1]) == loaded.captions[3][1]


def test_one_caption_per_step_is_a_pure_function_of_the_batch_index():
  c = config(image_size=16)
  c.data.split = "test"
  it = data_lib.make_train_iterator(c)
  loaded = captions.load_captioned(c.data)
  batches = [it.batch_at(i) for i in range(0, 400, 7)]
  later = data_lib.make_train_iterator(c, start_batch=14)
  np.testing.assert_array_equal(next(later)["caption_tokens"], batches[2]["caption_tokens"])
  it.close(), later.close()
  b = batches[0]
  assert b["caption_tokens"].shape == (8, 128) and b["caption_tokens"].dtype == np.int32
  assert b["caption_mask"].dtype == bool and (b["caption_mask"] == (b["caption_tokens"] != 0)).all()
  assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
  two_hosts = [captions.CaptionedBatchIterator(loaded, 8, c.seed, process_index=h, process_count=2, prefetch=0)
               for h in range(2)]
  shown = collections.defaultdict(set)
  for i, batch in zip(range(0, 400, 7), batches):
    halves = [h.batch_at(i) for h in two_hosts]
    np.testing.assert_array_equal(np.concatenate([h["caption_tokens"] for h in halves]), batch["caption_tokens"])
    _, idx = two_hosts[0].rows_at(i)
    _, idx1 = two_hosts[1].rows_at(i)
    for row, tokens, image in zip(np.concatenate([idx, idx1]), batch["caption_tokens"], batch["image"]):
      text = loaded.tokenizer.decode(tokens)
      assert text in loaded.captions[row]  # the caption belongs to the image it comes with
      np.testing.assert_array_equal(data_lib.to_model_range(loaded.images[row]), image)
      shown[row].add(text)
  assert sum(len(s) == 2 for s in shown.values()) > 10  # images seen twice show both of their captions
  # data.fraction keeps each image's captions with it.
  sub = data_lib.get_source("captioned_shapes").train_subset(config(fraction=0.1).data, loaded)
  assert len(sub) == 100 and sub.subset_of == 1000 and len(sub.tokens_CxL) == 200
  rows = [int(np.flatnonzero((loaded.images == im).all(axis=(1, 2, 3)))[0]) for im in sub.images[:20]]
  assert [sub.captions[k] for k in range(20)] == [loaded.captions[r] for r in rows]
  assert loaded.tokenizer.decode(sub.tokens_CxL[sub.offsets[5]]) == sub.captions[5][0]


@pytest.fixture
def fake_digits(monkeypatch):
  """40 random 8x8 "digits" in place of scikit-learn's (whose import alone costs ~4 CPU-s): the captioned
  sources wrap whatever images.load_digits returns, split for split."""
  rng = np.random.default_rng(0)
  sets = {split: ImageSet(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), np.arange(n, dtype=np.int32) % 10, 10)
          for split, n in (("train", 40), ("test", 12))}
  monkeypatch.setattr(images, "load_digits", lambda split, image_size: sets[split])
  captioned_digits.load.cache_clear()
  yield sets
  captioned_digits.load.cache_clear()


def test_captioned_digits_and_image_set(fake_digits):
  c = config("captioned_digits", image_size=8, channels=1)
  train = data_lib.load_image_set(c.data)
  assert isinstance(train, captions.CaptionedSet) and train.num_classes == 10 and train.class_names[7] == "seven"
  np.testing.assert_array_equal(train.images, fake_digits["train"].images)  # the digits' images, in their order
  templates = []
  for (caption,), label in zip(train.captions, train.labels):
    name = captioned_digits.DIGIT_NAMES[label]
    assert name in caption.split()
    templates.append(captioned_digits.TEMPLATES.index(caption.replace(name, "{}")))
  np.testing.assert_array_equal(templates, captioned_digits.caption_templates("train", 40))
  assert set(templates) == set(range(len(captioned_digits.TEMPLATES)))
  everything = captions.load_captioned(c.data, "all")
  assert everything.captions == train.captions + captions.load_captioned(c.data, "test").captions
  batch = data_lib.example_batch(c, 4)
  assert batch["caption_tokens"].shape == (4, 128) and batch["image"].shape == (4, 8, 8, 1)
  assert batch["caption_mask"].dtype == bool
  assert data_lib.get_source("captioned_digits").describe(captions.load_captioned(c.data)) == (
      "40 images 8x8x1, 10 classes; 40 captions (1 per image), byte tokens (259 ids), caption_length 128")


@pytest.mark.parametrize("key,value,match", [
    ("tokenizer", "words", "data.tokenizer must be one of byte, bpe"),
    ("caption_length", 1, "data.caption_length must be an integer >= 2"),
    ("bpe_vocab_size", 300, "data.bpe_vocab_size=300 is read by the bpe tokenizer only"),
    ("tokenizer_path", "x.json", "data.tokenizer_path is read by the bpe tokenizer only"),
    ("random_flip", True, "random_flip=True would mirror"),
    ("channels", 1, "set --config.data.channels=3"),
    ("image_size", 8, "image_size to at least 16"),
    ("split", "validation", "captioned_shapes has splits train, test"),
])
def test_bad_caption_settings_are_one_line_errors(key, value, match):
  c = config(split="test")  # the smaller split, where one is read before the error
  c.data[key] = value
  with pytest.raises(UserError, match=match) as e:
    captions.load_captioned(c.data)
  assert "\n" not in str(e.value)


def test_more_bad_input(tmp_path):
  with pytest.raises(UserError, match="above 259"):
    captions.vocab_size(config(tokenizer="bpe", bpe_vocab_size=259).data)
  with pytest.raises(UserError, match="has no captions"):
    captions.load_captioned(config("digits", channels=1).data)
  with pytest.raises(UserError, match="caption_length is not used by data source 'digits'.*captioned_shapes"):
    data_lib.check_set_keys(config("digits").data, ["data.caption_length"])
  path = tmp_path / "t.json"
  tok.train_bpe(["a red circle"] * 3, 280).save(str(path))
  with pytest.raises(UserError, match="bpe_vocab_size=280"):
    captions.make_tokenizer(config(tokenizer="bpe", tokenizer_path=str(path)).data)
  path.write_text("{}")
  with pytest.raises(UserError, match="not a caption tokenizer"):
    captions.make_tokenizer(config(tokenizer="bpe", tokenizer_path=str(path)).data)
  with pytest.raises(UserError, match="no prompts"):
    captions.encode_prompts(tok.CaptionTokenizer("byte"), [], 8)
  with pytest.raises(UserError, match="no caption or an empty one"):
    captions.check_captions("x", [("a",), ("",)])


def test_coco_captions_with_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  from aigc_jax.data import tfds_source
  monkeypatch.setattr(tfds_source, "network_unreachable", lambda: False)  # mock_data stands in for the network
  c = config("coco_captions", image_size=16, data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=6):
    loaded = captions.load_captioned(c.data)
    it = data_lib.make_train_iterator(c)
    batch = it.batch_at(0)
    it.close()
  assert loaded.images.shape == (6, 16, 16, 3) and loaded.images.dtype == np.uint8 and loaded.labels is None
  assert all(len(caps) >= 1 and all(isinstance(s, str) and s for s in caps) for caps in loaded.captions)
  assert len(loaded.tokens_CxL) == sum(len(caps) for caps in loaded.captions)
  assert batch["caption_tokens"].shape == (8, 128) and (batch["label"] == -1).all()
  for tokens in batch["caption_tokens"]:
    assert any(loaded.tokenizer.decode(tokens) == s[:126] for caps in loaded.captions for s in caps)
