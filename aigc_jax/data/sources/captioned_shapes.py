"""`captioned_shapes`: offline scenes of one to three coloured shapes with captions that describe them.

Scene i of a split is drawn by a generator seeded by (SCENE_SEED, split, i), so the data set is fixed (like
digits' split; config.seed does not change it) and any image size renders the same scenes. A scene holds 1-3
objects, each a distinct (colour, shape) from COLOURS x SHAPES with a size (small: a 0.25-of-the-side box,
large: 0.4) at a uniform position, boxes at least GAP apart so no shape hides another. Captions come from a
small grammar over the scene, with relations chosen among those that hold for the boxes:

  1 object:  "a large red circle", "a red circle"
  2 objects: "a small red circle above a large blue square", "a large blue square below a small red circle"
  3 objects: "<A> <rel> <B> and <C> <rel> the <B colour> <B shape>", and the two clauses in the other order

"A left of B" means A's box ends (x1) at or before B's starts (x0); "above" likewise with y (rows grow
downwards), so a relation is true of the rendered pixels too. Each image has two captions; training shows one
per step (captions.py). Mirroring would falsify "left of", so data.random_flip is refused.

Splits: "train" (NUM_EXAMPLES["train"] = 10,000 scenes) and "test" (1,000), drawn from different seed streams;
no test scene equals a train scene (tests check it). Loading a split renders it in ~1 CPU-s per 10,000 scenes
at 32x32 (scenes ~0.5 s, PIL ~0.5 s; 2026-11 on this project's CPU). Labels: the (colour, shape) of the main
object (`main_object`: the largest, the top-most among equals, so the label can be read off the image), 30
classes named "red circle", ... (the classifier backbone of FID/IS learns colour and shape from them). The loaded
set's `scenes[i]` is {"objects": [{"shape", "colour", "size", "box": [x0, y0, x1, y1] in [0, 1]}],
"relations": [[i, "left of", j], ...]}; `pixel_box` maps a box to pixels, `relation_holds` checks a relation
and `parse_caption` reads a caption (or a user's prompt in this grammar) back into objects and relations.
Images are RGB on black, drawn by PIL without anti-aliasing (every shape pixel is exactly its palette colour);
data.channels must be 3 and data.image_size at least MIN_IMAGE_SIZE.
"""
import functools
import math
import random
import re

import numpy as np
from PIL import Image, ImageDraw

from aigc_jax.data.captions import CaptionedSet, captioned_source
from aigc_jax.data.registry import register_source
from aigc_jax.errors import UserError

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = {"red": (230, 30, 30), "green": (30, 180, 60), "blue": (40, 80, 240), "yellow": (240, 210, 30),
           "purple": (150, 60, 200), "white": (245, 245, 245)}
SIZES = {"small": 0.25, "large": 0.4}
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BACKGROUND = (0, 0, 0)
NUM_EXAMPLES = {"train": 10_000, "test": 1_000}
SCENE_SEED = 20240513
GAP = 0.04
MIN_IMAGE_SIZE = 16
PLACE_TRIES = 64
CLASS_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
_SPLIT_STREAM = {"train": 0, "test": 1}


def relation_holds(box_a, relation: str, box_b) -> bool:
  """Whether `A relation B` holds for [x0, y0, x1, y1] boxes (any units, y down): A wholly on that side."""
  ax0, ay0, ax1, ay1 = box_a
  bx0, by0, bx1, by1 = box_b
  return {"left of": ax1 <= bx0, "right of": ax0 >= bx1, "above": ay1 <= by0, "below": ay0 >= by1}[relation]


def pixel_box(box, image_size: int) -> tuple:
  """[x0, y0, x1, y1] in [0, 1] -> integer pixels, x1/y1 exclusive; monotonic, so relations survive it."""
  return tuple(int(round(v * image_size)) for v in box)


def _place(rng: random.Random, sizes):
  """Boxes for `sizes` (fractions of the side), GAP apart, each the first free one of PLACE_TRIES uniform
  candidates; None when one finds no room (the caller draws again)."""
  boxes, gap = [], GAP + 1e-3
  for s in sizes:
    for _ in range(PLACE_TRIES):
      x0, y0 = (1 - s) * rng.random(), (1 - s) * rng.random()
      x1, y1 = x0 + s, y0 + s
      if all(x0 >= b[2] + gap or b[0] >= x1 + gap or y0 >= b[3] + gap or b[1] >= y1 + gap for b in boxes):
        boxes.append([round(v, 4) for v in (x0, y0, x1, y1)])  # JSON-short; the margin keeps GAP after it
        break
    else:
      return None
  return boxes


