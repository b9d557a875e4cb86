"""WaveNet: an autoregressive model of raw audio over 8-bit mu-law samples (van den Oord et al. 2016).

Data: batches {"audio": float32 [B, T] in [-1, 1], "label": int32 [B]} from an audio source, with
T = round(data.sample_rate * data.clip_seconds). Training is teacher-forced cross-entropy over the whole clip:
every sample is mu-law encoded to one of 256 bins (families/wavenet_lib.py), the input at position t is the
one-hot bin of sample t - 1 (silence, bin 128, before the first), and a 256-way softmax predicts the bin of
sample t. Metrics: `loss` in nats per sample and `bits_per_sample`; `eval_step` and `evaluate_split` give the
same on a held-out split (eval.reference_split, `--config.eval.metrics="('eval_step',)"`), averaged per clip.
The likelihood is of the mu-law quantised audio (a discrete distribution over 256^T clips), as in the papers
that report WaveNet NLLs on SC09.

Network (models/wavenet.py): causal dilated convolutions with `model.kernel_size` taps, dilations
1, 2, ..., 2^(layers_per_stack - 1) repeated `model.stacks` times, gated tanh x sigmoid units, residual and
skip connections; `model.num_classes` > 0 adds global conditioning on the clip's label (Eq. 3 of the paper).
Receptive field: kernel_size + (kernel_size - 1) * stacks * (2^layers_per_stack - 1) samples (e.g. 3,071 for
3 stacks of 10, K = 2). A clip shorter than that still trains: predictions near the start see the zero
padding before the clip, as the first samples of every clip do, and no prediction conditions on more than
the clip so far. A layer whose dilation is not shorter than the clip would only ever read padding through
its dilated tap, so that setting is an error naming model.layers_per_stack.

Sampling: one compiled `lax.scan` over the T samples with Paine et al.'s (2016) per-layer activation queues
(wavenet_lib.make_generate; `sample(..., cached=False)` recomputes the network over the receptive field for
every sample instead and gives the same samples). Sample i draws from fold_in(sample key, i), so it is the same
on any device count; a conditional model draws class i mod num_classes, or `sample.label` for all.
`sample.temperature` divides the logits (0 = the most likely bin); `sample.guidance_scale` s != 1 draws from
uncond + s (cond - uncond) (classifier-free guidance on the logits; the null class is trained by replacing
the label with probability `model.label_dropout`). Output: {"audio": [N, T] decoded bin
centres, "audio_sample_rate": data.sample_rate, "labels": [N] (conditional models)}.

Output distributions (`model.output_distribution`): "categorical", the paper's 256-way softmax, or
"logistic_mixture", the discretised mixture of `model.mixture_components` logistics of Salimans et al. 2017
(PixelCNN++), which Parallel WaveNet (van den Oord et al. 2018) uses for WaveNet, here over the same 256 mu-law
bins (so bits per sample compare across the two): 3K outputs per position instead of 256, and a distribution
that knows neighbouring bins are neighbours. Sampling turns the mixture into logits over the 256 bins, so the
temperature, guidance and the draw act the same way on both.
Not implemented: local conditioning on mel spectrograms.
"""
import math
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from aigc_jax import configs, optim, parallel
from aigc_jax import data as data_lib
from aigc_jax.data import audio
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label, sample_labels, wavenet_lib
from aigc_jax.models.wavenet import WaveNet, dilations, receptive_field
from aigc_jax.parallel import example_keys, keys_for_ids, masked_mean

