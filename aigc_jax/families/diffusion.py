"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel, NeurIPS 2020), with DDIM sampling (Song et
al. 2021), classifier-free guidance (Ho & Salimans 2022), and DiffWave's waveform network and fast sampling
(Kong et al., ICLR 2021).

One family for every medium it has a row for in MEDIA: images [B, H, W, C] and audio clips [B, T]. The
schedules, objectives, bound and samplers are shape-generic (diffusion_lib reduces over all non-batch axes);
the medium decides the batch key, the decoder's quantisation grid for the bound, and the auxiliary sample
outputs; `model.arch` picks the network from ARCHS (unet: Ho et al.'s U-Net, for images; diffwave: Kong et
al.'s dilated residual network, for audio). A model.* key the chosen arch does not read, changed from its
default, is an error.

State: {step, params, opt_state, ema_params} (aigc_jax.optim's train state). A train step draws per example
a timestep t ~ U{0..T-1} and noise, and regresses the network on the configured target (eps / x0 / v) at x_t;
with `model.num_classes` the label is replaced by the null class with probability `diffusion.label_dropout`,
which trains the unconditional branch that guidance needs. With `model.text_encoder` (joint | clip) the model is
text-conditional on captioned data: the U-Net cross-attends to the caption's token states, and
`diffusion.caption_dropout` swaps in the null (all-masked) caption (diffusion_lib/text.py); its samples carry
`prompt_ids` into the prompt table (`sample.prompt`, `sample.prompts_file` or the test captions), which
`prompts_of` turns back into text for the text-alignment metrics and `write_figures` writes as
`<step>_prompts.txt` next to the grid. `eval_step` is the variational bound in bits/dim
(bits per sample for audio; T network calls per batch). `sample` runs `sample.sampler` (ddpm | ddim over
`sample.steps` steps, or fast: DiffWave's T_infer steps on `sample.fast_schedule`) as one compiled loop and
returns {medium: x in [-1, 1]} (+ 'audio_sample_rate' = data.sample_rate for audio); class-conditional models
draw class (id // grid columns) % num_classes for sample id, so each row of the written grid (of images, or
of spectrograms) is one class, or `sample.label` for every sample.

Quiet data (speech: std ~0.07, against ~0.5 for images in [-1, 1]) sees mostly pure noise under an image
schedule, and an eps (or v) network must then reproduce its input to a precision finer than the signal: on
spoken digits at 8 kHz a C = 64 DiffWave trained 600 steps had x0 estimates worse than predicting 0 at every
t >= 40 of T = 200 (bench/RESULTS.md). `diffusion.data_scale` s runs the whole process on s x (samples are
divided by s, clipping and the bound's grid scaled with it, so bits stay the data's); with s ~ 1 / data std
and v prediction the same network beat the Wiener estimate at every t. `diffusion.logsnr_shift` only moves a
schedule's log SNR (the noise levels s x would see, schedules.shift_logsnr), not the scale the network must
work at: with eps prediction it did not help there.

The pieces live in `diffusion_lib/` (archs, schedules, objectives, likelihood, samplers); this module wires them
to the family contract and checks the config.
"""
import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax import data as data_lib
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label, sample_labels
from aigc_jax.families.diffusion_lib import likelihood, objectives, samplers
from aigc_jax.families.diffusion_lib import latent as latent_lib
from aigc_jax.families.diffusion_lib.archs import ARCHS, Arch
from aigc_jax.families.diffusion_lib import text as text_lib
from aigc_jax.families.diffusion_lib.schedules import make_schedule, q_sample
from aigc_jax.parallel import DATA_AXIS, example_ids, example_keys, keys_for_ids, masked_mean


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (Ho et al.'s CIFAR-10 U-Net and process);
  experiments/ddpm.py overrides it."""
  c = configs.base_config()
  c.family = "diffusion"
  m = c.model
  m.arch = "unet"                  # see ARCHS: unet (images) | diffwave (audio)
  m.ch = 128                       # U-Net base channels (every level's width a multiple of 32: GroupNorm)
  m.ch_mult = (1, 2, 2, 2)         # width multiplier per resolution level
  m.num_res_blocks = 2             # residual blocks per level
  m.attn_resolutions = (16,)       # feature-map sizes that get self-attention
  m.dropout = 0.1
  m.residual_channels = 256        # diffwave: C (Kong et al.'s SC09 model)
  m.residual_layers = 36           # diffwave: N
  m.dilation_cycle = 12            # diffwave: dilations 1, 2, ..., 2^(cycle - 1), repeated
  m.patch_size = 1                 # diffwave: samples per network frame (1 = the paper; P > 1 runs the layers
                                   # at 1/P of the sample rate; the clip length must be a multiple of P)
  m.num_classes = 0                # > 0: class-conditional, with an extra null class for guidance
  m.ema_decay = 0.9999             # EMA of the params, sampled and evaluated when sample.use_ema

  c.diffusion = ConfigDict()
  c.diffusion.num_timesteps = 1000   # T
  c.diffusion.schedule = "linear"    # linear | scaled_linear (LDM's sqrt-spaced) | cosine
  c.diffusion.beta_start = 1e-4      # (scaled_)linear schedule's first and last beta
  c.diffusion.beta_end = 0.02
  c.diffusion.logsnr_shift = 0.0     # added to every step's log SNR (schedules.shift_logsnr; Hoogeboom et al.
                                     # 2023); for quiet data prefer data_scale (see the module docstring)
  c.diffusion.prediction = "eps"     # network target: eps | x0 | v
  c.diffusion.loss_weighting = "simple"  # simple (L_simple) | min_snr
  c.diffusion.min_snr_gamma = 5.0    # min_snr: the SNR cap
  c.diffusion.variance = "fixedlarge"  # reverse-step variance: fixedlarge (beta_t) | fixedsmall (posterior)
  c.diffusion.clip_denoised = True   # clip predicted x0 to [-1, 1] while sampling and in the bound
  c.diffusion.label_dropout = 0.0    # probability of training a labelled example as the null class
  c.diffusion.data_scale = 1.0       # the process runs on data x s (samples divided by s): s ~ 1 / data std
                                     # puts quiet data (speech: std ~0.07) on the noise levels images see

  c.optimizer = optim.optimizer_config(learning_rate=2e-4)
  c.sample.sampler = "ddpm"          # ddpm (ancestral) | ddim | fast (DiffWave's, Kong et al. 2021 App. B)
  c.sample.steps = 0                 # ddpm, ddim: 0 = all T; fewer respaces the chain
  c.sample.eta = 0.0                 # ddim only: 0 deterministic, 1 ancestral
  c.sample.fast_schedule = samplers.FAST_SCHEDULE_T200  # fast only: the user-defined betas, T_infer of them
  c.sample.guidance_scale = 1.0      # uncond + scale (cond - uncond); != 1 needs label/caption dropout training
  text_lib.add_config_keys(c)        # model.text_encoder & co (diffusion_lib/text.py)
  latent_lib.add_config_keys(c)      # model.autoencoder (diffusion_lib/latent.py)
  return c


_ARCH_KEYS = sorted({k for arch in ARCHS.values() for k in arch.keys})


@dataclasses.dataclass(frozen=True)
class MediumSpec:
  """What the family needs to know of a medium: the batch key of its examples, the grid its samples are
  saved on (the bound's decoder), and the auxiliary outputs `sample` adds (extras(config, ids_B) -> dict)."""
  batch_key: str
  grid: likelihood.Quantisation
  extras: Callable[[ConfigDict, jax.Array], dict]


MEDIA = {
    "images": MediumSpec("image", likelihood.IMAGES_8BIT, lambda config, ids_B: {}),
    "audio": MediumSpec("audio", likelihood.AUDIO_16BIT, lambda config, ids_B: {
        "audio_sample_rate": jnp.full(ids_B.shape, config.data.sample_rate, jnp.int32)}),
}


def _changed(config: ConfigDict, section: str, keys):
  """Keys of config.<section> whose values differ from default_config()'s (lists read back from a saved config
  compare as tuples)."""
  defaults = default_config()[section]
  norm = lambda v: tuple(v) if isinstance(v, list) else v
  return [k for k in keys if norm(config[section][k]) != norm(defaults[k])]


def check_arch(config: ConfigDict, medium: str = None) -> Arch:
  """The chosen arch, after one-line errors for an unknown one, one that does not model `medium`, and a
  model.* key of another arch changed from its default (it would be silently ignored)."""
  m = config.model
  if m.arch not in ARCHS:
    raise UserError(f"unknown model.arch {m.arch!r} for the diffusion family; use one of {sorted(ARCHS)}")
  arch = ARCHS[m.arch]
  if medium is not None and medium not in arch.media:
    fits = sorted(name for name, a in ARCHS.items() if medium in a.media)
    raise UserError(f"model.arch={m.arch!r} models {'/'.join(arch.media)}, but data.name={config.data.name!r} "
                    f"is {medium}; set --config.model.arch={' or '.join(fits)}")
  ignored = _changed(config, "model", [k for k in _ARCH_KEYS if k not in arch.keys])
  if ignored:
    raise UserError(f"model.{ignored[0]} is not read by model.arch={m.arch!r}; leave it at its default or pick "
                    "an arch that has it")
  return arch


def build_model(config: ConfigDict):
  """The noise-prediction network of `model.arch`."""
  return check_arch(config).build(config)


def make_family(config: ConfigDict) -> Family:
  dif, m = config.diffusion, config.model
  medium = data_lib.medium(config)
  if medium not in MEDIA:
    raise UserError(f"the diffusion family models {sorted(MEDIA)}, but data.name={config.data.name!r} is "
                    f"{medium}; pick another data.name or family")
  spec = MEDIA[medium]
  arch = check_arch(config, medium)
  objectives.check(dif.prediction, dif.loss_weighting)
  if not 0.0 <= dif.label_dropout < 1.0:
    raise UserError(f"diffusion.label_dropout must be in [0, 1), got {dif.label_dropout}")
  if not (isinstance(dif.data_scale, (int, float)) and not isinstance(dif.data_scale, bool)
          and 0.01 <= dif.data_scale <= 100):
    raise UserError(f"diffusion.data_scale must be a number in [0.01, 100] (1 = none), got {dif.data_scale!r}")
  if dif.data_scale != 1 and latent_lib.enabled(config):
    raise UserError("diffusion.data_scale scales data, and latent diffusion's latents are already scaled to unit "
                    "variance by the autoencoder; leave --config.diffusion.data_scale=1")
  if dif.label_dropout and not m.num_classes:
    raise UserError("diffusion.label_dropout > 0 needs a class-conditional model; set model.num_classes")
  text_lib.check(config, lambda section, keys: [f"{section}.{k}" for k in _changed(config, section, keys)])
  samplers.check_config(config, lambda keys: _changed(config, "sample", keys), text_lib.enabled(config))
  check_sample_label(config, m.num_classes)
  schedule = make_schedule(dif.schedule, dif.num_timesteps, dif.beta_start, dif.beta_end, dif.logsnr_shift)
  schedule.model_log_variance(dif.variance)  # validates the name now rather than at the first eval
  if config.sample.sampler == "fast":
    samplers.check_fast_schedule(schedule, config.sample.fast_schedule)
  # One example's shape as the data source gives it ([H, W, C] images, [T] clips): what `sample` draws.
  example_shape = tuple(data_lib.example_batch(config, 1)[spec.batch_key].shape[1:])
  if len(example_shape) != arch.example.count(",") + 1:
    raise UserError(f"model.arch={m.arch!r} takes examples shaped {arch.example}, but data.name="
                    f"{config.data.name!r} gives {list(example_shape)}; pick a data source with that shape or "
                    "another model.arch")
  model = arch.build(config)
  latent = latent_lib.load(config, medium) if latent_lib.enabled(config) else None
  if latent is not None:
    if dif.clip_denoised:
      raise UserError("diffusion.clip_denoised=True would clip latents to [-1, 1], and the autoencoder's scaled "
                      "latents have unit variance; set --config.diffusion.clip_denoised=false")
    example_shape = latent.latent_shape
    model = model.clone(out_channels=latent.latent_shape[-1])
  text = text_lib.build(config, optim.compute_dtype(config.dtype)) if text_lib.enabled(config) else None
  if text is not None:
    model = model.clone(context_dim=text.context_dim)
  dropout = m.dropout if "dropout" in arch.keys else 0.0
  tx, lr_schedule = optim.make_optimizer(config.optimizer)
  null_label = m.num_classes  # the extra embedding row of a conditional network
  process = dict(schedule=schedule, prediction=dif.prediction)
  data_scale = float(dif.data_scale)
  clip = dif.clip_denoised and data_scale  # the bound of the scaled data's range; False = no clipping

  # The network's params: the U-Net's own tree, or {"unet", "text"} with a jointly trained text encoder.
  joint = text is not None and text.kind == "joint"
  unet_params = (lambda params: params["unet"]) if joint else (lambda params: params)

  def condition(params, batch_or_cond):
    """The network's conditioning inputs: {"labels"} (class-conditional), {"ctx", "mask"} (text), or {}."""
    if m.num_classes:
      return {"labels": batch_or_cond["labels"]}
    if text is not None:
      if "ctx" in batch_or_cond:
        return {"ctx": batch_or_cond["ctx"], "mask": batch_or_cond["mask"]}
      tokens, mask = batch_or_cond["caption_tokens"], batch_or_cond["caption_mask"]
      return {"ctx": text.context(params, tokens, mask), "mask": mask}
    return {}

  def apply(params, x, t_B, cond, dropout_rng=None):
    """The network on conditioning `cond` (from `condition`); with a dropout key, in training mode with each
    example's masks drawn from its global index (independent of the batch split)."""
    # Only a text model's U-Net takes a context (DiffWave's signature has no such arguments).
    args = lambda c: (c.get("labels"), c["ctx"], c["mask"]) if text is not None else (c.get("labels"),)  # noqa: E731
    if dropout_rng is None or not dropout:
      return model.apply({"params": unet_params(params)}, x, t_B, *args(cond), train=False)
    return model.apply({"params": unet_params(params)}, x, t_B, *args(cond), train=True,
                       rngs={"dropout": dropout_rng}, example_ids_B=example_ids(x.shape[0]))

  def init(rng, example_batch):
    x = example_batch[spec.batch_key]
    b = x.shape[0]
    x = x if latent is None else jnp.zeros((b, *example_shape), jnp.float32)
    t_B = jnp.zeros((b,), jnp.int32)
    labels_B = jnp.zeros((b,), jnp.int32) if m.num_classes else None
    if text is None:
      params = model.init({"params": rng}, x, t_B, labels_B, train=False)["params"]
    else:
      rng, text_rng = jax.random.split(rng)
      tokens, mask = jnp.zeros((b, text.length), jnp.int32), jnp.ones((b, text.length), bool)
      ctx = jnp.zeros((b, text.length, text.context_dim), jnp.float32)
      params = model.init({"params": rng}, x, t_B, None, ctx, mask, train=False)["params"]
      if joint:
        params = {"unet": params, "text": text.init_params(text_rng, tokens, mask)}
    return {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=True)}

  def train_step(state, batch, rng):
    x0 = batch[spec.batch_key] * data_scale if latent is None else latent.encode(batch[spec.batch_key])
    b = x0.shape[0]
    keys = example_keys(rng, b)
    purpose = lambda p: jax.vmap(lambda k: jax.random.fold_in(k, p))(keys)
    t_B = jax.vmap(lambda k: jax.random.randint(k, (), 0, dif.num_timesteps))(purpose(0))
    noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:]))(purpose(1))
    given = {"labels": batch["label"].astype(jnp.int32)}
    if m.num_classes and dif.label_dropout:
      drop_B = jax.vmap(lambda k: jax.random.bernoulli(k, dif.label_dropout))(purpose(2))
      given["labels"] = jnp.where(drop_B, null_label, given["labels"])
    if text is not None:
      given["caption_tokens"], given["caption_mask"] = batch["caption_tokens"], batch["caption_mask"]
      if dif.caption_dropout:  # the null caption: every token masked
        drop_B = jax.vmap(lambda k: jax.random.bernoulli(k, dif.caption_dropout))(purpose(2))
        given["caption_mask"] = given["caption_mask"] & ~drop_B[:, None]
    xt = q_sample(schedule, x0, t_B, noise)

    def loss_fn(params):
      out = apply(params, xt, t_B, condition(params, given), jax.random.fold_in(rng, 3))
      return objectives.loss(dif.prediction, dif.loss_weighting, schedule, out, x0, noise, t_B, dif.min_snr_gamma)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    step = state["step"]
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, step, m.ema_decay)
    new_state["step"] = step + 1
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr_schedule(step)}
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def eval_params(state):
    return state["ema_params"] if config.sample.use_ema else state["params"]

  def null_condition(params, b):
    """The unconditional branch's conditioning: the null class, or the null (all-masked) caption."""
    if m.num_classes:
      return {"labels": jnp.full((b,), null_label, jnp.int32)}
    if text is not None:
      return {"ctx": jnp.zeros((b, text.length, text.context_dim), jnp.float32),
              "mask": jnp.zeros((b, text.length), bool)}
    return {}

  def eval_step(state, batch, rng):
    """Bits/dim of the bound on -log p(x) (for a conditional model: of the unconditional, null-class or
    null-caption branch)."""
    x0 = batch[spec.batch_key] * data_scale
    params = eval_params(state)
    null = null_condition(params, x0.shape[0])
    # Scaling the data and its grid together leaves every bin's probability, so the bits are the data's.
    grid = likelihood.Quantisation(spec.grid.half_bin * data_scale, spec.grid.edge * data_scale)
    parts = likelihood.bound_bpd(lambda x, t_B: apply(params, x, t_B, null), x0, example_keys(rng, x0.shape[0]),
                                 variance=dif.variance, clip_denoised=clip, grid=grid, **process)
    # Masked global means: rows with batch['mask'] == 0 pad the last batch of a split and must not count.
    per_example = jax.tree.map(lambda v: jnp.mean(v.reshape(x0.shape[0], -1), axis=1), parts)
    return masked_mean(per_example, batch, x0.shape[0])

  s = config.sample
  timesteps = samplers.sampling_timesteps(dif.num_timesteps, s.steps)
  grid_columns = math.ceil(math.sqrt(s.num))  # media.images.image_grid's default layout (images, spectrograms)
  common = dict(prediction=dif.prediction, clip_denoised=clip)
  run_sampler = {
      "ddpm": lambda denoise, x_T, keys_B: samplers.ddpm(denoise, schedule, timesteps, x_T, keys_B,
                                                         variance=dif.variance, **common),
      "ddim": lambda denoise, x_T, keys_B: samplers.ddim(denoise, schedule, timesteps, x_T, keys_B, eta=s.eta,
                                                         **common),
      "fast": lambda denoise, x_T, keys_B: samplers.fast(denoise, schedule, tuple(s.fast_schedule), x_T, keys_B,
                                                         variance=dif.variance, **common),
  }[s.sampler]

  if text is not None:
    prompts, table_tokens_PxL, table_mask_PxL, layout = text_lib.prompt_table(config, text)

  def sample(state, rng, ids_B):
    params = eval_params(state)
    keys_Bx2 = jax.vmap(jax.random.split)(keys_for_ids(rng, ids_B))
    x_T = jax.vmap(lambda k: jax.random.normal(k, example_shape))(keys_Bx2[:, 0])
    b = ids_B.shape[0]
    extra = {}
    if m.num_classes:
      cond = {"labels": sample_labels(config, ids_B, m.num_classes, grid_columns)}
      extra["labels"] = cond["labels"]
    elif text is not None:
      extra["prompt_ids"] = text_lib.prompt_ids(layout, len(prompts), ids_B, grid_columns).astype(jnp.int32)
      rows = {"caption_tokens": jnp.asarray(table_tokens_PxL)[extra["prompt_ids"]],
              "caption_mask": jnp.asarray(table_mask_PxL)[extra["prompt_ids"]]}
      cond = condition(params, rows)  # the text context once, not at every denoising step
    else:
      cond = {}
    denoise = samplers.guided(lambda x, t_B, c: apply(params, x, t_B, c), cond, null_condition(params, b),
                              s.guidance_scale)
    x0 = run_sampler(denoise, x_T, keys_Bx2[:, 1]) / data_scale
    if latent is not None:
      x0 = latent.decode(x0)
    return {medium: jnp.clip(x0, -1.0, 1.0), **spec.extras(config, ids_B), **extra}

  eval_step = eval_step if latent is None else None  # latent bits/dim would not compare with pixels
  if text is None:
    return Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step)

  def prompts_of(samples):
    return [prompts[int(i)] for i in np.asarray(samples["prompt_ids"]).reshape(-1)]

  @functools.partial(jax.jit, static_argnums=3)
  def guided_row(params, scale, key, n):
    """n samples of the first prompt at a traced guidance scale: one program for every scale of the grid."""
    keys_Nx2 = jax.vmap(jax.random.split)(jax.random.split(key, n))
    x_T = jax.vmap(lambda k: jax.random.normal(k, example_shape))(keys_Nx2[:, 0])
    first = {"caption_tokens": jnp.repeat(jnp.asarray(table_tokens_PxL[:1]), n, 0),
             "caption_mask": jnp.repeat(jnp.asarray(table_mask_PxL[:1]), n, 0)}
    denoise = samplers.guided(lambda x, t_B, c: apply(params, x, t_B, c), condition(params, first),
                              null_condition(params, n), scale)
    x0 = run_sampler(denoise, x_T, keys_Nx2[:, 1])
    return jnp.clip(x0 / data_scale if latent is None else latent.decode(x0), -1.0, 1.0)

  def write_figures(state, directory, step):
    """`<step>_prompts.txt` (each grid row's prompt) and, with sample.guidance_grid, `<step>_guidance.png`."""
    params, key = eval_params(state), jax.random.key(config.sample.seed)
    row = lambda scale, n: np.asarray(guided_row(params, jnp.float32(scale), key, n))  # noqa: E731
    return text_lib.write_figures(config, directory, step, prompts, layout, grid_columns, row)

  return Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step, prompts_of=prompts_of,
                write_figures=write_figures)