def scene(split: str, index: int, seed: int = SCENE_SEED) -> dict:
  """Scene `index` of `split`: {"objects": [...], "relations": [[i, relation, j], ...]} (module docstring).

  Drawn with Python's Mersenne Twister through `random()` alone, whose sequence for an integer seed Python
  keeps across versions (its `choice`/`sample` may change), and fast: ~30 us a scene, not the ~300 us of
  numpy's per-call overhead."""
  rng = random.Random(((seed * len(_SPLIT_STREAM) + _SPLIT_STREAM[split]) << 32) + index)
  pick = lambda n: int(rng.random() * n)  # noqa: E731
  num = 1 + pick(3)
  kinds = []
  while len(kinds) < num:  # distinct (colour, shape): "the red circle" must name one object
    k = pick(len(COLOURS) * len(SHAPES))
    kinds += [k] if k not in kinds else []
  sizes = [list(SIZES)[pick(len(SIZES))] for _ in range(num)]
  boxes = None
  while boxes is None:
    boxes = _place(rng, [SIZES[s] for s in sizes])
  objects = [{"shape": SHAPES[k % len(SHAPES)], "colour": list(COLOURS)[k // len(SHAPES)], "size": size,
              "box": box} for k, size, box in zip(kinds, sizes, boxes)]
  relations = []
  for a, b in ((0, 1), (2, 1))[:num - 1]:
    true = [r for r in RELATIONS if relation_holds(boxes[a], r, boxes[b])]
    relations.append([a, true[pick(len(true))], b])
  return {"objects": objects, "relations": relations}


def _phrase(o: dict, article: str = "a", size: bool = True) -> str:
  return f"{article} {o['size'] + ' ' if size else ''}{o['colour']} {o['shape']}"


def captions(s: dict) -> tuple:
  """The two captions of a scene (module docstring)."""
  objs, rels = s["objects"], s["relations"]
  if len(objs) == 1:
    return _phrase(objs[0]), _phrase(objs[0], size=False)
  clauses = [f"{_phrase(objs[a])} {r} {_phrase(objs[b])}" for a, r, b in rels]
  if len(objs) == 2:
    (a, r, b), = rels
    return clauses[0], f"{_phrase(objs[b])} {INVERSE[r]} {_phrase(objs[a])}"
  (a, r1, b), (c, r2, _) = rels
  return (f"{clauses[0]} and {_phrase(objs[c])} {r2} {_phrase(objs[b], 'the', False)}",
          f"{clauses[1]} and {_phrase(objs[a])} {r1} {_phrase(objs[b], 'the', False)}")


_NP = (rf"(a|the) (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
_CLAUSE = re.compile(rf"{_NP}(?: ({'|'.join(RELATIONS)}) {_NP})?")


def parse_caption(text: str) -> dict:
  """A caption of this grammar -> {"objects": [{"shape", "colour", "size" (None if unsaid)}], "relations":
  [[i, relation, j]]}; "the red circle" refers back to an earlier object. ValueError if it does not parse."""
  objects, relations = [], []

  def noun(article, size, colour, shape):
    if article == "the":
      found = [i for i, o in enumerate(objects) if (o["colour"], o["shape"]) == (colour, shape)]
      if not found:
        raise ValueError(f"{text!r}: 'the {colour} {shape}' names no earlier object")
      return found[0]
    objects.append({"shape": shape, "colour": colour, "size": size})
    return len(objects) - 1

  for k, clause in enumerate(text.strip().split(" and ")):
    m = _CLAUSE.fullmatch(clause)
    if m is None or (k and m.group(5) is None) or (k == 0 and m.group(1) == "the"):
      raise ValueError(f"{text!r} is not a caption of the captioned_shapes grammar (at {clause!r})")
    a = noun(*m.group(1, 2, 3, 4))
    if m.group(5):
      relations.append([a, m.group(5), noun(*m.group(6, 7, 8, 9))])
  return {"objects": objects, "relations": relations}


def _star(x0, y0, x1, y1):
  cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2  # rounding can make a box 1px oblong
  return [(cx + rr * math.sin(k * math.pi / 5), cy - rr * math.cos(k * math.pi / 5))
          for k, rr in zip(range(10), [r, 0.45 * r] * 5)]


def render(s: dict, image_size: int) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: the scene's shapes in their palette colours on BACKGROUND."""
  image = Image.new("RGB", (image_size, image_size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  for o in s["objects"]:
    x0, y0, x1, y1 = pixel_box(o["box"], image_size)
    x1, y1 = x1 - 1, y1 - 1  # PIL's boxes include their last pixel
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fill = COLOURS[o["colour"]]
    if o["shape"] == "circle":
      draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o["shape"] == "square":
      draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif o["shape"] == "triangle":
      draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif o["shape"] == "diamond":
      draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
      draw.polygon(_star(x0, y0, x1, y1), fill=fill)
  return np.asarray(image, np.uint8)


def main_object(s: dict) -> dict:
  """The object a glance picks: the largest, the top-most among equals (drawn order is not visible)."""
  return max(s["objects"], key=lambda o: (SIZES[o["size"]], -o["box"][1]))


def label(s: dict) -> int:
  """The class of a scene: its main object's (colour, shape), an index into CLASS_NAMES."""
  main = main_object(s)
  return list(COLOURS).index(main["colour"]) * len(SHAPES) + SHAPES.index(main["shape"])


@functools.lru_cache(maxsize=4)
def load_shapes(split: str, image_size: int) -> CaptionedSet:
  if split not in NUM_EXAMPLES:
    raise UserError(f"captioned_shapes has splits {', '.join(NUM_EXAMPLES)}, not {split!r}; set "
                    "--config.data.split")
  if image_size < MIN_IMAGE_SIZE:
    raise UserError(f"captioned_shapes draws small shapes a quarter of the side wide, too few pixels below "
                    f"{MIN_IMAGE_SIZE}; set --config.data.image_size to at least {MIN_IMAGE_SIZE}")
  scenes = tuple(scene(split, i) for i in range(NUM_EXAMPLES[split]))
  images = np.stack([render(s, image_size) for s in scenes])
  return CaptionedSet(images, np.array([label(s) for s in scenes], np.int32), len(CLASS_NAMES),
                      captions=tuple(captions(s) for s in scenes), class_names=CLASS_NAMES, scenes=scenes)


register_source(captioned_source(
    "captioned_shapes", lambda d, split: load_shapes(split, d.image_size), splits=tuple(NUM_EXAMPLES),
    mirror_ok=False,
    doc="offline: 1-3 coloured shapes per RGB image with grammar captions ('a small red circle above a large "
        "blue square'); 10,000 train / 1,000 test scenes"))
