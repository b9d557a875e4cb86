"""What the text-alignment metrics (clip_score, compositional_accuracy) need of a family: the prompt of each sample.

A text-conditional family sets `Family.prompts_of(samples) -> list of str`, the prompt each row of a `sample` output
was generated for (its `sample` carries them as arrays, e.g. token ids: strings cannot leave a jitted, data-parallel
function). The metrics never branch on the family.
"""
from aigc_jax.errors import UserError


def check_text_conditional(config, family, metric: str):
  if getattr(family, "prompts_of", None) is None:
    raise UserError(f"eval.metrics has {metric!r}, which scores images against their prompts, and family "
                    f"{config.family!r} here is not text-conditional; train a text-conditional model (e.g. "
                    f"experiments/latent_diffusion.py) or remove {metric!r} from eval.metrics")


def prompt_reader(ctx):
  """prompts(samples) -> list of str, one per sample row, checked against the row count."""
  family = ctx.family

  def prompts(samples: dict) -> list:
    texts = list(family.prompts_of(samples))
    rows = len(next(iter(v for k, v in samples.items() if k in ("images", "audio"))))
    if len(texts) != rows:
      raise ValueError(f"family {ctx.config.family!r} gave {len(texts)} prompts for {rows} samples")
    return texts

  return prompts
