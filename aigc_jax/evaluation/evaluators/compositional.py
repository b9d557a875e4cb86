"""compositional_accuracy: do images generated for a captioned_shapes prompt show what the prompt says?

For every generated image whose prompt names one object ("a large red circle", "a blue star"), the attribute
judges of evaluation/shape_attributes.py read colour, shape and size off the image; the metric is the share of
those images whose colour AND shape both match the prompt (chance: 1/30), with colour, shape and size accuracy
separately (size only over prompts that state a size). Prompts naming two or three objects are counted and
skipped: a one-object judge cannot read them. The prompts are the ones the text-conditional family generated for
(evaluation/prompts.py); the card gives the judges' own accuracy on real test renders, the ceiling a perfect
generator reaches.
"""
import numpy as np

from aigc_jax.data.sources import captioned_shapes as shapes
from aigc_jax.errors import UserError
from aigc_jax.evaluation import prompts as prompts_lib
from aigc_jax.evaluation import shape_attributes as judges_lib
from aigc_jax.evaluation.inputs import get_inputs
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator

NAME = "compositional_accuracy"
ATTRIBUTES = tuple(judges_lib.ATTRIBUTES)


def check(config, family):
  if config.data.name != "captioned_shapes":
    raise UserError(f"eval.metrics has {NAME!r}, which judges captioned_shapes prompts, and data.name is "
                    f"{config.data.name!r}; use data.name=captioned_shapes or remove {NAME!r} from eval.metrics")
  prompts_lib.check_text_conditional(config, family, NAME)


class CompositionalAccuracy:
  record_key = NAME

  def __init__(self, ctx: EvalContext):
    self.config = ctx.config
    self.judges = judges_lib.load_or_train(ctx.config.data.image_size, ctx.cache_dir, ctx.log)
    self.inputs = get_inputs("images")
    self.prompts = prompts_lib.prompt_reader(ctx)
    # correct[a], asked[a]: per attribute among one-object prompts stating it; "both" = colour and shape.
    self.correct = {a: 0 for a in (*ATTRIBUTES, "both")}
    self.asked = dict(self.correct)
    self.skipped = 0

  def record(self, samples: dict) -> dict:
    x = self.inputs.samples_of(samples, self.config)
    if self.config.eval.quantize:
      x = self.inputs.quantize(x)
    predicted = self.judges.predict(x)
    requested = {a: np.full(len(x), -1, np.int32) for a in ATTRIBUTES}
    for i, prompt in enumerate(self.prompts(samples)):
      try:
        parsed = shapes.parse_caption(prompt)
      except ValueError:
        raise UserError(f"{NAME}: prompt {prompt!r} is not in the captioned_shapes grammar, so its attributes "
                        f"cannot be judged; use prompts like 'a large red circle', or remove {NAME!r}") from None
      if len(parsed["objects"]) == 1:
        for a, k in judges_lib.attribute_indices(parsed["objects"]).items():
          requested[a][i] = k
    return {**{f"requested_{a}": requested[a] for a in ATTRIBUTES},
            **{f"predicted_{a}": predicted[a] for a in ATTRIBUTES}}

  def absorb(self, record: dict):
    one_object = record["requested_colour"] >= 0
    self.skipped += int(np.sum(~one_object))
    hits = {}
    for a in ATTRIBUTES:
      stated = record[f"requested_{a}"] >= 0
      hits[a] = record[f"requested_{a}"] == record[f"predicted_{a}"]
      self.correct[a] += int(np.sum(hits[a] & stated))
      self.asked[a] += int(np.sum(stated))
    self.correct["both"] += int(np.sum(hits["colour"] & hits["shape"] & one_object))
    self.asked["both"] += int(np.sum(one_object))

  def finish(self):
    if not self.asked["both"]:
      raise UserError(f"{NAME}: none of the {self.skipped} prompts names a single object, so nothing was judged; "
                      "generate from one-object prompts (e.g. a sample.prompts_file of 'a red circle', ...)")
    accuracy = {a: self.correct[a] / self.asked[a] if self.asked[a] else None for a in self.correct}
    info = self.judges.info
    section = {
        "judges": {"architecture": f"classifier.DigitClassifier(width={judges_lib.WIDTH}) per attribute",
                   "trained_on": info["scenes"], "steps": info["steps"], "image_size": info["image_size"],
                   "test_accuracy": {a: info[a]["test_accuracy"] for a in ATTRIBUTES},
                   "weights_sha256": info["weights_sha256"], "cache_path": info["cache_path"]},
        "compare_with": "the judges' test accuracy on real renders (a perfect generator scores about that)",
        "chance": {"both": 1 / (len(shapes.COLOURS) * len(shapes.SHAPES)), "colour": 1 / len(shapes.COLOURS),
                   "shape": 1 / len(shapes.SHAPES), "size": 1 / len(shapes.SIZES)},
        "judged_images": self.asked["both"],
        "skipped_multi_object_prompts": self.skipped,
        "size_stated_in": self.asked["size"],
        "accuracy": accuracy,
        "quantization": self.inputs.quantization if self.config.eval.quantize else "none (float samples)",
    }
    values = {NAME: accuracy["both"], **{f"{NAME}_{a}": accuracy[a] for a in ATTRIBUTES if accuracy[a] is not None}}
    return values, {NAME: section}


register_evaluator(Evaluator(
    name=NAME, media=("images",), check=check, start=CompositionalAccuracy,
    doc="captioned_shapes: share of one-object prompts whose image shows the asked colour and shape (judged)"))
