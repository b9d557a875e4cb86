"""Caption tokenisers: UTF-8 bytes, or a small byte-level BPE trained on the training captions.

Ids (both kinds): PAD_ID=0, BOS_ID=1, EOS_ID=2, byte b -> b + 3 (so ids 3..258 are the 256 bytes), and for
BPE merge m -> 259 + m. PAD being 0 means a zero-filled token array is "no caption", and every id a model
sees is below `vocab_size`, which depends on the config alone (byte: 259; bpe: data.bpe_vocab_size), so a
model's embedding table can be shaped without reading data. Both kinds start from bytes, so no input is
"outside the tokeniser": any Unicode string encodes and decodes back exactly.

A caption of length L is [BOS] + ids + [EOS] + [PAD]*, truncated to L - 2 content tokens (CLIP, Radford et
al. 2021, also brackets its 76-token captions with start and end tokens and truncates longer ones).

BPE (Sennrich et al. 2016, at the byte level as GPT-2, Radford et al. 2019): captions are split into
pieces (an optional leading space plus a run of word characters, or of punctuation, or whitespace) and merges
never cross a piece. Training repeatedly merges the most frequent adjacent pair, ties to the smallest
(first id, second id), so the merges are a pure function of the training captions and the vocabulary size.
A tokenizer is its ordered merge list: JSON on disk (`save`/`load`), or an int32 [vocab_size - 259, 2]
array (`merges_array`, unused rows -1) that a checkpoint can carry with a config-determined shape.
"""
import collections
import heapq
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

from aigc_jax.errors import UserError

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256  # 259
KINDS = ("byte", "bpe")
JSON_FORMAT = "aigc_jax caption tokenizer v1"
_PIECE = re.compile(r" ?\w+| ?[^\w\s]+|\s+(?!\S)|\s+")  # covers every character, so pieces join back exactly


def pieces(text: str) -> list:
  """The pieces merges stay inside (GPT-2's split without its English contractions)."""
  return _PIECE.findall(text)