# model.output_distribution -> (network outputs per position given model.mixture_components, log P(target bin)
# from those outputs, logits over all 256 bins for sampling).
OUTPUT_DISTRIBUTIONS = {
    "categorical": (lambda k: wavenet_lib.MU_LAW_BINS,  # a 256-way softmax over the mu-law bins
                    lambda logits, targets: -optax.softmax_cross_entropy_with_integer_labels(logits, targets),
                    lambda logits: logits),
    "logistic_mixture": (lambda k: 3 * k,  # PixelCNN++'s discretised mixture of K logistics over the same bins
                         wavenet_lib.logistic_mixture_log_probs, wavenet_lib.logistic_mixture_bin_logits),
}
DEFAULT_MIXTURE_COMPONENTS = 10  # PixelCNN++'s 10 logistics (Salimans et al. 2017)


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads; experiments/wavenet.py overrides it."""
  c = configs.base_config()
  c.family = "wavenet"
  c.batch_size = 16
  c.num_train_steps = 100_000
  c.data.name = "spoken_digits"    # spoken_digits (offline) | speech_commands (SC09, TFDS) | audio_folder
  m = c.model
  m.residual_channels = 128        # R: width of the residual stream
  m.dilation_channels = 128        # G: channels of each half (tanh, sigmoid) of the gated unit
  m.skip_channels = 256            # S: width of the skip sum and of the output head's hidden layer
  m.layers_per_stack = 10          # dilations 1, 2, ..., 2^(layers_per_stack - 1) per stack
  m.stacks = 3                     # repeats of the dilation cycle
  m.kernel_size = 2                # taps of every causal convolution (the paper's 2)
  m.num_classes = 10               # > 0: global conditioning on the label; 0 = unconditional
  m.position_frames = 0            # > 0: local conditioning on a learned (label, position) code, F per clip
  m.label_dropout = 0.0            # probability of training a clip as the null class (for sample.guidance_scale)
  m.output_distribution = "categorical"  # 256-way softmax over 8-bit mu-law bins | logistic_mixture
  m.mixture_components = 0         # logistic_mixture's K (0 = 10); must stay 0 for categorical
  m.ema_decay = 0.0                # > 0: keep an EMA of the params (sampled and evaluated with sample.use_ema)
  c.optimizer = optim.optimizer_config(learning_rate=1e-3, grad_clip_norm=1.0)
  c.sample.num = 10
  c.sample.use_ema = False         # needs model.ema_decay > 0
  c.sample.temperature = 1.0       # divides the logits; 0 = the most likely bin at every step
  c.sample.guidance_scale = 1.0    # uncond + scale (cond - uncond) on the logits; != 1 needs model.label_dropout
  c.eval.metrics = ("eval_step",)  # test-split NLL in bits per sample
  c.eval.reference_split = "test"
  return c


def clip_samples(config: ConfigDict) -> int:
  """T = round(data.sample_rate * data.clip_seconds): the training clip and the generated sample length."""
  d = config.data
  t = audio.clip_samples(d)
  if t < 2:
    raise UserError(f"data.sample_rate={d.sample_rate} and data.clip_seconds={d.clip_seconds} give {t} samples "
                    "per clip; WaveNet needs at least 2: set --config.data.clip_seconds (e.g. 1.0)")
  return t


def check_config(config: ConfigDict) -> int:
  """One-line errors for values the family cannot use; returns the clip length T."""
  m, s = config.model, config.sample
  if m.output_distribution not in OUTPUT_DISTRIBUTIONS:
    raise UserError(f"unknown model.output_distribution {m.output_distribution!r}; use one of "
                    f"{tuple(OUTPUT_DISTRIBUTIONS)}")
  if m.mixture_components < 0 or (m.mixture_components and m.output_distribution != "logistic_mixture"):
    raise UserError(f"model.mixture_components={m.mixture_components} applies to "
                    "model.output_distribution='logistic_mixture' only, as a count >= 1 (0 = its default "
                    f"{DEFAULT_MIXTURE_COMPONENTS}); set --config.model.mixture_components=0")
  if m.kernel_size < 2:
    raise UserError(f"model.kernel_size={m.kernel_size}: a causal convolution with one tap never sees the past; "
                    "set --config.model.kernel_size=2 (the paper's) or more")
  for key in ("residual_channels", "dilation_channels", "skip_channels", "layers_per_stack", "stacks"):
    if m[key] < 1:
      raise UserError(f"model.{key}={m[key]} must be >= 1; set --config.model.{key}")
  if m.num_classes < 0:
    raise UserError(f"model.num_classes={m.num_classes} must be >= 0 (0 = unconditional)")
  t = clip_samples(config)
  if not 0 <= m.position_frames <= t:
    raise UserError(f"model.position_frames={m.position_frames} must be in [0, {t}] (0 = off, at most one code per "
                    "sample of the clip); set --config.model.position_frames (e.g. 10)")
  if not 0.0 <= m.ema_decay < 1.0:
    raise UserError(f"model.ema_decay={m.ema_decay} must be in [0, 1) (0 = no EMA)")
  if s.use_ema and m.ema_decay == 0:
    raise UserError("sample.use_ema=True but model.ema_decay=0 keeps no EMA; set --config.sample.use_ema=false or "
                    "--config.model.ema_decay=0.9999")
  if s.temperature < 0:
    raise UserError(f"sample.temperature={s.temperature} must be >= 0 (0 = the most likely bin, 1 = the model's "
                    "distribution)")
  if not 0.0 <= m.label_dropout < 1.0:
    raise UserError(f"model.label_dropout={m.label_dropout} must be in [0, 1) (0 = no null class)")
  if m.label_dropout and not m.num_classes:
    raise UserError("model.label_dropout > 0 needs a class-conditional model; set --config.model.num_classes")
  if s.guidance_scale != 1.0 and not m.label_dropout:
    raise UserError(f"sample.guidance_scale={s.guidance_scale} needs the null class, trained with "
                    "model.label_dropout > 0 (e.g. 0.1); set --config.sample.guidance_scale=1.0")
  check_sample_label(config, m.num_classes)
  top = max(dilations(m.layers_per_stack, m.stacks))
  if top >= t:
    fit = max(int(math.floor(math.log2(t - 1))) + 1, 1)
    raise UserError(f"model.layers_per_stack={m.layers_per_stack} gives dilation {top}, not shorter than the "
                    f"{t}-sample clip (data.sample_rate * data.clip_seconds): that layer's dilated tap would only "
                    f"read padding; set --config.model.layers_per_stack to at most {fit} or lengthen "
                    "data.clip_seconds")
  return t


def check_labels(labels_N, num_classes: int, where: str):
  """One-line error for a clip label a conditional model has no embedding for (-1 marks unlabelled clips)."""
  labels_N = np.asarray(labels_N)
  bad = labels_N[(labels_N < 0) | (labels_N >= num_classes)]
  if num_classes and len(bad):
    raise UserError(f"{where} has label {int(bad[0])} outside [0, {num_classes}) (model.num_classes="
                    f"{num_classes}); set --config.model.num_classes to the dataset's class count, or 0 for an "
                    "unconditional model")


def build_model(config: ConfigDict) -> WaveNet:
  m = config.model
  return WaveNet(residual_channels=m.residual_channels, dilation_channels=m.dilation_channels,
                 skip_channels=m.skip_channels, layers_per_stack=m.layers_per_stack, stacks=m.stacks,
                 kernel_size=m.kernel_size, num_classes=m.num_classes + (1 if m.label_dropout else 0),
                 position_frames=m.position_frames, out_dim=OUTPUT_DISTRIBUTIONS[m.output_distribution][0](
                     m.mixture_components or DEFAULT_MIXTURE_COMPONENTS),
                 clip_samples=clip_samples(config), dtype=optim.compute_dtype(config.dtype))


def build(config: ConfigDict):
  """The family plus the pieces tests and bench/ reach for (model, generate, per-sample losses)."""
  m, s = config.model, config.sample
  length = check_config(config)
  model = build_model(config)
  num_classes = m.num_classes
  tx, schedule = optim.make_optimizer(config.optimizer)
  _, log_prob_of, bin_logits = OUTPUT_DISTRIBUTIONS[m.output_distribution]
  generate = wavenet_lib.make_generate(model, s.temperature, s.guidance_scale, null_label=num_classes,
                                       bin_logits=bin_logits)
  rf = receptive_field(m.layers_per_stack, m.stacks, m.kernel_size)

  def labels_of(batch):
    return batch["label"].astype(jnp.int32) if num_classes else None

  def sample_nll(params, batch, labels_B=None):
    """Cross-entropy [B, T] in nats of every sample's mu-law bin given the samples before it."""
    targets_BxT = wavenet_lib.mu_law_encode(batch["audio"])
    out_BxTxV = model.apply({"params": params}, wavenet_lib.teacher_forcing_inputs(targets_BxT),
                            labels_of(batch) if labels_B is None else labels_B)
    return -log_prob_of(out_BxTxV, targets_BxT)

  def guard_labels(value, batch):
    """NaN when a label is outside [0, num_classes): an embedding lookup would silently clamp or wrap it, so
    the trainer's non-finite check stops the run instead (host-side data gets check_labels' one-line error)."""
    if not num_classes:
      return value
    labels_B = batch["label"]
    bad = jnp.any((labels_B < 0) | (labels_B >= num_classes))
    return jnp.where(bad, jnp.nan, value)

  def eval_params(state):
    return state["ema_params"] if s.use_ema else state["params"]

  def init(rng, example_batch):
    if "audio" not in example_batch:
      raise UserError(f"the wavenet family models audio, but data.name={config.data.name!r} gives batches of "
                      f"{sorted(example_batch)}; pick an audio source (spoken_digits, speech_commands, audio_folder)")
    if example_batch["audio"].shape[1] != length:
      raise UserError(f"data.name={config.data.name!r} gives clips of {example_batch['audio'].shape[1]} samples, "
                      f"not data.sample_rate * data.clip_seconds = {length}; set those keys to the source's")
    x_BxT = jnp.zeros(example_batch["audio"].shape, jnp.int32)
    labels_B = jnp.zeros(x_BxT.shape[:1], jnp.int32) if num_classes else None
    params = model.init(rng, x_BxT, labels_B)["params"]
    return {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=m.ema_decay > 0)}

  def train_step(state, batch, rng):
    labels_B = labels_of(batch)
    if m.label_dropout:  # the null class (index num_classes) in place of the label, per example
      drop_B = jax.vmap(lambda k: jax.random.bernoulli(k, m.label_dropout))(example_keys(rng, labels_B.shape[0]))
      labels_B = jnp.where(drop_B, num_classes, labels_B)
    loss_fn = lambda params: jnp.mean(sample_nll(params, batch, labels_B))
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, state["step"], m.ema_decay)
    new_state["step"] = state["step"] + 1
    loss = guard_labels(loss, batch)
    metrics = {"loss": loss, "bits_per_sample": loss / math.log(2), "grad_norm": grad_norm,
               "learning_rate": schedule(state["step"])}
    return new_state, jax.lax.pmean(metrics, parallel.DATA_AXIS)

  def eval_step(state, batch, rng):
    """Per-clip mean NLL (nats and bits per sample) over the rows with batch['mask'] == 1."""
    del rng
    nll_B = guard_labels(jnp.mean(sample_nll(eval_params(state), batch), axis=-1), batch)
    loss = masked_mean(nll_B, batch, nll_B.shape[0])
    return {"loss": loss, "bits_per_sample": loss / math.log(2)}

  def sample(state, rng, ids_B, cached=True):
    # One label per id, id mod num_classes (sample_labels with one column), or sample.label for all.
    labels_B = sample_labels(config, ids_B, num_classes, 1) if num_classes else None
    index_BxT = generate(eval_params(state), keys_for_ids(rng, ids_B), labels_B, length, cached)
    out = {"audio": wavenet_lib.mu_law_decode(index_BxT),
           "audio_sample_rate": jnp.full(ids_B.shape, config.data.sample_rate, jnp.int32)}
    if num_classes:
      out["labels"] = labels_B
    return out

  def evaluate_split(state, mesh, split: str = None) -> dict:
    """eval_step over every clip of `split` once (last batch padded and masked), per-clip means."""
    split = split or config.eval.reference_split
    clips = data_lib.load_split(config.data, split)
    audio_NxT, labels_N = np.asarray(clips.audio_NxT, np.float32), np.asarray(clips.labels_N, np.int32)
    if not len(audio_NxT):
      raise UserError(f"split {split!r} of {config.data.name} is empty; set --config.eval.reference_split")
    check_labels(labels_N, num_classes, f"{config.data.name}/{split}")
    start = time.time()
    result = parallel.mean_over_rows(
        eval_step, state, mesh, len(audio_NxT),
        lambda rows: {"audio": audio_NxT[rows], "label": labels_N[rows]}, config.batch_size,
        jax.random.key(config.eval.seed))
    result.update(num_examples=len(audio_NxT), seconds=round(time.time() - start, 2))
    return result

  family = Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step,
                  evaluate_split=evaluate_split, media=("audio",))
  return types.SimpleNamespace(family=family, model=model, generate=generate, sample_nll=sample_nll,
                               receptive_field=rf, length=length)


def make_family(config: ConfigDict) -> Family:
  return build(config).family
