"""pix2pix (Isola, Zhu, Zhou & Efros, "Image-to-Image Translation with Conditional Adversarial Networks",
CVPR 2017): a U-Net generator G(x) trained with lambda * L1(G(x), y) plus a conditional adversarial loss
from a PatchGAN discriminator D that sees the input and an output side by side on channels (eq. 4).

- One D step then one G step per batch (Section 3.3), each on the same fakes; D's loss is halved ("we divide
  the objective by 2 while optimizing D", the paper's Section 3.3 in its arXiv v3), G's adversarial loss is
  the non-saturating -log D(x, G(x)) (`model.gan_loss`; hinge and least squares are options), lambda = 100
  (`model.l1_weight`). `model.conditional_d=False` is the paper's unconditional "GAN" ablation (Table 1),
  `model.gan_weight=0` its L1-only row (D is then not trained).
- Noise is dropout in G's first decoder layers, at training and test time (Section 3.1); masks come from
  per-example keys (`parallel.example_keys` in training, `keys_for_ids` when sampling), so 1 device computes
  what 8 do. `model.test_dropout=False` makes outputs deterministic.
- Normalisation: batch norm over the global batch while training (`axis_name`); at test time the paper
  uses the test batch's statistics, which at batch size 1 is instance norm (Section 3.3): `model.g_norm=
  "instance"` is exactly that at any batch size; with "batch", sampling and evaluation use the running
  averages, so an output does not depend on the other examples of its batch.

State: {step, generator, discriminator}, one optim train state each ({params, opt_state, batch_stats}; the
generator's also ema_params when `model.ema_decay` > 0, sampled from with `sample.use_ema`).

`sample` shows data: strips input | output | target of the first `sample.num` pairs of `sample.split` (for
inpainting the input is the masked image), so sample-quality metrics are refused (`samples_are_generated`
False). `eval_step` gives L1, PSNR and SSIM of the output against the target, and the same of the input
against the target (`input_*`; grey inputs repeated to the target's channels), so a card shows whether the
model beats its input. `--mode=sample` with `sample.input_dir` also translates a folder of images
(`write_figures`: input | output [| target] strips and one output file per input).
"""
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from aigc_jax import configs, optim, parallel
from aigc_jax import data as data_lib
from aigc_jax.data import paired
from aigc_jax.errors import UserError
from aigc_jax.evaluation.image_quality import psnr, ssim
from aigc_jax.families import Family, check_sample_label, vqgan_lib
from aigc_jax.media import images as image_media
from aigc_jax.models.patch_discriminator import NORMS as D_NORMS
from aigc_jax.models.patch_discriminator import PatchDiscriminator, patch_grid_size
from aigc_jax.models.pix2pix import NORMS as G_NORMS
from aigc_jax.models.pix2pix import UNetGenerator, unet_depth
from aigc_jax.parallel import DATA_AXIS, example_keys, keys_for_ids, masked_mean