class CaptionTokenizer:
  """`kind` 'byte' (merges empty) or 'bpe' over `vocab_size` ids; encode: str -> ids without specials."""

  def __init__(self, kind: str, vocab_size: int = BYTE_VOCAB_SIZE, merges: Sequence = ()):
    if kind not in KINDS:
      raise UserError(f"data.tokenizer must be one of {', '.join(KINDS)}, got {kind!r}; set "
                      "--config.data.tokenizer=byte (UTF-8 bytes) or bpe (a BPE trained on the training captions)")
    if kind == "byte" and (merges or vocab_size != BYTE_VOCAB_SIZE):
      raise ValueError("a byte tokenizer has no merges and 259 ids")
    if len(merges) > vocab_size - BYTE_VOCAB_SIZE:
      raise ValueError(f"{len(merges)} merges do not fit a vocabulary of {vocab_size}")
    self.kind = kind
    self.vocab_size = int(vocab_size)
    self.merges = tuple((int(a), int(b)) for a, b in merges)
    self._rank = {pair: i for i, pair in enumerate(self.merges)}
    self._expand = {BYTE_VOCAB_SIZE + m: pair for m, pair in enumerate(self.merges)}
    self._cache = {}

  def __eq__(self, other):
    return isinstance(other, CaptionTokenizer) and (self.kind, self.vocab_size, self.merges) == (
        other.kind, other.vocab_size, other.merges)

  def __repr__(self):
    return f"CaptionTokenizer({self.kind}, vocab_size={self.vocab_size}, {len(self.merges)} merges)"

  def _encode_piece(self, piece: str) -> list:
    ids = self._cache.get(piece)
    if ids is None:
      ids = [b + BYTE_OFFSET for b in piece.encode("utf-8")]
      while len(ids) > 1:  # apply the earliest-learned merge present, everywhere in the piece, until none is
        ranked = [(self._rank.get(pair, len(self._rank)), pair) for pair in zip(ids, ids[1:])]
        rank, pair = min(ranked)
        if rank == len(self._rank):
          break
        ids = _merge(ids, pair, BYTE_VOCAB_SIZE + rank)
      if len(self._cache) < 100_000:
        self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> np.ndarray:
    """int32 ids of `text`, no BOS/EOS/PAD."""
    if self.kind == "byte":
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET
    return np.array([i for p in pieces(text) for i in self._encode_piece(p)], np.int32)

  def encode_padded(self, texts: Iterable[str], length: int, *, truncate: bool = True):
    """(tokens int32 [N, length], mask bool [N, length], truncated: number of texts cut short): [BOS] ids
    [EOS] then PAD. With truncate=False a text longer than length - 2 tokens is a UserError (prompts)."""
    check_length(length)
    texts = list(texts)
    tokens_NxL = np.full((len(texts), length), PAD_ID, np.int32)
    truncated = 0
    for n, text in enumerate(texts):
      ids = self.encode(text)
      if len(ids) > length - 2:
        if not truncate:
          raise UserError(f"the caption {text[:60]!r} is {len(ids)} {self.kind} tokens, more than the "
                          f"data.caption_length={length} context holds ({length - 2} after BOS/EOS); shorten "
                          "it or train with a larger --config.data.caption_length")
        ids, truncated = ids[:length - 2], truncated + 1
      tokens_NxL[n, 0] = BOS_ID
      tokens_NxL[n, 1:len(ids) + 1] = ids
      tokens_NxL[n, len(ids) + 1] = EOS_ID
    return tokens_NxL, tokens_NxL != PAD_ID, truncated

  def decode(self, ids) -> str:
    """Ids -> text: skips BOS and PAD, stops at EOS; broken UTF-8 (a byte sequence cut short) is U+FFFD."""
    out = bytearray()
    stack = np.asarray(ids, np.int64).reshape(-1)[::-1].tolist()  # reversed: the stack pops them in order
    while stack:
      i = stack.pop()
      if i == EOS_ID:
        break
      if i in self._expand:
        stack.extend(self._expand[i][::-1])
      elif BYTE_OFFSET <= i < BYTE_VOCAB_SIZE:
        out.append(i - BYTE_OFFSET)
      elif i not in (PAD_ID, BOS_ID):
        raise ValueError(f"token id {i} is outside this {self.vocab_size}-id tokenizer")
    return out.decode("utf-8", "replace")

  def merges_array(self) -> np.ndarray:
    """int32 [vocab_size - 259, 2]: the merges, unused rows -1 (shape fixed by the config)."""
    out = np.full((self.vocab_size - BYTE_VOCAB_SIZE, 2), -1, np.int32)
    if self.merges:
      out[:len(self.merges)] = self.merges
    return out

  @classmethod
  def from_merges_array(cls, merges_Mx2) -> "CaptionTokenizer":
    """The inverse of merges_array (e.g. from a checkpoint): no rows -> byte, else bpe."""
    merges_Mx2 = np.asarray(merges_Mx2)
    if merges_Mx2.shape[0] == 0:
      return cls("byte")
    used = merges_Mx2[(merges_Mx2 >= 0).all(axis=1)]
    return cls("bpe", BYTE_VOCAB_SIZE + merges_Mx2.shape[0], used.tolist())

  def to_json(self) -> str:
    return json.dumps({"format": JSON_FORMAT, "kind": self.kind, "vocab_size": self.vocab_size,
                       "merges": [list(p) for p in self.merges]})

  @classmethod
  def from_json(cls, text: str, where: str = "tokenizer JSON") -> "CaptionTokenizer":
    try:
      obj = json.loads(text)
      if obj.get("format") != JSON_FORMAT:
        raise ValueError(f"format is {obj.get('format')!r}, not {JSON_FORMAT!r}")
      tokenizer = cls(obj["kind"], int(obj["vocab_size"]), obj["merges"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise UserError(f"{where} is not a caption tokenizer ({e}); point --config.data.tokenizer_path at a file "
                      "written by CaptionTokenizer.save, or set it to '' to train one on the captions") from None
    for a, b in tokenizer.merges:
      if not (0 <= a < tokenizer.vocab_size and 0 <= b < tokenizer.vocab_size):
        raise UserError(f"{where}: merge ({a}, {b}) names ids outside its vocabulary; the file is damaged")
    return tokenizer

  def save(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(self.to_json())
    os.replace(tmp, path)  # atomic: a reader never sees half a file

  @classmethod
  def load(cls, path: str) -> "CaptionTokenizer":
    try:
      with open(path, encoding="utf-8") as f:
        return cls.from_json(f.read(), path)
    except OSError as e:
      raise UserError(f"cannot read tokenizer file {path} ({e}); check --config.data.tokenizer_path") from None


def check_length(length) -> int:
  if isinstance(length, bool) or not isinstance(length, int) or length < 2:
    raise UserError(f"data.caption_length must be an integer >= 2 (BOS and EOS take two tokens), got {length!r}; "
                    "set e.g. --config.data.caption_length=64")
  return length


def _merge(ids: list, pair: tuple, new_id: int) -> list:
  out, i = [], 0
  while i < len(ids):
    if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
      out.append(new_id)
      i += 2
    else:
      out.append(ids[i])
      i += 1
  return out


def train_bpe(captions: Iterable[str], vocab_size: int) -> CaptionTokenizer:
  """Learns up to vocab_size - 259 merges from `captions`; stops early when no pair occurs twice.

  Pair counts are kept incrementally (a count table, the words each pair occurs in, and a max-heap with stale
  entries skipped), so a merge costs the words it touches, not a pass over the corpus: COCO's ~400k captions
  train in seconds, not the minutes a recount per merge would take.
  """
  counts = collections.Counter(p for text in captions for p in pieces(text))
  words = [[b + BYTE_OFFSET for b in p.encode("utf-8")] for p in counts]
  freqs = list(counts.values())
  pair_count = collections.Counter()
  where = collections.defaultdict(set)
  for w, (ids, f) in enumerate(zip(words, freqs)):
    for pair in zip(ids, ids[1:]):
      pair_count[pair] += f
      where[pair].add(w)
  heap = [(-c, pair) for pair, c in pair_count.items()]
  heapq.heapify(heap)
  merges = []
  while len(merges) < vocab_size - BYTE_VOCAB_SIZE and heap:
    neg, pair = heapq.heappop(heap)
    if pair_count.get(pair, 0) != -neg:
      continue  # stale: the count changed since this entry was pushed (a fresher entry is in the heap)
    if -neg < 2:
      break
    new_id = BYTE_VOCAB_SIZE + len(merges)
    merges.append(pair)
    touched = set()
    for w in sorted(where.pop(pair)):
      old = words[w]
      for p in zip(old, old[1:]):
        pair_count[p] -= freqs[w]
        touched.add(p)
      words[w] = new = _merge(old, pair, new_id)
      for p in zip(new, new[1:]):
        pair_count[p] += freqs[w]
        where[p].add(w)
        touched.add(p)
    for p in touched:
      if pair_count[p] <= 0:
        del pair_count[p]
        where.pop(p, None)
      else:
        heapq.heappush(heap, (-pair_count[p], p))
  return CaptionTokenizer("bpe", vocab_size, merges)
