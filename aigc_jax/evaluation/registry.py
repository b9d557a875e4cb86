"""The evaluator registry (big_vision-style): `eval.metrics` names evaluators; each says which media it scores
and whether it needs generated samples, checks its own config, and turns samples (or the family's own
`eval_step`) into numbers plus the protocol that produced them. The runner only loops.

A new metric is one module in `aigc_jax/evaluation/evaluators/` (imported on the first lookup) or anywhere
else, calling `register_evaluator(Evaluator(...))`.
"""
import dataclasses
from typing import Any, Callable, Optional, Sequence

from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax.errors import UserError
from aigc_jax.plugins import Registry


@dataclasses.dataclass
class EvalContext:
  """What one evaluation shares between its evaluators: the run, lazily built resources (a backbone, reference
  statistics, the family's eval_step results) and the card's protocol fields."""
  config: ConfigDict
  workdir: str
  family: Any
  mesh: Any
  state: Any
  cache_dir: str
  log: Callable[[str], None] = print
  card: dict = dataclasses.field(default_factory=dict)  # top-level metric-card fields set by evaluators
  _shared: dict = dataclasses.field(default_factory=dict)

  def shared(self, key, build: Callable[[], Any]):
    """`build()` once per evaluation under `key`; later callers (other evaluators) get the same object."""
    if key not in self._shared:
      self._shared[key] = build()
    return self._shared[key]

  def note(self, key: str, value, weak: bool = False):
    """Sets a card field; a weak note does not overwrite what another evaluator set."""
    if not weak or self.card.get(key) is None:
      self.card[key] = value


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """`start(ctx)` runs before any sampling (so bad input fails in seconds) and returns a running object with
  `finish() -> (values: dict, protocol sections: {section name: dict})` and, when `needs_samples`, a way to take
  each chunk of generated outputs (a dict keyed by medium):

  - `record(samples) -> {name: numpy array}` (what the chunk contributes, e.g. its backbone features; at least
    one array) and `absorb(record)` (add it to the running state): the runner calls `absorb(record(chunk))`,
    saves each record to disk, and after a SIGTERM or a kill absorbs the saved records instead of generating
    those chunks again (evaluation/partial.py). Running objects with the same `record_key` attribute (default:
    the evaluator's name) share their running state: the runner records and absorbs through one of them, so
    shared work (FID/KID/IS/PR's features) is done and saved once. Absorbing saved records must give the same
    state as absorbing fresh ones;
  - or only `consume(samples)`: still correct, but then the evaluation saves nothing and cannot resume."""
  name: str
  media: Sequence[str]              # media it scores; () = any (e.g. the family's own likelihood)
  start: Callable[[EvalContext], Any]
  needs_samples: bool = True
  check: Callable[[ConfigDict, Any], None] = lambda config, family: None
  doc: str = ""


_EVALUATORS = Registry("evaluator", "aigc_jax.evaluation.evaluators")


def register_evaluator(evaluator: Evaluator, *, replace: bool = False) -> Evaluator:
  return _EVALUATORS.register(evaluator.name, evaluator, replace=replace)


def unregister_evaluator(name: str):
  _EVALUATORS.unregister(name)


def known_evaluators() -> list:
  return _EVALUATORS.names()


def get_evaluator(name: str) -> Evaluator:
  evaluator = _EVALUATORS.get(name)
  if evaluator is None:
    raise UserError(f"unknown eval.metrics entry {name!r}; choose from {known_evaluators()}")
  return evaluator


def family_media(config: ConfigDict, family) -> tuple:
  """What the family's `sample` makes: its own declaration, else the medium of its data."""
  declared: Optional[Sequence[str]] = getattr(family, "media", None)
  return tuple(declared) if declared else (data_lib.medium(config),)


def applies(evaluator: Evaluator, media: Sequence[str]) -> bool:
  return not evaluator.media or any(m in evaluator.media for m in media)


def check_eval_config(config: ConfigDict, family):
  """One-line UserErrors for eval settings that cannot work, before any training or sampling."""
  e = config.eval
  wanted = tuple(e.metrics)
  if not wanted:
    raise UserError(f"eval.metrics is empty; choose from {known_evaluators()}")
  evaluators = [get_evaluator(name) for name in wanted]
  media = family_media(config, family)
  wrong = [ev.name for ev in evaluators if not applies(ev, media)]
  if wrong:
    usable = [n for n in known_evaluators() if applies(get_evaluator(n), media)]
    raise UserError(f"eval.metrics {wrong} score {sorted({m for n in wrong for m in get_evaluator(n).media})}, and "
                    f"family {config.family!r} on {config.data.name} makes {list(media)}; metrics that apply: "
                    f"{usable} (e.g. --config.eval.metrics=\"('eval_step',)\")")
  sampled = [ev.name for ev in evaluators if ev.needs_samples]
  if sampled and not family.samples_are_generated:
    raise UserError(f"eval.metrics {sampled} score generated samples, but family {config.family!r} samples "
                    "inputs and their reconstructions (no prior to sample from); use "
                    "--config.eval.metrics=\"('eval_step',)\" (reconstruction PSNR/SSIM, code usage)")
  if sampled and (e.num_samples < 2 or e.batch_size < 1):
    raise UserError(f"eval.num_samples must be >= 2 and eval.batch_size >= 1, got {e.num_samples}, {e.batch_size}")
  if e.get("clip_workdir", "") and "clip_score" not in wanted:
    raise UserError(f"eval.clip_workdir={e.clip_workdir} is only read by the clip_score metric, which eval.metrics "
                    f"{list(wanted)} lacks; add 'clip_score' to eval.metrics or leave eval.clip_workdir empty")
  for ev in evaluators:
    ev.check(config, family)