GAN_LOSSES = ("non_saturating", "hinge", "lsgan")


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads: the paper's networks and optimiser, on the
  offline inpainting task; experiments/pix2pix.py overrides it."""
  c = configs.base_config()
  c.family = "pix2pix"
  c.batch_size = 1
  c.data.name = "paired"
  c.data.task = "inpaint"           # paired: inpaint | edges | colorize
  c.data.base = "mnist_5k"          # paired: the image source the pairs are made from
  c.data.mask_size = 12             # paired, inpaint: side of the square hole
  c.data.direction = "AtoB"         # paired_folder: AtoB (left/A is the input) | BtoA
  c.data.input_channels = 1         # paired_folder: channels of the input side (data.channels: the target's)
  c.data.jitter_scale = 1.0         # resize to round(image_size * this), crop back at random; 1 = off
  m = c.model
  m.g_width = 64                    # channels of G's first layer (ngf); layer i has g_width * min(2^i, 8)
  m.num_downsamples = 0             # G's stride-2 layers; 0 = down to a 1x1 bottleneck (log2 image_size)
  m.g_norm = "batch"                # batch | instance | none
  m.dropout = 0.5                   # rate in G's first decoder layers (the noise); 0 = none
  m.dropout_layers = 3              # decoder layers with dropout (CD512-CD1024-CD1024)
  m.test_dropout = True             # keep dropout when sampling and evaluating (the paper)
  m.d_width = 64                    # channels of D's first layer (ndf)
  m.d_layers = 3                    # D's stride-2 layers: 3 = the 70x70 PatchGAN
  m.d_norm = "batch"                # batch | none
  m.conditional_d = True            # D sees concat(input, image); False: the image only (the "GAN" ablation)
  m.gan_loss = "non_saturating"     # non_saturating | hinge | lsgan
  m.l1_weight = 100.0               # lambda
  m.gan_weight = 1.0                # 0 = L1 only (no discriminator updates)
  m.ema_decay = 0.0                 # EMA of G's params; 0 = none
  c.optimizer = optim.optimizer_config(learning_rate=2e-4, b1=0.5)  # Adam (Section 3.3)
  c.sample.num = 16
  c.sample.split = "test"           # split whose first pairs `sample` shows
  c.sample.use_ema = False
  c.sample.input_dir = ""           # --mode=sample: also translate every image of this folder
  c.eval.metrics = ("eval_step",)   # L1 / PSNR / SSIM of outputs and of inputs against the targets
  c.eval.reference_split = "test"
  return c


def check_config(config: ConfigDict) -> int:
  """One-line errors for the family's keys; returns the generator's depth."""
  m, d = config.model, config.data
  try:
    depth = unet_depth(d.image_size, m.num_downsamples)
  except ValueError as e:
    raise UserError(f"{e} (data.image_size={d.image_size}, model.num_downsamples={m.num_downsamples}); set "
                    "--config.data.image_size to a power of two, or model.num_downsamples to a count it "
                    "divides by") from None
  for key, value, allowed in (("g_norm", m.g_norm, G_NORMS), ("d_norm", m.d_norm, D_NORMS),
                              ("gan_loss", m.gan_loss, GAN_LOSSES)):
    if value not in allowed:
      raise UserError(f"unknown model.{key} {value!r}; use one of {allowed}")
  if not 0.0 <= m.dropout < 1.0:
    raise UserError(f"model.dropout={m.dropout} must be in [0, 1) (0 = no dropout)")
  if m.dropout > 0 and m.dropout_layers > depth - 1:
    raise UserError(f"model.dropout_layers={m.dropout_layers} but the U-Net of depth {depth} has {depth - 1} "
                    f"decoder layers before its output; set --config.model.dropout_layers to at most {depth - 1}")
  if m.l1_weight < 0 or m.gan_weight < 0 or m.l1_weight == m.gan_weight == 0:
    raise UserError(f"model.l1_weight={m.l1_weight} and model.gan_weight={m.gan_weight} must be >= 0 and not "
                    "both 0")
  if m.gan_weight > 0 and patch_grid_size(d.image_size, m.d_layers) < 1:
    raise UserError(f"model.d_layers={m.d_layers} leaves no patch of a {d.image_size}x{d.image_size} image "
                    f"({d.image_size} / 2^{m.d_layers} - 2 < 1); lower --config.model.d_layers")
  if not 0.0 <= m.ema_decay < 1.0:
    raise UserError(f"model.ema_decay={m.ema_decay} must be in [0, 1) (0 = no EMA)")
  if config.sample.use_ema and m.ema_decay == 0:
    raise UserError("sample.use_ema=True but model.ema_decay=0 keeps no EMA; set --config.sample.use_ema=false or "
                    "--config.model.ema_decay=0.999")
  return depth


def adversarial_losses(kind: str, real_logits, fake_logits):
  """D's loss, halved as the paper does (hinge and non-saturating from vqgan_lib, which halves them too)."""
  if kind == "lsgan":
    return 0.5 * (jnp.mean((real_logits - 1.0) ** 2) + jnp.mean(fake_logits ** 2))
  return vqgan_lib.discriminator_loss("hinge" if kind == "hinge" else "vanilla", real_logits, fake_logits)


def generator_adversarial_loss(kind: str, fake_logits):
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))  # -log D(x, G(x))
  if kind == "lsgan":
    return jnp.mean((fake_logits - 1.0) ** 2)
  return vqgan_lib.generator_adversarial_loss(fake_logits)  # hinge: -D(x, G(x))


def as_target_channels(x_BxHxWxC, channels: int):
  """An input shown (and scored) as a target image: grey repeated to colour, extra channels dropped."""
  if x_BxHxWxC.shape[-1] == channels:
    return x_BxHxWxC
  if x_BxHxWxC.shape[-1] == 1:
    return jnp.broadcast_to(x_BxHxWxC, x_BxHxWxC.shape[:-1] + (channels,))
  return x_BxHxWxC[..., :channels]


