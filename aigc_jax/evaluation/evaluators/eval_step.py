"""The family's own numbers: `eval_step` (likelihoods in nats and bits, perplexity, reconstruction PSNR/SSIM)
over every example of eval.reference_split, or the family's `evaluate_split` when it has one (text).
`psnr` and `ssim` name the eval_step values a reconstructing family (vqvae) reports."""
from aigc_jax.errors import UserError
from aigc_jax.evaluation import likelihood
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator


def _run_eval_step(ctx: EvalContext):
  """(values, protocol) of one pass over the split, shared by eval_step, psnr and ssim."""
  config, family = ctx.config, ctx.family
  split = config.eval.reference_split
  if family.evaluate_split is not None:
    out = dict(family.evaluate_split(ctx.state, ctx.mesh, split))
    how = f"aigc_jax.families.{config.family}.evaluate_split"
  else:
    out = likelihood.evaluate_split(config, family, ctx.state, ctx.mesh, split, seed=config.eval.seed)
    how = "eval_step over every example of the split once (last batch padded and masked), per-example mean"
  protocol = {"split": split, "how": how}
  for k in ("num_examples", "num_batches", "seconds"):
    if k in out:
      protocol[k] = out.pop(k)
  ctx.note("reference_split", split)
  return out, protocol


class _FromEvalStep:

  def __init__(self, ctx: EvalContext, keys):
    self.ctx, self.keys = ctx, keys

  def finish(self):
    values, protocol = self.ctx.shared("eval_step", lambda: _run_eval_step(self.ctx))
    if self.keys is None:
      return dict(values), {"eval_step": protocol}
    missing = [k for k in self.keys if k not in values]
    if missing:
      raise UserError(f"family {self.ctx.config.family!r}'s eval_step reports {sorted(values)}, not {missing}; "
                      "remove them from eval.metrics")
    return {k: values[k] for k in self.keys}, {"eval_step": protocol}


def _needs_eval_step(name):
  def check(config, family):
    if family.eval_step is None and family.evaluate_split is None:
      raise UserError(f"family {config.family!r} has no eval_step (likelihood or reconstruction metrics); remove "
                      f"{name!r} from eval.metrics")
  return check


register_evaluator(Evaluator(
    name="eval_step", media=(), needs_samples=False, check=_needs_eval_step("eval_step"),
    start=lambda ctx: _FromEvalStep(ctx, None),
    doc="the family's eval_step over eval.reference_split (ELBO/IWAE, bits/dim, perplexity, PSNR/SSIM...)"))
for _metric, _doc in (("psnr", "reconstruction PSNR in dB from the family's eval_step"),
                      ("ssim", "reconstruction SSIM (Wang et al. 2004) from the family's eval_step")):
  register_evaluator(Evaluator(
      name=_metric, media=("images",), needs_samples=False, check=_needs_eval_step(_metric),
      start=lambda ctx, m=_metric: _FromEvalStep(ctx, (m,)), doc=_doc))
