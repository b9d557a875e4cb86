"""class_accuracy: are class-conditional samples recognised as the class they were asked for?

Each generated sample goes, after the same quantisation as the other sample metrics (eval.quantize: uint8 images,
16-bit audio), through the project's own classifier of its medium (`backbones.shared(ctx, "classifier")`: images,
evaluation/classifier.py; audio, the SC09-protocol log-mel classifier of evaluation/audio_classifier.py; each
trained on data.name's train split and cached); its argmax is compared with the class the sample was generated
for (the `labels` a class-conditional family's `sample` returns). When eval.backbone is the classifier,
FID/KID/IS/PR/mIS/AM and this metric share one loaded classifier and one compiled pass, so it is trained at most
once.

The card gives the accuracy over all samples, per requested class (with counts; a class no sample asked for, as
with sample.label=k, has count 0 and accuracy null), the lowest class, and the classifier's own accuracy on real
test examples: the level samples can be compared with (samples cannot be judged more recognisable than the judge
can recognise real data).

"Class-conditional" means `model.num_classes > 0`: the key every conditional family reads and the one
`families.check_sample_label` checks, so `sample.label` and this metric agree on which models qualify. A
text-conditional family (`Family.prompts_of`) on a dataset with class names qualifies too: the class a sample
was asked for is the one whose name its prompt contains ("a handwritten seven" -> seven; "a large red circle" ->
red circle); prompts naming no class, or several, are counted on the card and not scored.
"""
import functools
import json
import re

import numpy as np
from ml_collections import ConfigDict

from aigc_jax.errors import UserError
from aigc_jax.evaluation import backbones
from aigc_jax.evaluation.inputs import get_inputs
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator

NAME = "class_accuracy"


def model_classes(config) -> int:
  model = config.get("model", None)
  return int(model.get("num_classes", 0) or 0) if model is not None else 0


@functools.lru_cache(maxsize=8)
def _class_names(data_json: str) -> tuple:
  from aigc_jax.data import captions  # only text-conditional runs need it
  return tuple(captions.load_captioned(ConfigDict(json.loads(data_json)), "test").class_names)


def class_names(config) -> tuple:
  """The data's class names (captioned sources), () when it has none."""
  return _class_names(json.dumps(config.data.to_dict(), sort_keys=True, default=repr))


def prompt_classes(prompts, names) -> np.ndarray:
  """int32 [N]: the class whose name prompt i contains as whole words, -1 when none or several do."""
  patterns = [re.compile(rf"\b{re.escape(n)}\b") for n in names]
  out = np.full(len(prompts), -1, np.int32)
  for i, prompt in enumerate(prompts):
    hits = [k for k, p in enumerate(patterns) if p.search(prompt)]
    if len(hits) == 1:
      out[i] = hits[0]
  return out


def _text_conditional(family) -> bool:
  return getattr(family, "prompts_of", None) is not None


@functools.lru_cache(maxsize=8)
def _data_classes(data_json: str, medium: str) -> int:
  """Classes of the train split's labels (0: none). Cached: --mode=eval checks the config twice."""
  return get_inputs(medium).load(ConfigDict(json.loads(data_json)), "train").num_classes


def _check_classes(config, data_classes: int):
  k = model_classes(config)
  if not data_classes:
    raise UserError(f"{NAME} needs labelled data to train its classifier, and {config.data.name}'s train split has "
                    f"no labels; use a labelled dataset or remove {NAME!r} from eval.metrics")
  if k > data_classes:
    raise UserError(f"model.num_classes={k}, but {config.data.name} has {data_classes} classes, so the classifier "
                    f"cannot recognise classes {data_classes}..{k - 1}; set --config.model.num_classes={data_classes}")


def check(config, family):
  if _text_conditional(family):
    if not class_names(config):
      raise UserError(f"eval.metrics has {NAME!r}, which reads the requested class off each prompt by the data's "
                      f"class names, and {config.data.name} has none; remove {NAME!r} from eval.metrics")
    backbones.check_backbone(config, family, "classifier")
    return
  k = model_classes(config)
  if k <= 0:
    raise UserError(f"eval.metrics has {NAME!r}, which needs a class-conditional model, and family {config.family!r} "
                    f"here is unconditional (model.num_classes={k}); set --config.model.num_classes or remove "
                    f"{NAME!r} from eval.metrics")
  backbones.check_backbone(config, family, "classifier")
  medium = backbones.scored_medium(config, family)
  _check_classes(config, _data_classes(json.dumps(config.data.to_dict(), sort_keys=True, default=repr), medium))


def _requested(config, k: int) -> str:
  label = config.sample.get("label", -1)
  if label >= 0:
    return (f"sample.label={label}: every sample asks for class {label}; the other {k - 1} classes have count 0 "
            "and accuracy null (not measured, not zero)")
  return "sample.label=-1: the family's own class schedule (diffusion: each grid row one class, in turn)"


