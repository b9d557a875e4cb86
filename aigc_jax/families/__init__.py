"""The family contract and its lookup.

A family is one module `aigc_jax/families/<name>.py` with `make_family(config) -> Family`. The functions
close over the config (score_sde-style factories) and are pure:

  init(rng, example_batch) -> state                       any pytree: params, opt states, EMA, batch stats
  train_step(state, batch, rng) -> (state, metrics)       for ONE device; pmean over parallel.DATA_AXIS
  sample(state, rng, ids_B) -> outputs                    for ONE device; ids_B are global sample ids, so
                                                          sample i is the same whatever the device count
  eval_step(state, batch, rng) -> metrics   (optional)    likelihoods etc., pmean-ed like train_step
  encode(state, batch, rng) -> outputs      (optional)    per-example codes (e.g. VQ indices), [B, ...]
  decode(state, codes) -> images            (optional)    encode's inverse: code grids -> float NHWC in [-1, 1]
                                                          (priors over codes decode their samples with it)
  evaluate_split(state, mesh, split) -> metrics (optional)  the family's own whole-split evaluation, for data
                                                          that is not images (text); default: eval_step over
                                                          every image (aigc_jax.evaluation.likelihood)
  write_figures(state, directory, step) -> [paths] (optional)  host-side extra figures --mode=sample writes
                                                          (e.g. VAE reconstructions and interpolations)

`outputs` is a dict keyed by medium ("images": float NHWC in [-1, 1]; "text": token ids; "audio"; "video"),
written to files and TensorBoard by `aigc_jax.media`; an unknown key is an error, never dropped.
`config.family` names the module (or a family added with `register_family`), so a new family needs no edit
here nor in the trainer.
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ml_collections import ConfigDict

from aigc_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Family:
  init: Callable[..., Any]
  train_step: Callable[..., Any]
  sample: Callable[..., Any]
  eval_step: Optional[Callable[..., Any]] = None
  encode: Optional[Callable[..., Any]] = None
  decode: Optional[Callable[..., Any]] = None
  evaluate_split: Optional[Callable[..., Any]] = None
  write_figures: Optional[Callable[..., Any]] = None
  # Batches of `config.batch_size` one train_step consumes (e.g. several critic steps per generator step);
  # the trainer hands them over stacked example-major as [B, batches_per_step, ...].
  batches_per_step: int = 1
  # The media `sample` returns (keys of aigc_jax.media); () = the medium of the family's data source.
  media: Tuple[str, ...] = ()
  # False when `sample` shows data and its reconstructions (VQ-VAE) rather than new samples: sample-quality
  # metrics (FID, IS, ...) would score real images, so evaluation refuses them.
  samples_are_generated: bool = True
  # Text-conditional families: prompts_of(sample outputs) -> the prompt (str) each row was generated for, which
  # the text-alignment metrics (clip_score, compositional_accuracy; evaluation/prompts.py) score against.
  prompts_of: Optional[Callable[[dict], Sequence[str]]] = None


# Families registered at run time (a notebook, a test, a user's package): name -> make_family(config).
_REGISTERED: Dict[str, Callable[[ConfigDict], Family]] = {}


def register_family(name: str, make_family: Callable[[ConfigDict], Family]):
  """Adds a family defined outside aigc_jax/families/ (config.family = name selects it)."""
  _REGISTERED[name] = make_family
  return make_family


def unregister_family(name: str):
  _REGISTERED.pop(name, None)


def available_families():
  import aigc_jax.families as pkg
  modules = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and m.ispkg is False
             and not m.name.endswith("_lib")}
  return sorted(modules | set(_REGISTERED))


def sample_labels(config: ConfigDict, ids_B, num_classes: int, columns: int):
  """Class labels of samples `ids_B` for a class-conditional family: `sample.label` when it is set, otherwise
  each grid row of `columns` samples one class in turn (row r shows class r mod num_classes)."""
  import jax.numpy as jnp
  label = config.sample.label
  if label >= 0:
    return jnp.full(ids_B.shape, label, jnp.int32)
  return ((ids_B // columns) % max(num_classes, 1)).astype(jnp.int32)


def check_sample_label(config: ConfigDict, num_classes: int):
  """One-line error for a `sample.label` the model cannot produce."""
  label = config.sample.label
  if label >= 0 and not num_classes:
    raise UserError(f"sample.label={label} needs a class-conditional model (model.num_classes > 0); "
                    "leave sample.label at -1")
  if label >= num_classes and num_classes:
    raise UserError(f"sample.label={label} is out of range for a model of {num_classes} classes; set "
                    f"--config.sample.label to 0..{num_classes - 1} (or -1 for every class in turn)")


def get_family(config: ConfigDict) -> Family:
  name = config.family
  if name in _REGISTERED:
    return _REGISTERED[name](config)
  if name not in available_families():
    raise UserError(f"unknown family {name!r}; available: {available_families()} (config key 'family')")
  module = importlib.import_module(f"aigc_jax.families.{name}")
  return module.make_family(config)
