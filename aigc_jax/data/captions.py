"""Captioned images (text-to-image data): images with one or more captions each, tokenised by the project.

A captioned source is an image source (medium "images") whose loaded split is a `CaptionedSet`, an
`images.ImageSet` with captions: FID/IS references, the classifier backbone and data.fraction work on it
unchanged. Its training batches extend the image batches of pipeline.BatchIterator:

  {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B] (-1 when the set has no classes),
   "caption_tokens": int32 [B, L] ([BOS] ids [EOS] then PAD=0), "caption_mask": bool [B, L] (tokens != PAD)}

with L = data.caption_length. An image with several captions (COCO has five) shows one per step: the caption
of stream position p is drawn by a generator seeded by (seed, 2, p), as random flips are by (seed, 1, p), so
`batch_at(i)` stays a pure function of i and resume is exact on any host count.

Config keys (every captioned source reads them; `add_caption_keys` puts them with their defaults into a
family's default_config; a config without them gets the defaults):
  data.caption_length   tokens per caption with BOS and EOS (>= 2; default 128, which holds every
                        captioned_shapes caption as bytes, at most 111); longer captions are truncated (the
                        set's description counts them); a prompt that does not fit is an error (encode_prompts)
  data.tokenizer        byte (UTF-8 bytes, 259 ids) | bpe (byte-level BPE trained on the training split's
                        captions, caption_tokenizer.train_bpe)
  data.bpe_vocab_size   bpe only: ids including the 259 byte/special ones; 0 = 512. Nonzero with byte: error
  data.tokenizer_path   bpe only: a tokenizer JSON; read if it exists, else trained and written there (so a
                        run's tokenizer can be kept next to its data or checkpoint). "" = trained in memory
"""
import dataclasses
import os
from typing import Callable, Optional

import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data import caption_tokenizer as tok
from aigc_jax.data.caption_tokenizer import BOS_ID, EOS_ID, PAD_ID, CaptionTokenizer  # noqa: F401 (public)
from aigc_jax.data.images import ImageSet
from aigc_jax.data.pipeline import IMAGE_KEYS, BatchIterator, image_example_batch, image_source, training_subset
from aigc_jax.data.registry import DataSource, get_source
from aigc_jax.errors import UserError

DEFAULTS = {"caption_length": 128, "tokenizer": "byte", "bpe_vocab_size": 0, "tokenizer_path": ""}
CAPTION_KEYS = tuple(DEFAULTS)
DEFAULT_BPE_VOCAB_SIZE = 512
_CAPTION_STREAM = 2  # the caption draw's entry in its seed (random flips use 1)


def add_caption_keys(data: ConfigDict) -> ConfigDict:
  """Adds the caption keys with their defaults to a family's data config (default_config), in place."""
  for key, value in DEFAULTS.items():
    if key not in data:
      data[key] = value
  return data


def caption_value(data: ConfigDict, key: str):
  return data.get(key, DEFAULTS[key])


def caption_length(data: ConfigDict) -> int:
  return tok.check_length(caption_value(data, "caption_length"))


def bpe_vocab_size(data: ConfigDict) -> int:
  """The configured BPE vocabulary (0 -> DEFAULT_BPE_VOCAB_SIZE), checked against the tokenizer kind."""
  kind, size = caption_value(data, "tokenizer"), caption_value(data, "bpe_vocab_size")
  if kind not in tok.KINDS:
    tok.CaptionTokenizer(kind)  # the one-line error naming the kinds
  if kind == "byte":
    if size:
      raise UserError(f"data.bpe_vocab_size={size} is read by the bpe tokenizer only, but data.tokenizer=byte; "
                      "set --config.data.tokenizer=bpe, or --config.data.bpe_vocab_size=0")
    if caption_value(data, "tokenizer_path"):
      raise UserError("data.tokenizer_path is read by the bpe tokenizer only, but data.tokenizer=byte; set "
                      "--config.data.tokenizer=bpe, or --config.data.tokenizer_path=''")
    return 0
  size = size or DEFAULT_BPE_VOCAB_SIZE
  if isinstance(size, bool) or not isinstance(size, int) or size <= tok.BYTE_VOCAB_SIZE:
    raise UserError(f"data.bpe_vocab_size must be an integer above {tok.BYTE_VOCAB_SIZE} (the 256 bytes and 3 "
                    f"special tokens come first), got {size!r}; set e.g. --config.data.bpe_vocab_size=512")
  return size


def vocab_size(data: ConfigDict) -> int:
  """Token ids a model must embed: 259 for byte, data.bpe_vocab_size for bpe. Reads no data."""
  return bpe_vocab_size(data) or tok.BYTE_VOCAB_SIZE