class ClassAccuracy:
  record_key = NAME

  def __init__(self, ctx: EvalContext):
    config = ctx.config
    self.config, self.num_classes = config, model_classes(config)
    self.prompts, self.unscored = None, 0
    if _text_conditional(ctx.family):  # text: the class each prompt names (module docstring)
      from aigc_jax.evaluation import prompts as prompts_lib
      self.names = class_names(config)
      self.num_classes, self.prompts = len(self.names), prompts_lib.prompt_reader(ctx)
    # Before any sampling: a missing label or a classifier that cannot train fails in seconds.
    self.backbone, self.extract = backbones.shared(ctx, "classifier")
    self.inputs = get_inputs(self.backbone.medium)
    self.classifier_classes = int(self.backbone.info["num_classes"])
    _check_classes(config, self.classifier_classes)
    # confusion[requested, predicted]: a few ints per class, so resuming only re-adds counts (exact).
    self.confusion = np.zeros((self.num_classes, self.classifier_classes), np.int64)
    ctx.note("quantization", self._quantization(), weak=True)

  def _quantization(self) -> str:
    return self.inputs.quantization if self.config.eval.quantize else "none (float samples)"

  def record(self, samples: dict) -> dict:
    if self.prompts is not None:
      samples = {**samples, "labels": prompt_classes(self.prompts(samples), self.names)}
    if "labels" not in samples:
      raise UserError(f"family {self.config.family!r} returns samples without 'labels' (the class each sample was "
                      f"asked for), so {NAME} cannot score them; remove {NAME!r} from eval.metrics")
    x = self.inputs.samples_of(samples, self.config)
    logits = self.extract(self.inputs.quantize(x) if self.config.eval.quantize else x)["logits"]
    return {"predicted": np.argmax(logits, axis=-1).astype(np.int32),
            "requested": np.asarray(samples["labels"], np.int32).reshape(-1)}

  def absorb(self, record: dict):
    requested, predicted = record["requested"], record["predicted"]
    if self.prompts is not None:  # prompts naming no class (or several) are counted, not scored
      self.unscored += int(np.sum(requested < 0))
      requested, predicted = requested[requested >= 0], predicted[requested >= 0]
    if requested.size and (requested.min() < 0 or requested.max() >= self.num_classes):
      raise ValueError(f"sample labels {sorted(set(requested.tolist()))} outside 0..{self.num_classes - 1}")
    np.add.at(self.confusion, (requested, predicted), 1)

  def finish(self):
    counts, correct = self.confusion.sum(1), np.diagonal(self.confusion)
    per_class = []
    for k in range(self.num_classes):
      n, c = int(counts[k]), int(correct[k])
      entry = {"class": k, "count": n, "correct": c, "accuracy": c / n if n else None}
      wrong = self.confusion[k].copy()
      wrong[k] = 0
      if wrong.any():
        entry["most_mistaken_for"] = {"class": int(wrong.argmax()), "count": int(wrong.max())}
      per_class.append(entry)
    asked = [e for e in per_class if e["count"]]
    if not asked:
      raise UserError(f"{NAME}: none of the {self.unscored} prompts names one of {self.config.data.name}'s classes "
                      f"{list(self.names)[:4]}...; sample from prompts that name a class, or remove {NAME!r}")
    lowest = min(asked, key=lambda e: (e["accuracy"], e["class"]))
    info = self.backbone.info
    test_accuracy = info.get("test_accuracy")
    classifier = {"name": self.backbone.name, "num_classes": self.classifier_classes,
                  "test_accuracy": test_accuracy if test_accuracy is not None else "unknown (no labelled test split)",
                  "train_accuracy": info.get("train_accuracy"), "training_steps": info.get("steps"),
                  "recipe_version": info.get("version"), "weights_sha256": info.get("weights_sha256"),
                  "cache_path": info.get("cache_path")}
    section = {
        "classifier": classifier,
        "compare_with": (f"the classifier recognises {test_accuracy:.4f} of real {self.config.data.name} test "
                         f"{self.inputs.noun}" if test_accuracy is not None else
                         f"no test accuracy of the classifier on real {self.inputs.noun}"),
        "prediction": (f"argmax of the classifier's logits on each generated {self.inputs.noun[:-1]}, vs the class "
                       "it was generated for"),
        "quantization": self._quantization(),
        "num_samples": int(counts.sum()),
        "num_classes": self.num_classes,
        "classes_requested": len(asked),
        "requested_labels": (f"the class named in each prompt ({self.unscored} prompts naming no class or several "
                             "were not scored)" if self.prompts is not None else
                             _requested(self.config, self.num_classes)),
        "mean_over_requested_classes": float(np.mean([e["accuracy"] for e in asked])),
        "lowest_class": {k: lowest[k] for k in ("class", "accuracy", "count")},
        "per_class": per_class,
    }
    values = {NAME: float(correct.sum() / counts.sum()), f"{NAME}_lowest": float(lowest["accuracy"])}
    return values, {NAME: section}


register_evaluator(Evaluator(
    name=NAME, media=backbones.BackboneMedia(), check=check, start=ClassAccuracy,
    doc="share of class-conditional samples the dataset classifier recognises as their requested class, per class"))