@functools.lru_cache(maxsize=4)
def _display_pairs(data_json: str, split: str, num: int):
  """The first `num` pairs of `split` as model-range arrays (loaded once, on first sample)."""
  data_cfg = ConfigDict(json.loads(data_json))
  p = data_lib.load_split(data_cfg, split)
  arrays = paired.to_arrays(p, np.arange(min(num, len(p))))
  return arrays["input"], arrays["target"]


def make_family(config: ConfigDict) -> Family:
  depth = check_config(config)
  check_sample_label(config, 0)
  m, d = config.model, config.data
  example = data_lib.example_batch(config, 1)
  if "input" not in example or "target" not in example:
    raise UserError(f"family pix2pix translates input/target pairs, and data.name={d.name!r} gives "
                    f"{sorted(example)}; use data.name=paired (data.task) or paired_folder (data.path)")
  channels = example["target"].shape[-1]
  dtype = optim.compute_dtype(config.dtype)
  gan = m.gan_weight > 0
  test_dropout = m.test_dropout and m.dropout > 0

  def build(axis_name):
    g = UNetGenerator(channels, depth, m.g_width, m.g_norm, m.dropout, m.dropout_layers, axis_name=axis_name,
                      dtype=dtype)
    return g, PatchDiscriminator(m.d_width, m.d_layers, m.d_norm, axis_name=axis_name, dtype=dtype)

  generator, discriminator = build(DATA_AXIS)
  init_generator, init_discriminator = build(None)  # no collectives outside a mesh (init, host-side figures)
  tx, schedule = optim.make_optimizer(config.optimizer)

  def d_input(x, image):
    return jnp.concatenate([x, image], axis=-1) if m.conditional_d else image

  def init(rng, example_batch):
    x, y = example_batch["input"], example_batch["target"]
    g_key, d_key = jax.random.split(rng)
    g_vars = init_generator.init(g_key, x, train=False)
    d_vars = init_discriminator.init(d_key, d_input(x, y), train=False)
    return {"step": jnp.zeros((), jnp.int32),
            "generator": optim.init_train_state(g_vars["params"], tx, ema=m.ema_decay > 0,
                                                batch_stats=g_vars.get("batch_stats", {})),
            "discriminator": optim.init_train_state(d_vars["params"], tx, ema=False,
                                                    batch_stats=d_vars.get("batch_stats", {}))}

  def generate(params, stats, x, keys):
    """Training-mode outputs (global batch statistics) and the updated running statistics."""
    out, updates = generator.apply({"params": params, "batch_stats": stats}, x, keys, train=True,
                                   mutable=["batch_stats"])
    return out, updates.get("batch_stats", stats)

  def discriminate(stats, params, inputs):
    logits, updates = discriminator.apply({"params": params, "batch_stats": stats}, inputs, train=True,
                                          mutable=["batch_stats"])
    return logits, updates.get("batch_stats", stats)

  def discriminator_step(d_state, x, y, fake, step):
    def loss_fn(params):
      real_logits, stats = discriminate(d_state["batch_stats"], params, d_input(x, y))
      fake_logits, stats = discriminate(stats, params, d_input(x, fake))
      return adversarial_losses(m.gan_loss, real_logits, fake_logits), (stats, real_logits, fake_logits)

    (d_loss, (stats, real, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_state["params"])
    new_d, _ = optim.apply_gradients(d_state, grads, tx, step)
    new_d["batch_stats"] = stats
    return new_d, {"d_loss": d_loss, "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake_logits)}

  def train_step(state, batch, rng):
    x, y = batch["input"], batch["target"]
    keys = example_keys(rng, x.shape[0]) if m.dropout > 0 else None
    g_state, d_state, step = state["generator"], state["discriminator"], state["step"]
    # One forward pass of G; its pullback turns dL/dfake into G's gradients after D has moved.
    fake, g_pullback, g_stats = jax.vjp(lambda p: generate(p, g_state["batch_stats"], x, keys),
                                        g_state["params"], has_aux=True)
    metrics = {}
    if gan:
      d_state, metrics = discriminator_step(d_state, x, y, jax.lax.stop_gradient(fake), step)

    def g_loss_fn(out):
      l1 = jnp.mean(jnp.abs(out - y))
      aux = {"l1": l1}
      loss = m.l1_weight * l1
      if gan:
        logits, _ = discriminate(d_state["batch_stats"], d_state["params"], d_input(x, out))
        aux["g_adv"] = generator_adversarial_loss(m.gan_loss, logits)
        loss = loss + m.gan_weight * aux["g_adv"]
      return loss, aux

    (g_loss, aux), d_out = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    g_state, _ = optim.apply_gradients(g_state, g_pullback(d_out)[0], tx, step, m.ema_decay)
    g_state["batch_stats"] = g_stats
    metrics.update(aux, g_loss=g_loss, psnr=jnp.mean(psnr(jnp.clip(fake, -1, 1), y)), learning_rate=schedule(step))
    return {"step": step + 1, "generator": g_state, "discriminator": d_state}, jax.lax.pmean(metrics, DATA_AXIS)

  def translate(state, x, keys, model=generator):
    g_state = state["generator"]
    params = g_state["ema_params"] if config.sample.use_ema else g_state["params"]
    out = model.apply({"params": params, "batch_stats": g_state["batch_stats"]}, x,
                      keys if test_dropout else None, train=False)
    return jnp.clip(out, -1.0, 1.0)

  def eval_step(state, batch, rng):
    """Per-example L1 / PSNR / SSIM of outputs and of inputs vs targets, masked global means."""
    x, y = batch["input"], batch["target"]
    out = translate(state, x, example_keys(rng, x.shape[0]))
    shown = as_target_channels(x, channels)
    per_example = {}
    for prefix, image in (("", out), ("input_", shown)):
      per_example[f"{prefix}l1"] = jnp.mean(jnp.abs(image - y), axis=(1, 2, 3))
      per_example[f"{prefix}psnr"] = psnr(image, y)
      if min(x.shape[1:3]) >= 11:  # SSIM's 11x11 window must fit
        per_example[f"{prefix}ssim"] = ssim(image, y)
    return masked_mean(per_example, batch, x.shape[0])

  def evaluate_split(state, mesh, split):
    """eval_step over every pair of `split` once (the last batch padded and masked)."""
    start = time.time()
    p = data_lib.load_split(d, split)
    out = parallel.mean_over_rows(eval_step, state, mesh, len(p), lambda rows: paired.to_arrays(p, rows),
                                  config.eval.batch_size, jax.random.key(config.eval.seed))
    out.update(num_examples=len(p), seconds=round(time.time() - start, 2))
    return out

  def sample(state, rng, ids_B):
    shown_x, shown_y = _display_pairs(json.dumps(d.to_dict(), sort_keys=True), config.sample.split,
                                      config.sample.num)
    idx = ids_B % shown_x.shape[0]
    x, y = jnp.asarray(shown_x)[idx], jnp.asarray(shown_y)[idx]
    out = translate(state, x, keys_for_ids(rng, ids_B))
    return {"images": jnp.concatenate([as_target_channels(x, channels), out, y], axis=2)}

  def write_figures(state, directory, step):
    """Every image of sample.input_dir translated: <step>_input_dir.png (one input | output [| target] strip
    per row) and <step>_outputs/<name>.png."""
    folder = config.sample.input_dir
    p = paired.read_folder_pairs(folder, None, d.direction, d.image_size, example["input"].shape[-1],
                                 channels, allow_unpaired=True)
    host_state = jax.device_get(state)
    run = jax.jit(lambda s, x, k: translate(s, x, k, init_generator))
    outs = []
    for start in range(0, len(p), 64):
      ids = jnp.arange(start, min(start + 64, len(p)))
      arrays = paired.to_arrays(p, np.asarray(ids))
      outs.append(np.asarray(run(host_state, arrays["input"], keys_for_ids(jax.random.key(config.sample.seed), ids))))
    out = np.concatenate(outs)
    parts = [np.asarray(as_target_channels(data_lib.to_model_range(p.inputs), channels)), out]
    if p.targets.shape[-1]:
      parts.append(data_lib.to_model_range(p.targets))
    os.makedirs(os.path.join(directory, f"{step}_outputs"), exist_ok=True)
    grid_path = os.path.join(directory, f"{step}_input_dir.png")
    image_media.save_png(grid_path, image_media.image_grid(image_media.to_uint8(np.concatenate(parts, axis=2)), 1))
    paths = [grid_path]
    for name, image in zip(p.names, image_media.to_uint8(out)):
      paths.append(os.path.join(directory, f"{step}_outputs", os.path.splitext(name)[0] + ".png"))
      image_media.save_png(paths[-1], image)
    return paths

  return Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step, evaluate_split=evaluate_split,
                write_figures=write_figures if config.sample.input_dir else None, media=("images",),
                samples_are_generated=False)