@dataclasses.dataclass(frozen=True)
class CaptionedSet(ImageSet):
  """An ImageSet with captions. Caption k of example i is tokens_CxL[offsets[i] + k]; `count(i)` = offsets[i+1]
  - offsets[i] >= 1. `scenes` (captioned_shapes) holds a JSON-able description of each image, () otherwise.
  A set straight from a source's raw loader has tokens_CxL None; `CaptionedSource.load` tokenises it."""
  captions: tuple = ()                       # per example: a tuple of one or more str
  class_names: tuple = ()                    # per label, e.g. ("zero", ..., "nine"); () without classes
  scenes: tuple = ()
  tokens_CxL: Optional[np.ndarray] = None    # int32 [total captions, caption_length]
  offsets: Optional[np.ndarray] = None       # int64 [N + 1]
  tokenizer: Optional[CaptionTokenizer] = None
  truncated: int = 0                         # captions cut to caption_length

  def count(self, i) -> np.ndarray:
    return self.offsets[np.asarray(i) + 1] - self.offsets[np.asarray(i)]

  def rows(self, rows: np.ndarray, **changes) -> "CaptionedSet":
    """Examples `rows` (sorted int indices), captions and tokens with them."""
    captions = tuple(self.captions[r] for r in rows)
    kept = {"images": self.images[rows], "labels": None if self.labels is None else self.labels[rows],
            "captions": captions, "scenes": tuple(self.scenes[r] for r in rows) if self.scenes else ()}
    if self.tokens_CxL is not None:
      counts = self.count(rows)
      kept["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
      kept["tokens_CxL"] = self.tokens_CxL[np.concatenate(
          [np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows] or [np.zeros(0, np.int64)])]
    return dataclasses.replace(self, **kept, **changes)


def check_captions(name: str, captions) -> tuple:
  """Each example's captions as a tuple of non-empty str (one-line error naming the source otherwise)."""
  out = tuple(tuple(c) if not isinstance(c, str) else (c,) for c in captions)
  empty = [i for i, c in enumerate(out) if not c or not all(isinstance(s, str) and s.strip() for s in c)]
  if empty:
    raise UserError(f"{name}: example {empty[0]} ({len(empty)} in all) has no caption or an empty one; every "
                    "image of a captioned set needs at least one non-empty caption")
  return out


_BPE_CACHE = {}


def make_tokenizer(data: ConfigDict) -> CaptionTokenizer:
  """The configured tokenizer. bpe: read from data.tokenizer_path when that file exists, else trained on every
  caption of the training split data.split (and written to data.tokenizer_path when it is set); one process
  trains it once per (source, split, vocabulary)."""
  size = bpe_vocab_size(data)
  if not size:
    return CaptionTokenizer("byte")
  path = caption_value(data, "tokenizer_path")
  if path and os.path.isfile(path):
    tokenizer = CaptionTokenizer.load(path)
    if tokenizer.vocab_size != size:
      raise UserError(f"{path} (data.tokenizer_path) holds a {tokenizer.kind} tokenizer of {tokenizer.vocab_size} "
                      f"ids but data.bpe_vocab_size={size}; set --config.data.bpe_vocab_size="
                      f"{tokenizer.vocab_size}, or another tokenizer_path")
    return tokenizer
  key = (data.name, data.get("data_dir", ""), data.split, size)
  if key not in _BPE_CACHE:
    raw = get_captioned_source(data.name).load_raw(data, data.split)
    _BPE_CACHE[key] = tok.train_bpe((c for caps in raw.captions for c in caps), size)
  if path:
    _BPE_CACHE[key].save(path)
  return _BPE_CACHE[key]


def encode_prompts(tokenizer: CaptionTokenizer, prompts, length: int):
  """(tokens int32 [N, length], mask bool [N, length]) of prompts a user typed: a prompt that does not fit is
  a one-line error (training captions are truncated instead, and counted)."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if not prompts:
    raise UserError("no prompts given; set --config.sample.prompt (or a prompts file with one prompt per line)")
  tokens, mask, _ = tokenizer.encode_padded(prompts, length, truncate=False)
  return tokens, mask


def tokenize_set(data: ConfigDict, raw: CaptionedSet, tokenizer: CaptionTokenizer = None) -> CaptionedSet:
  tokenizer = tokenizer or make_tokenizer(data)
  flat = [c for caps in raw.captions for c in caps]
  tokens, _, truncated = tokenizer.encode_padded(flat, caption_length(data))
  offsets = np.concatenate([[0], np.cumsum([len(c) for c in raw.captions])]).astype(np.int64)
  return dataclasses.replace(raw, tokens_CxL=tokens, offsets=offsets, tokenizer=tokenizer, truncated=truncated)


def caption_choice(seed: int, positions: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Which of `counts[j]` captions stream position `positions[j]` shows: a pure function of (seed, position)."""
  return np.array([0 if c == 1 else np.random.default_rng([seed, _CAPTION_STREAM, int(p)]).integers(c)
                   for p, c in zip(positions, counts)], np.int64)


class CaptionedBatchIterator(BatchIterator):
  """pipeline.BatchIterator's image batches (same order, flips, prefetch) plus one caption per image."""

  def __init__(self, captioned: CaptionedSet, global_batch_size: int, seed: int, **kwargs):
    super().__init__(captioned, global_batch_size, seed, **kwargs)

  def batch_at(self, batch_index: int) -> dict:
    batch = super().batch_at(batch_index)
    positions, idx = self.rows_at(batch_index)
    rows = self._set.offsets[idx] + caption_choice(self._seed, positions, self._set.count(idx))
    tokens = self._set.tokens_CxL[rows]
    return {**batch, "caption_tokens": tokens, "caption_mask": tokens != PAD_ID}


@dataclasses.dataclass(frozen=True)
class CaptionedSource(DataSource):
  """A DataSource whose load gives a tokenised CaptionedSet; `load_raw(data, split)` gives it untokenised
  (and is what `load_image_set` reads, so FID references never need the tokenizer)."""
  load_raw: Optional[Callable[[ConfigDict, str], CaptionedSet]] = None


def get_captioned_source(name: str) -> CaptionedSource:
  """The registered source `name`; a one-line error if it has no captions."""
  source = get_source(name)
  if not isinstance(source, CaptionedSource):
    raise UserError(f"data source {name!r} has no captions; choose a captioned source (captioned_shapes, "
                    "captioned_digits, captioned_mnist, coco_captions) with --config.data.name")
  return source


def captioned_source(name: str, load_raw, *, keys=(), splits=(), doc: str = "",
                     mirror_ok: bool = True) -> CaptionedSource:
  """A captioned image source from `load_raw(data_config, split) -> CaptionedSet` (captions, no tokens).
  mirror_ok=False refuses data.random_flip (captions that say "left of" would be false on a mirrored image)."""

  def checked_raw(data, split):
    if data.random_flip and not mirror_ok:
      raise UserError(f"data.random_flip=True would mirror {name} images and make their 'left of' / 'right of' "
                      "captions false; set --config.data.random_flip=false")
    raw = load_raw(data, split)
    if raw.images.shape[-1] != data.channels:
      raise UserError(f"{name} images have {raw.images.shape[-1]} channels but data.channels={data.channels}; "
                      f"set --config.data.channels={raw.images.shape[-1]}")
    if len(raw.captions) != len(raw):
      raise ValueError(f"{name}: {len(raw)} images but {len(raw.captions)} caption lists")
    return dataclasses.replace(raw, captions=check_captions(name, raw.captions))

  def load(data, split):
    bpe_vocab_size(data), caption_length(data)  # bad caption keys fail before any data is read
    return tokenize_set(data, checked_raw(data, split))

  def make_iterator(config, captioned, start_batch=0):
    import jax  # host topology; the loaders stay importable without jax
    return CaptionedBatchIterator(captioned, config.batch_size, config.seed, random_flip=config.data.random_flip,
                                  process_index=jax.process_index(), process_count=jax.process_count(),
                                  start_batch=start_batch)

  def example_batch(config, batch_size=2):
    length = caption_length(config.data)
    return {**image_example_batch(config, batch_size), "caption_tokens": np.zeros((batch_size, length), np.int32),
            "caption_mask": np.zeros((batch_size, length), bool)}

  def train_subset(data, captioned):
    """pipeline.training_subset's rows (data.fraction, class-stratified), kept with their captions: run on a
    stand-in ImageSet whose "images" are the row numbers, so the selection is that function's, not a copy."""
    picked = training_subset(ImageSet(np.arange(len(captioned)), captioned.labels, captioned.num_classes),
                             data.get("fraction", 1.0))
    return captioned if picked.subset_of is None else captioned.rows(picked.images, subset_of=len(captioned))

  image_describe = image_source(name, load_raw).describe

  def describe(captioned):
    counts = np.diff(captioned.offsets)
    per = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    cut = f", {captioned.truncated:,} truncated" if captioned.truncated else ""
    return (f"{image_describe(captioned)}; {len(captioned.tokens_CxL):,} captions ({per} per image), "
            f"{captioned.tokenizer.kind} tokens ({captioned.tokenizer.vocab_size} ids), caption_length "
            f"{captioned.tokens_CxL.shape[1]}{cut}")

  return CaptionedSource(name=name, medium="images", keys=tuple(IMAGE_KEYS) + CAPTION_KEYS + tuple(keys),
                         load=load, make_iterator=make_iterator, example_batch=example_batch, splits=tuple(splits),
                         describe=describe, doc=doc, image_set=checked_raw, train_subset=train_subset,
                         load_raw=checked_raw)


def load_captioned(data: ConfigDict, split: str = None) -> CaptionedSet:
  """The whole tokenised split (default data.split) of a captioned source (CLIP retrieval, zero-shot prompts)."""
  return get_captioned_source(data.name).load(data, split or data.split)

