"""Text: sources -> one token array per split -> random windows of `block_size + 1` tokens.

A text source (`TextSource`, registered by a module in data/sources/, e.g. text_corpora.py) reads raw text;
raw text is split as nanoGPT splits it: the first 90% of the characters train, the last 10% validate.
Sources with their own splits (TFDS) keep them.

Tokenisers: `char` (one token per distinct character of the training text, sorted, so the same text always
gives the same vocabulary) and `byte` (256 tokens, UTF-8 bytes: never fails on any input). The vocabulary is
also kept in the train state as a table (`vocab_table`) so a checkpoint decodes its samples on its own.
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data.pipeline import IndexedBatches
from aigc_jax.data.registry import DataSource, get_source
from aigc_jax.errors import UserError

TRAIN_FRACTION = 0.9
SPLITS = ("train", "validation")
TEXT_KEYS = ("tokenizer", "vocab")  # data.* keys every text source reads


class Tokenizer:
  """`kind` 'char' over `chars`, or 'byte'. encode: str -> int32 ids; decode: ids -> str."""

  def __init__(self, kind: str, chars: str = ""):
    if kind not in ("char", "byte"):
      raise UserError(f"data.tokenizer must be 'char' or 'byte', got {kind!r}")
    if kind == "char" and not chars:
      raise UserError("a char tokenizer needs a non-empty vocabulary; the training text is empty")
    self.kind = kind
    self.chars = chars if kind == "char" else ""
    self._index = {c: i for i, c in enumerate(self.chars)}

  @property
  def vocab_size(self) -> int:
    return len(self.chars) if self.kind == "char" else 256

  def encode(self, text: str) -> np.ndarray:
    if self.kind == "byte":
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    try:
      return np.fromiter((self._index[c] for c in text), np.int32, len(text))
    except KeyError:
      unknown = sorted({c for c in text if c not in self._index})
      raise UserError(f"characters {''.join(unknown)!r} are not in the {self.vocab_size}-character vocabulary "
                      "of the training text; remove them or use --config.data.tokenizer=byte") from None

  def table(self) -> np.ndarray:
    """int32 [V]: the code point of each char token, or -(byte + 1) for a byte token (see decode_with_table)."""
    if self.kind == "byte":
      return -(np.arange(256, dtype=np.int32) + 1)
    return np.array([ord(c) for c in self.chars], np.int32)

  def decode(self, ids) -> str:
    return decode_with_table(ids, self.table())


def decode_with_table(ids, table) -> str:
  """Token ids -> text using a `Tokenizer.table()`; broken UTF-8 (byte level) decodes as U+FFFD."""
  table = np.asarray(table)
  pieces = []
  for v in table[np.asarray(ids, np.int64)]:
    pieces.append(chr(v).encode("utf-8", "surrogatepass") if v >= 0 else bytes([-v - 1]))
  return b"".join(pieces).decode("utf-8", "replace")


def read_files(paths: Sequence[str]) -> str:
  texts = []
  for p in paths:
    if not os.path.isfile(p):
      raise UserError(f"text file {p!r} not found; set --config.data.path to a text file (or comma-separated files)")
    with open(p, encoding="utf-8", errors="replace") as f:
      texts.append(f.read())
  return "\n".join(texts)


@dataclasses.dataclass(frozen=True)
class TextSource(DataSource):
  """A DataSource of raw text: `read(path, data_dir)` returns the whole text (split 90/10 here, as nanoGPT
  does) or a dict of its own splits {'train': str, 'validation': str}."""
  read: Optional[Callable[[str, str], Any]] = None


def text_source(name: str, read, *, keys=(), doc: str = "") -> TextSource:
  return TextSource(name=name, medium="text", keys=TEXT_KEYS + tuple(keys), load=load_tokens,
                    make_iterator=make_iterator, example_batch=example_batch, splits=SPLITS,
                    describe=lambda tokens: f"{len(tokens):,} tokens", doc=doc, read=read)


@functools.lru_cache(maxsize=4)
def load_text(name: str, path: str = "", data_dir: str = "") -> dict:
  """{'train': str, 'validation': str} for a text source; cached because the tokenizer and both splits need it."""
  source = get_source(name)
  if not isinstance(source, TextSource):
    raise UserError(f"data source {name!r} holds {source.medium}, not text; choose a text source "
                    "(e.g. python_stdlib, text_file, tiny_shakespeare) with --config.data.name")
  text = source.read(path, data_dir)
  if isinstance(text, dict):
    return text
  if not text.strip():
    raise UserError(f"text source {name} {path!r} is empty; point --config.data.path at a file with text in it")
  cut = int(len(text) * TRAIN_FRACTION)
  return {"train": text[:cut], "validation": text[cut:]}


def make_tokenizer(data: ConfigDict) -> Tokenizer:
  """`data.vocab` when given (e.g. to sample without the data at hand), else every character of the source."""
  if data.tokenizer == "byte":
    return Tokenizer("byte")
  if data.vocab:
    return Tokenizer("char", data.vocab)
  splits = load_text(data.name, data.path, data.get("data_dir", ""))
  return Tokenizer("char", "".join(sorted(set(splits["train"]) | set(splits["validation"]))))


def load_tokens(data: ConfigDict, split: str) -> np.ndarray:
  """int32 token ids of a whole split ('train' or 'validation')."""
  if split not in SPLITS:
    raise UserError(f"text splits are 'train' and 'validation', not {split!r}; set --config.data.split")
  return make_tokenizer(data).encode(load_text(data.name, data.path, data.get("data_dir", ""))[split])


class TextBatchIterator(IndexedBatches):
  """Yields host-local {'tokens': int32 [L, block_size + 1]}: random windows, as nanoGPT draws them.

  Global batch b draws its window starts from a generator seeded by (seed, b), so a batch is a pure
  function of its index: resume is exact from `start_batch`, and every host slices the same global batch.
  Same interface as pipeline.BatchIterator.
  """

  def __init__(self, tokens: np.ndarray, block_size: int, global_batch_size: int, seed: int, *,
               process_index=0, process_count=1, start_batch=0):
    if len(tokens) < block_size + 2:
      raise UserError(f"the text has {len(tokens)} tokens, fewer than one window of block_size+1="
                      f"{block_size + 1}; use more text or a smaller --config.model.block_size")
    super().__init__(global_batch_size, process_index=process_index, process_count=process_count,
                     start_batch=start_batch)
    self._tokens = tokens
    self._block = block_size
    self._seed = seed

  def batch_at(self, batch_index: int) -> dict:
    rng = np.random.default_rng([self._seed, batch_index])
    starts = rng.integers(0, len(self._tokens) - self._block - 1, size=self._global)
    starts = starts[self._host_offset:self._host_offset + self._local]
    windows = np.lib.stride_tricks.sliding_window_view(self._tokens, self._block + 1)
    return {"tokens": np.ascontiguousarray(windows[starts], np.int32)}


def make_iterator(config: ConfigDict, tokens: np.ndarray, start_batch: int = 0) -> TextBatchIterator:
  import jax  # the leaf stays importable without jax for tokenising
  return TextBatchIterator(tokens, config.model.block_size, config.batch_size, config.seed,
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           start_batch=start_batch)


def example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  return {"tokens": np.zeros((batch_size, config.model.block_size + 1), np.int32)}
