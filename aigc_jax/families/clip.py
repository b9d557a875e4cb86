"""CLIP (Radford et al. 2021): an image encoder and a text encoder trained so that an image and its caption
have the largest cosine among all pairs of the global batch (aigc_jax/models/clip.py, families/clip_lib.py).

Data: a captioned image source (data/captions.py: captioned_digits, captioned_mnist, captioned_shapes,
coco_captions). State: {step, params, opt_state[, tokenizer_merges]}; with data.tokenizer=bpe,
`tokenizer_merges` (int32 [V - 259, 2], caption_tokenizer.merges_array) rides in the checkpoint so `load_clip`
rebuilds the exact tokenizer without reading data (a byte tokenizer has no merges, and orbax saves no empty
arrays). Training: the symmetric contrastive loss with negatives gathered across devices; the log scale is
clipped to [0, log model.max_logit_scale] after every update. AdamW with weight decay on matrices only.

Evaluation (`--mode=eval`, eval.metrics=('eval_step',)): `evaluate_split` embeds every image and caption of
eval.reference_split and reports zero-shot classification accuracy (class names in the templates of
eval.zero_shot_templates, default per source, clip_lib.ZERO_SHOT_TEMPLATES; sources with classes only) and
text->image / image->text recall@k (eval.recall_at). These live in the family rather than in an evaluator: they
need the family's two encoders and the captioned split, not generated samples, and no evaluator knows a
family's internals; `eval_step` reaches them through the family's evaluate_split as the text family's do.

Sampling: CLIP generates nothing. `sample` is a retrieval figure: grid row r is prompt r (sample.prompt, or
the first zero-shot template of each class in turn), its columns the test images nearest to it, best first
(from the first sample.gallery_size of eval.reference_split). `samples_are_generated=False`, so FID/IS/...
are refused. Other families and metrics use the encoders through `load_clip(workdir)`.
"""
import functools
import hashlib
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.data import captions, to_model_range
from aigc_jax.data.caption_tokenizer import CaptionTokenizer
from aigc_jax.errors import UserError
from aigc_jax.families import Family, clip_lib
from aigc_jax.models.clip import CLIP, INIT_TEMPERATURE
from aigc_jax.parallel import DATA_AXIS


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (CLIP's recipe at a small width);
  experiments/clip.py overrides it."""
  c = configs.base_config()
  c.family = "clip"
  c.data.name = "captioned_digits"   # a captioned source (data/captions.py)
  c.data.image_size = 8
  captions.add_caption_keys(c.data)
  c.data.caption_length = 32
  m = c.model
  m.embed_dim = 64                   # the shared embedding dimension
  m.patch_size = 2                   # ViT patches of patch_size^2 pixels; data.image_size must be a multiple
  m.vision_width = 64
  m.vision_layers = 2
  m.vision_heads = 4
  m.text_width = 64
  m.text_layers = 2
  m.text_heads = 4
  m.init_temperature = INIT_TEMPERATURE  # logits = <i, t> / temperature; learned as log(1 / temperature)
  m.max_logit_scale = 100.0          # the paper's clip on 1 / temperature
  m.attention_impl = ""              # "" = explicit einsums | xla | cudnn
  c.optimizer = optim.optimizer_config(name="adamw", learning_rate=5e-4, b1=0.9, b2=0.98, eps=1e-6,
                                       weight_decay=0.2, schedule="cosine", warmup_steps=100, decay_steps=1000)
  c.sample.num = 100                 # retrieval figure: ceil(sqrt(num)) columns per prompt row
  c.sample.use_ema = False           # no EMA in this family
  c.sample.prompt = ""               # "" = one row per class (first zero-shot template)
  c.sample.gallery_size = 1000       # test images the figure retrieves from; 0 = the whole split
  c.eval.metrics = ("eval_step",)    # zero-shot accuracy, retrieval recall@k (evaluate_split)
  c.eval.reference_split = "test"
  c.eval.zero_shot_templates = ()    # () = the source's (clip_lib.ZERO_SHOT_TEMPLATES); "{}" = the class name
  c.eval.recall_at = (1, 5, 10)
  return c


def check_config(config: ConfigDict):
  """One-line UserErrors for settings the family cannot build, before any data is read."""
  m, d = config.model, config.data
  captions.get_captioned_source(d.name)
  for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
    if m[width] % m[heads]:
      raise UserError(f"model.{width}={m[width]} is not divisible by model.{heads}={m[heads]}; change one")
  if d.image_size % m.patch_size:
    raise UserError(f"data.image_size={d.image_size} is not a multiple of model.patch_size={m.patch_size}; set "
                    "--config.model.patch_size to a divisor of it")
  if not (m.max_logit_scale >= 1.0 and 1.0 / m.max_logit_scale <= m.init_temperature <= 1.0):
    raise UserError(f"model.init_temperature={m.init_temperature} and model.max_logit_scale={m.max_logit_scale} "
                    "need 1 / max_logit_scale <= init_temperature <= 1 (the log scale is kept in [0, log max]); "
                    "e.g. 0.07 and 100")
  if config.sample.use_ema:
    raise UserError("sample.use_ema=True but the clip family keeps no EMA; set --config.sample.use_ema=false")
  if not config.eval.recall_at or any(not isinstance(k, int) or k < 1 for k in config.eval.recall_at):
    raise UserError(f"eval.recall_at must be positive integers, got {config.eval.recall_at!r}; e.g. \"(1, 5, 10)\"")
  if any("{}" not in t for t in config.eval.zero_shot_templates):
    raise UserError(f"every eval.zero_shot_templates entry needs a '{{}}' for the class name, got "
                    f"{tuple(config.eval.zero_shot_templates)!r}")
  if config.sample.gallery_size < 0:
    raise UserError(f"sample.gallery_size must be >= 0 (0 = the whole split), got {config.sample.gallery_size}")


def build_model(config: ConfigDict) -> CLIP:
  m = config.model
  return CLIP(vocab_size=captions.vocab_size(config.data), context_length=captions.caption_length(config.data),
              embed_dim=m.embed_dim, patch_size=m.patch_size, vision_width=m.vision_width,
              vision_layers=m.vision_layers, vision_heads=m.vision_heads, text_width=m.text_width,
              text_layers=m.text_layers, text_heads=m.text_heads, init_temperature=m.init_temperature,
              dtype=optim.compute_dtype(config.dtype), attention_impl=m.attention_impl or None)


def templates(config: ConfigDict) -> tuple:
  return tuple(config.eval.zero_shot_templates) or clip_lib.ZERO_SHOT_TEMPLATES.get(config.data.name,
                                                                                 clip_lib.DEFAULT_TEMPLATES)


def build(config: ConfigDict):
  """The family plus what tests, load_clip and other families reach for (model, embed functions)."""
  check_config(config)
  model = build_model(config)
  tx, schedule = optim.make_optimizer(config.optimizer)
  max_scale, length = float(config.model.max_logit_scale), captions.caption_length(config.data)
  merges_shape = (captions.vocab_size(config.data) - 259, 2)
  if config.sample.prompt:  # a typed prompt that cannot fit fails now (byte: known without data)
    if captions.caption_value(config.data, "tokenizer") == "byte":
      captions.encode_prompts(CaptionTokenizer("byte"), config.sample.prompt, length)

  def embed_images(params, images_BxHxWxC):
    return model.apply({"params": params}, images_BxHxWxC, method=model.encode_image)

  def embed_text(params, tokens_BxL, mask_BxL):
    return model.apply({"params": params}, tokens_BxL, mask_BxL, method=model.encode_text)

  def init(rng, example_batch, merges_Mx2=None):
    b = example_batch
    params = model.init(rng, b["image"], b["caption_tokens"], b["caption_mask"])["params"]
    if merges_Mx2 is None:  # the configured tokenizer (bpe: trained on, or read for, the training captions)
      merges_Mx2 = captions.make_tokenizer(config.data).merges_array()
    state = {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=False)}
    if merges_shape[0]:  # bpe only: a byte tokenizer has no merges (and orbax saves no empty arrays)
      state["tokenizer_merges"] = jnp.asarray(merges_Mx2, jnp.int32).reshape(merges_shape)
    return state

  def loss_fn(params, batch):
    img_bxE, txt_bxE, log_scale = model.apply({"params": params}, batch["image"], batch["caption_tokens"],
                                              batch["caption_mask"])
    loss, accuracy = clip_lib.gathered_loss(img_bxE, txt_bxE, jnp.exp(log_scale))
    return loss, accuracy

  def train_step(state, batch, rng):
    del rng  # deterministic: no dropout, no augmentation beyond the data source's
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, state["step"])
    params = dict(new_state["params"])
    params["logit_scale"] = clip_lib.clip_logit_scale(params["logit_scale"], max_scale)
    new_state["params"], new_state["step"] = params, state["step"] + 1
    metrics = {"loss": loss, "batch_accuracy": accuracy, "logit_scale": jnp.exp(params["logit_scale"]),
               "grad_norm": grad_norm, "learning_rate": schedule(state["step"])}
    return new_state, metrics

  @functools.lru_cache(maxsize=1)
  def gallery():
    """(images in [-1, 1], labels, prompt tokens, prompt mask) of the retrieval figure, read when first traced."""
    split = captions.load_captioned(config.data, config.eval.reference_split)
    size = config.sample.gallery_size or len(split)
    if config.sample.prompt:
      prompts = [config.sample.prompt]
    elif split.class_names:
      prompts = [templates(config)[0].format(name) for name in split.class_names]
    else:
      prompts = [caps[0] for caps in split.captions[:int(math.ceil(math.sqrt(config.sample.num)))]]
    tokens, mask = captions.encode_prompts(split.tokenizer, prompts, length)
    labels = split.labels if split.labels is not None else np.full(len(split), -1, np.int32)
    return to_model_range(split.images[:size]), labels[:size].astype(np.int32), tokens, mask

  def sample(state, rng, ids_B):
    """Row r of the grid (ids r * columns ..) shows the gallery images nearest prompt r mod P, best first."""
    del rng
    images_GxHxWxC, labels_G, tokens_PxL, mask_PxL = gallery()
    img_GxE = embed_images(state["params"], jnp.asarray(images_GxHxWxC))
    txt_PxE = embed_text(state["params"], jnp.asarray(tokens_PxL), jnp.asarray(mask_PxL))
    order_PxG = jnp.argsort(-(txt_PxE @ img_GxE.T), axis=1, stable=True)
    columns = int(math.ceil(math.sqrt(config.sample.num)))
    pick_B = order_PxG[(ids_B // columns) % len(tokens_PxL), (ids_B % columns) % len(labels_G)]
    return {"images": jnp.asarray(images_GxHxWxC)[pick_B], "labels": jnp.asarray(labels_G)[pick_B]}

  family = Family(init=init, train_step=train_step, sample=sample, media=("images",), samples_are_generated=False,
                  evaluate_split=lambda state, mesh, split: evaluate_split(config, embed_images, embed_text, state,
                                                                           mesh, split))
  return types.SimpleNamespace(family=family, config=config, model=model, embed_images=embed_images,
                               embed_text=embed_text, init=init, loss_fn=loss_fn, merges_shape=merges_shape)


def make_family(config: ConfigDict) -> Family:
  return build(config).family


def evaluate_split(config: ConfigDict, embed_images, embed_text, state, mesh, split: str = "test") -> dict:
  """Zero-shot accuracy (sources with classes) and recall@k both ways over every image and caption of split."""
  split_set = captions.load_captioned(config.data, split)
  tokenizer = split_set.tokenizer
  saved = state.get("tokenizer_merges")
  if saved is not None and not np.array_equal(np.asarray(jax.device_get(saved)), tokenizer.merges_array()):
    raise UserError(f"the checkpoint's caption tokenizer differs from the one data.tokenizer="
                    f"{captions.caption_value(config.data, 'tokenizer')} gives now; set data.tokenizer_path to the "
                    "tokenizer file the run trained with")
  prompts_emb, classes = None, split_set.class_names if split_set.labels is not None else ()
  length, bs = captions.caption_length(config.data), config.eval.batch_size
  text_fn = lambda s, _, b: embed_text(s["params"], b["tokens"], b["mask"])  # noqa: E731
  if classes:
    prompts = [t.format(name) for name in classes for t in templates(config)]
    tokens, mask = captions.encode_prompts(tokenizer, prompts, length)  # too long: one-line error, no JAX yet
    prompts_emb = clip_lib.embed_rows(text_fn, state, mesh, {"tokens": tokens, "mask": mask}, bs)
  img_NxE = clip_lib.embed_rows(lambda s, _, b: embed_images(s["params"], b["image"]), state, mesh,
                                {"image": to_model_range(split_set.images)}, bs)
  txt_CxE = clip_lib.embed_rows(text_fn, state, mesh, {"tokens": split_set.tokens_CxL,
                                                       "mask": split_set.tokens_CxL != captions.PAD_ID}, bs)
  out = {}
  if classes:
    class_KxE = clip_lib.class_embeddings(prompts_emb, len(classes))
    out.update(clip_lib.zero_shot(img_NxE, class_KxE, np.asarray(split_set.labels)))
  text_ids_C, owner_C = clip_lib.text_ids(split_set.captions)
  out.update(clip_lib.retrieval_recalls(img_NxE, txt_CxE, text_ids_C, owner_C, tuple(config.eval.recall_at)))
  out["logit_scale"] = float(np.exp(jax.device_get(state["params"]["logit_scale"])))
  out["num_examples"] = len(split_set)
  return out


def load_clip(workdir_or_checkpoint: str, step: int = None, key: str = "the CLIP workdir"):
  """A trained CLIP run's encoders, restored with the run's own saved config (no data read):
  namespace(embed_images(images_NxHxWxC in [-1, 1]) -> unit [N, E], embed_text(tokens, mask) -> unit [N, E],
  embed_prompts([str]) -> unit [N, E], tokenizer, caption_length, image_shape, logit_scale, step, checkpoint,
  fingerprint (sha256 of the params, 16 hex), params, config, model). Arrays in and out are numpy; the
  `jax_embed_*` members are the jittable pure functions of (params, ...). `workdir_or_checkpoint` is a run's
  workdir (newest step, or `step`) or one of its checkpoints/<step> directories; `key` names the config key
  that pointed here in errors."""
  path = os.path.abspath(workdir_or_checkpoint)
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
    path, step = os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  return _load(path, step, key)


@functools.lru_cache(maxsize=4)
def _load(workdir: str, step, key: str):
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"{key}={workdir} has no checkpoints/; train CLIP there first (experiments/clip.py), or point "
                    f"{key} at a CLIP run's workdir")
  ckpt = Checkpointer(workdir, create=False)
  try:
    steps = ckpt.all_steps()
    step = max(steps) if step is None and steps else step
    if step is None or step not in steps:
      raise UserError(f"{key}={workdir} has no checkpoint of step {step} (it has {sorted(steps)})")
    config = ConfigDict(ckpt.saved_config(step))
    if config.get("family") != "clip":
      raise UserError(f"{key}={workdir} is a {config.get('family')!r} run, not a CLIP run; point it at a run of "
                      "experiments/clip.py")
    built = build(config)
    length, d = captions.caption_length(config.data), config.data
    example = {"image": np.zeros((2, d.image_size, d.image_size, d.channels), np.float32),
               "caption_tokens": np.zeros((2, length), np.int32), "caption_mask": np.zeros((2, length), bool)}
    abstract = jax.eval_shape(functools.partial(built.init, merges_Mx2=np.zeros(built.merges_shape, np.int32)),
                              jax.random.key(0), example)
    state, _, _ = ckpt.restore(step, abstract, Mesh(np.asarray(jax.devices()[:1]), (DATA_AXIS,)))
  finally:
    ckpt.close()
  state = jax.device_get(state)
  params = state["params"]
  tokenizer = CaptionTokenizer.from_merges_array(state.get("tokenizer_merges", np.zeros((0, 2), np.int32)))
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  jit_images, jit_text = jax.jit(built.embed_images), jax.jit(built.embed_text)

  def embed_images(images_NxHxWxC):
    return np.asarray(jit_images(params, jnp.asarray(images_NxHxWxC, jnp.float32)))

  def embed_text(tokens_NxL, mask_NxL):
    return np.asarray(jit_text(params, jnp.asarray(tokens_NxL, jnp.int32), jnp.asarray(mask_NxL, bool)))

  def embed_prompts(prompts):
    return embed_text(*captions.encode_prompts(tokenizer, prompts, length))

  return types.SimpleNamespace(
      embed_images=embed_images, embed_text=embed_text, embed_prompts=embed_prompts, tokenizer=tokenizer,
      caption_length=length, image_shape=(d.image_size, d.image_size, d.channels),
      logit_scale=float(np.exp(params["logit_scale"])), step=int(step), checkpoint=ckpt.path(step),
      fingerprint=digest.hexdigest()[:16], params=params, config=config, model=built.model,
      jax_embed_images=built.embed_images, jax_embed_text=built.embed_text)
