"""clip_score: how well generated images match their prompts, by the project's own CLIP.

CLIP score as text-to-image papers report it (Hessel et al. 2021's CLIPScore without its 2.5 weight; e.g. Saharia
et al. 2022, Imagen): 100 * max(cos(image embedding, prompt embedding), 0), averaged over the generated images,
with a CLIP run of experiments/clip.py named by `eval.clip_workdir` (no downloaded CLIP is used: the score is only
comparable between runs judged by the same CLIP, so the card names its checkpoint, step and params hash, and copies
the zero-shot accuracy and recall@k from that run's own metric card when it has one). The card also gives the
score of real test images with their own first caption: the level a generator that matched the data would reach
under this CLIP. Prompts longer than the CLIP's text context are truncated (and counted on the card).
"""
import glob
import json
import os

import numpy as np

from aigc_jax import data as data_lib
from aigc_jax.data import captions
from aigc_jax.errors import UserError
from aigc_jax.evaluation import prompts as prompts_lib
from aigc_jax.evaluation.inputs import get_inputs
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator

NAME = "clip_score"
REFERENCE_IMAGES = 1000  # real test images scored for the card's reference level


def check(config, family):
  if not config.eval.get("clip_workdir", ""):
    raise UserError(f"eval.metrics has {NAME!r}, which needs a trained CLIP; set --config.eval.clip_workdir to a run "
                    f"of experiments/clip.py (e.g. runs/clip_cpu), or remove {NAME!r} from eval.metrics")
  prompts_lib.check_text_conditional(config, family, NAME)


def _clip_card(workdir: str, step: int) -> dict:
  """Zero-shot accuracy and recall@k from the CLIP run's metric card of `step` (newest card if none of it)."""
  cards = sorted(glob.glob(os.path.join(workdir, "eval", "*.json")),
                 key=lambda p: int(os.path.basename(p)[:-5]) if os.path.basename(p)[:-5].isdigit() else -1)
  wanted = os.path.join(workdir, "eval", f"{step}.json")
  path = wanted if wanted in cards else (cards[-1] if cards else None)
  if path is None:
    return {"note": f"no metric card in {workdir}/eval; run --mode=eval on the CLIP run for its accuracy"}
  try:
    with open(path) as f:
      values = json.load(f).get("metrics", {})
  except (OSError, ValueError):
    return {"note": f"unreadable metric card {path}"}
  kept = {k: v for k, v in values.items() if "zero_shot" in k or "recall" in k}
  return {"card": path, **kept}


class ClipScore:
  record_key = NAME

  def __init__(self, ctx: EvalContext):
    from aigc_jax.families.clip import load_clip  # families import evaluation: import it only when used
    config = ctx.config
    self.config, self.inputs = config, get_inputs("images")
    self.clip = load_clip(config.eval.clip_workdir, key="eval.clip_workdir")
    d = config.data
    wanted = (d.image_size, d.image_size, d.channels)
    if tuple(self.clip.image_shape) != wanted:
      raise UserError(f"eval.clip_workdir={config.eval.clip_workdir} is a CLIP of {self.clip.image_shape} images "
                      f"and this run makes {wanted}; train a CLIP on {d.name} at data.image_size={d.image_size}")
    self.prompts = prompts_lib.prompt_reader(ctx)
    self.truncated = 0
    self.scores = []
    test = captions.load_captioned(d, "test")
    n = min(len(test.images), REFERENCE_IMAGES)
    real = self._scores(data_lib.to_model_range(test.images[:n]), [c[0] for c in test.captions[:n]])
    self.reference = {"split": "test", "images": n, "caption": "each image's first caption",
                      "clip_score": float(np.mean(real)), "captions_truncated": self.truncated}
    self.truncated = 0

  def _scores(self, images_NxHxWxC, texts) -> np.ndarray:
    tokens, mask, truncated = self.clip.tokenizer.encode_padded(texts, self.clip.caption_length, truncate=True)
    self.truncated += int(truncated)
    image_e = self.clip.embed_images(images_NxHxWxC)
    text_e = self.clip.embed_text(tokens, mask)
    return np.maximum(100.0 * np.sum(image_e * text_e, -1), 0.0)

  def record(self, samples: dict) -> dict:
    x = self.inputs.samples_of(samples, self.config)
    if self.config.eval.quantize:
      x = self.inputs.quantize(x)
    return {"score": self._scores(x, self.prompts(samples)).astype(np.float32)}

  def absorb(self, record: dict):
    self.scores.append(record["score"])

  def finish(self):
    scores = np.concatenate(self.scores)
    section = {
        "definition": "100 * max(cos(CLIP image embedding, CLIP prompt embedding), 0), mean over generated images",
        "clip": {"workdir": os.path.abspath(self.config.eval.clip_workdir), "checkpoint": self.clip.checkpoint,
                 "step": self.clip.step, "params_sha256_16": self.clip.fingerprint,
                 "its_own_metrics": _clip_card(self.config.eval.clip_workdir, self.clip.step)},
        "real_reference": self.reference,
        "num_samples": int(scores.size),
        "std": float(np.std(scores)),
        "prompts_truncated": self.truncated,
    }
    return {NAME: float(np.mean(scores)), f"{NAME}_real": self.reference["clip_score"]}, {NAME: section}


register_evaluator(Evaluator(
    name=NAME, media=("images",), check=check, start=ClipScore,
    doc="100 * cosine of the project's CLIP embeddings of each generated image and its prompt (eval.clip_workdir)"))
