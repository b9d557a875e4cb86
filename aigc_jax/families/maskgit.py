"""MaskGIT (Chang, Zhang, Jiang, Liu & Freeman, CVPR 2022): a bidirectional transformer over VQ code grids,
trained to fill in masked codes and sampled by scheduled parallel decoding.

Training (Section 3.1): per example draw r ~ U(0, 1) and replace ceil(gamma(r) N) of the N codes, chosen
uniformly at random, by [MASK]; the loss is the cross-entropy (optionally label-smoothed; the released config
uses 0.1) on the masked positions only, averaged over every masked token of the global batch. gamma is the
mask schedule (`maskgit.mask_schedule`: cosine, the paper's choice, cos(pi r / 2); linear 1 - r; square
1 - r^2). With `model.num_classes` the class is a token in front of the grid and is replaced by the null class
with probability `maskgit.label_dropout`, which trains the unconditional branch `sample.guidance_scale` needs.

Decoding (Section 3.2), one compiled `lax.scan` of `sample.steps` = T iterations, from an all-[MASK] grid: at
step t predict every masked code, sample it (`sample.temperature`; 0 = argmax), score it by the model's
probability of the sampled code, perturbed by Gumbel noise scaled by `sample.choice_temperature` * (1 -
(t+1)/T) (the released decoder's annealing), and put back [MASK] on the n = floor(gamma((t+1)/T) N) least
confident new codes (at least one fewer than before; none after the last step). Codes fixed earlier are never
masked again.

`eval_step` is NOT a likelihood (a masked model has none in closed form): it is the masked-token cross-entropy
and accuracy at the fixed mask ratio `maskgit.eval_mask_ratio`, on the real labels.

Data: code grids written by `--mode=encode` of a VQ model (data source `codes`: `data.vq_workdir`,
`data.num_codes`, `data.grid_size`); samples are decoded to images by the VQ checkpoint that wrote the codes
(`vq_decoder`, restored when the family is built).
"""
import dataclasses
import math
import types

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label, code_prior_lib, sample_labels
from aigc_jax.models.maskgit import MaskGITTransformer
from aigc_jax.parallel import DATA_AXIS, example_keys, keys_for_ids, masked_mean

SCHEDULES = {
    "cosine": lambda r: jnp.cos(0.5 * jnp.pi * r),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r ** 2,
}


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (the released ImageNet class-conditional
  setting at a small width); experiments/maskgit.py overrides it."""
  c = configs.base_config()
  c.family = "maskgit"
  c.data.name = "codes"            # code grids of a VQ run's --mode=encode (data/sources/codes.py)
  c.data.vq_workdir = ""           # that VQ run's workdir (its decoder turns samples into images)
  c.data.num_codes = 1024          # the VQ codebook size (the codes source checks it against the file)
  c.data.grid_size = 16            # side of the square code grid, N = grid_size^2 tokens
  m = c.model
  m.num_classes = 0                # > 0: class-conditional (plus a null class)
  m.num_layers = 4
  m.num_heads = 4
  m.width = 256                    # divisible by num_heads
  m.dropout = 0.1
  m.attention_impl = ""            # "" = explicit einsums | xla | cudnn
  c.maskgit = ConfigDict()
  c.maskgit.mask_schedule = "cosine"   # cosine | linear | square: gamma, in training and decoding
  c.maskgit.label_smoothing = 0.1
  c.maskgit.label_dropout = 0.0        # probability of training a labelled example as the null class
  c.maskgit.eval_mask_ratio = 0.5      # eval_step masks round(ratio * N) codes per grid

  c.optimizer = optim.optimizer_config(name="adamw", learning_rate=1e-4, b1=0.9, b2=0.96, weight_decay=4.5e-2,
                                       warmup_steps=5000)
  c.sample.num = 64
  c.sample.use_ema = False         # no EMA in this family
  c.sample.steps = 8               # T, decoding iterations
  c.sample.temperature = 1.0       # of the code sampling; 0 = argmax
  c.sample.choice_temperature = 4.5  # Gumbel noise on the confidences, annealed linearly to 0
  c.sample.guidance_scale = 1.0    # uncond + scale (cond - uncond); != 1 needs label_dropout training
  c.eval.metrics = ("eval_step",)  # masked-token cross-entropy / accuracy; fid etc. on the decoded images
  c.eval.reference_split = "test"
  return c


def check_config(config: ConfigDict):
  m, g, s = config.model, config.maskgit, config.sample
  if g.mask_schedule not in SCHEDULES:
    raise UserError(f"unknown maskgit.mask_schedule {g.mask_schedule!r}; use one of {sorted(SCHEDULES)}")
  if m.width % m.num_heads:
    raise UserError(f"model.width {m.width} is not divisible by model.num_heads {m.num_heads}; change one")
  for key, value, low, high in (("maskgit.label_smoothing", g.label_smoothing, 0.0, 1.0),
                                ("maskgit.label_dropout", g.label_dropout, 0.0, 1.0)):
    if not low <= value < high:
      raise UserError(f"{key} must be in [{low}, {high}), got {value}; set --config.{key}")
  if not 0.0 < g.eval_mask_ratio <= 1.0:
    raise UserError(f"maskgit.eval_mask_ratio must be in (0, 1], got {g.eval_mask_ratio}; set "
                    "--config.maskgit.eval_mask_ratio")
  if g.label_dropout and not m.num_classes:
    raise UserError("maskgit.label_dropout > 0 needs a class-conditional model; set model.num_classes or "
                    "maskgit.label_dropout=0")
  if s.steps < 1:
    raise UserError(f"sample.steps must be >= 1 decoding iterations, got {s.steps}; set --config.sample.steps")
  if s.temperature < 0 or s.choice_temperature < 0:
    raise UserError(f"sample.temperature and sample.choice_temperature must be >= 0, got {s.temperature}, "
                    f"{s.choice_temperature}")
  if s.guidance_scale != 1.0 and not (m.num_classes and g.label_dropout):
    raise UserError(f"sample.guidance_scale={s.guidance_scale} needs a class-conditional model trained with "
                    "maskgit.label_dropout > 0 (the null class); set --config.sample.guidance_scale=1.0")
  if s.use_ema:
    raise UserError("sample.use_ema=True, but maskgit keeps no EMA weights; set --config.sample.use_ema=false")
  check_sample_label(config, m.num_classes)


def vq_decoder(config: ConfigDict):
  """(decode, info) of the VQ run that wrote the codes: decode(codes_Bxhxw) -> images in [-1, 1] (jittable),
  info with num_codes and grid. The one place the family reaches the VQ model; read on first sample."""
  if not config.data.vq_workdir:
    raise UserError("maskgit samples are decoded by the VQ run that wrote the codes; set --config.data.vq_workdir")
  code_set = code_prior_lib.check_prior(config)  # the decoder of the very checkpoint that wrote the codes
  return code_prior_lib.load_vq_decoder(config.data.vq_workdir, code_set.step)


def train_mask(key, n: int, gamma):
  """Bool [N]: ceil(gamma(r) N) positions masked, r ~ U(0, 1), the positions uniformly at random."""
  r_key, perm_key = jax.random.split(key)
  count = jnp.clip(jnp.ceil(gamma(jax.random.uniform(r_key)) * n), 1, n).astype(jnp.int32)
  rank_N = jnp.argsort(jax.random.uniform(perm_key, (n,)))  # a random permutation's ranks
  return jnp.zeros((n,), bool).at[rank_N].set(jnp.arange(n) < count)


def fixed_mask(key, n: int, ratio: float):
  """Bool [N]: exactly max(1, round(ratio N)) random positions masked (eval)."""
  count = max(1, int(round(ratio * n)))
  rank_N = jnp.argsort(jax.random.uniform(key, (n,)))
  return jnp.zeros((n,), bool).at[rank_N].set(jnp.arange(n) < count)


def masked_counts(gamma, n: int, steps: int):
  """Codes still masked after each decoding step if the model filled every one it was asked to:
  floor(gamma((t+1)/T) N), at least one fewer than before, 0 after the last step (the tests' reference)."""
  out, masked = [], n
  for t in range(steps):
    target = 0 if t == steps - 1 else int(math.floor(float(gamma((t + 1) / steps)) * n))
    masked = max(min(target, masked - 1), 0)
    out.append(masked)
  return out


def make_decode(model: MaskGITTransformer, gamma, s: ConfigDict, seq_len: int):
  """decode(params, labels_B, keys_B) -> (codes [B, N], tokens after each step [B, T, N]), one lax.scan."""
  steps, mask_id, null = s.steps, model.mask_id, model.null_label

  def logits_fn(params, tokens_BxN, labels_B):
    if s.guidance_scale == 1.0:
      return model.apply({"params": params}, tokens_BxN, labels_B)
    b = tokens_BxN.shape[0]
    both = model.apply({"params": params}, jnp.concatenate([tokens_BxN, tokens_BxN]),
                       jnp.concatenate([labels_B, jnp.full_like(labels_B, null)]))
    cond, uncond = both[:b], both[b:]
    return uncond + s.guidance_scale * (cond - uncond)

  def decode(params, labels_B, keys_B):
    b = labels_B.shape[0]

    def step(tokens_BxN, t):
      logits_BxNxK = logits_fn(params, tokens_BxN, labels_B)
      step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t)))(keys_B)
      if s.temperature == 0:
        sampled_BxN = jnp.argmax(logits_BxNxK, axis=-1)
      else:
        sampled_BxN = jax.vmap(jax.random.categorical)(step_keys[:, 0], logits_BxNxK / s.temperature)
      masked_BxN = tokens_BxN == mask_id
      sampled_BxN = jnp.where(masked_BxN, sampled_BxN, tokens_BxN).astype(jnp.int32)
      logp_BxN = jnp.take_along_axis(jax.nn.log_softmax(logits_BxNxK), sampled_BxN[..., None], -1)[..., 0]
      ratio = (t + 1) / steps
      gumbel_BxN = jax.vmap(lambda k: jax.random.gumbel(k, (seq_len,)))(step_keys[:, 1])
      confidence_BxN = logp_BxN + s.choice_temperature * (1.0 - ratio) * gumbel_BxN
      # Fixed codes rank last, so only new ones can go back to [MASK].
      confidence_BxN = jnp.where(masked_BxN, confidence_BxN, jnp.inf)
      target = jnp.where(t == steps - 1, 0, jnp.floor(gamma(ratio) * seq_len)).astype(jnp.int32)
      n_masked_Bx1 = jnp.sum(masked_BxN, axis=1, keepdims=True)
      keep_masked_Bx1 = jnp.clip(jnp.minimum(target, n_masked_Bx1 - 1), 0)
      rank_BxN = jnp.argsort(jnp.argsort(confidence_BxN, axis=1), axis=1)
      tokens_BxN = jnp.where(rank_BxN < keep_masked_Bx1, mask_id, sampled_BxN)
      return tokens_BxN, tokens_BxN

    start_BxN = jnp.full((b, seq_len), mask_id, jnp.int32)
    codes_BxN, history_TxBxN = jax.lax.scan(step, start_BxN, jnp.arange(steps))
    return codes_BxN, jnp.swapaxes(history_TxBxN, 0, 1)

  return decode


def build_model(config: ConfigDict) -> MaskGITTransformer:
  m, d = config.model, config.data
  return MaskGITTransformer(num_codes=d.num_codes, num_classes=m.num_classes, seq_len=d.grid_size ** 2,
                            num_layers=m.num_layers, num_heads=m.num_heads, width=m.width, dropout=m.dropout,
                            dtype=optim.compute_dtype(config.dtype), attention_impl=m.attention_impl or None)


def build(config: ConfigDict, vq=None):
  """The family and its pieces (model, decode_tokens, ...). `vq` = (decode, info) stands in for
  `vq_decoder(config)` (tests). Otherwise, with data.vq_workdir set, the code file is checked and the VQ run
  restored now, not while `sample` is traced (orbax cannot restore inside a trace)."""
  check_config(config)
  m, g, s = config.model, config.maskgit, config.sample
  gamma = SCHEDULES[g.mask_schedule]
  tx, schedule = optim.make_optimizer(config.optimizer)
  model = build_model(config)
  grid = (config.data.grid_size,) * 2
  seq_len = grid[0] * grid[1]
  decode_tokens = make_decode(model, gamma, s, seq_len)
  if vq is None and config.data.vq_workdir:
    vq = vq_decoder(config)

  def vq_decode(codes_Bxhxw):
    decode_fn, info = vq if vq is not None else vq_decoder(config)  # no workdir: vq_decoder's error
    if int(info["num_codes"]) != config.data.num_codes or tuple(info["grid"]) != grid:
      raise UserError(f"the VQ run decodes {tuple(info['grid'])} grids of {info['num_codes']} codes, but this "
                      f"model is {grid} of {config.data.num_codes}; set --config.data.vq_workdir to the VQ run "
                      "that wrote its codes")
    return decode_fn(codes_Bxhxw)

  def logits(params, tokens_BxN, labels_B, dropout_keys_B=None):
    if dropout_keys_B is None or not m.dropout:
      return model.apply({"params": params}, tokens_BxN, labels_B)
    # Per-example dropout masks: the same whatever the device count.
    one = lambda x_N, y, k: model.apply({"params": params}, x_N[None], y[None], train=True, rngs={"dropout": k})[0]
    return jax.vmap(one)(tokens_BxN, labels_B, dropout_keys_B)

  def labels_of(batch, b):
    return batch["label"].astype(jnp.int32) if m.num_classes else jnp.full((b,), m.num_classes, jnp.int32)

  def init(rng, example_batch):
    codes = example_batch["codes"]
    b = codes.shape[0]
    params = model.init(rng, codes.reshape(b, -1), labels_of(example_batch, b))["params"]
    return {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=False)}

  def token_losses(logits_BxNxK, targets_BxN, smoothing):
    k = logits_BxNxK.shape[-1]
    soft_BxNxK = optax.smooth_labels(jax.nn.one_hot(targets_BxN, k), smoothing) if smoothing else \
        jax.nn.one_hot(targets_BxN, k)
    return optax.softmax_cross_entropy(logits_BxNxK, soft_BxNxK)

  def train_step(state, batch, rng):
    codes = batch["codes"]
    b = codes.shape[0]
    targets_BxN = codes.reshape(b, -1).astype(jnp.int32)
    n = targets_BxN.shape[1]
    keys = example_keys(rng, b)
    purpose = lambda p: jax.vmap(lambda k: jax.random.fold_in(k, p))(keys)
    mask_BxN = jax.vmap(lambda k: train_mask(k, n, gamma))(purpose(0))
    inputs_BxN = jnp.where(mask_BxN, model.mask_id, targets_BxN)
    labels_B = labels_of(batch, b)
    if g.label_dropout:
      drop_B = jax.vmap(lambda k: jax.random.bernoulli(k, g.label_dropout))(purpose(1))
      labels_B = jnp.where(drop_B, m.num_classes, labels_B)
    weights_BxN = mask_BxN.astype(jnp.float32)
    # Mean over every masked token of the global batch; scaled so the pmean of the gradients is its gradient.
    devices = jax.lax.psum(1, DATA_AXIS)
    total = jax.lax.psum(jnp.sum(weights_BxN), DATA_AXIS)

    def loss_fn(params):
      logits_BxNxK = logits(params, inputs_BxN, labels_B, purpose(2))
      loss = jnp.sum(token_losses(logits_BxNxK, targets_BxN, g.label_smoothing) * weights_BxN) * devices / total
      return loss, logits_BxNxK

    (loss, logits_BxNxK), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, state["step"])
    new_state["step"] = state["step"] + 1
    correct = jnp.sum((jnp.argmax(logits_BxNxK, -1) == targets_BxN) * weights_BxN) * devices / total
    metrics = {"loss": loss, "masked_accuracy": correct, "mask_ratio": jnp.mean(weights_BxN),
               "grad_norm": grad_norm, "learning_rate": schedule(state["step"])}
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def eval_step(state, batch, rng):
    """Masked-token cross-entropy (nats, no smoothing) and accuracy at maskgit.eval_mask_ratio, per grid."""
    codes = batch["codes"]
    b = codes.shape[0]
    targets_BxN = codes.reshape(b, -1).astype(jnp.int32)
    mask_BxN = jax.vmap(lambda k: fixed_mask(k, targets_BxN.shape[1], g.eval_mask_ratio))(example_keys(rng, b))
    inputs_BxN = jnp.where(mask_BxN, model.mask_id, targets_BxN)
    logits_BxNxK = logits(state["params"], inputs_BxN, labels_of(batch, b))
    weights_BxN = mask_BxN.astype(jnp.float32)
    count_B = jnp.sum(weights_BxN, axis=1)
    per_example = {
        "masked_token_nll": jnp.sum(token_losses(logits_BxNxK, targets_BxN, 0.0) * weights_BxN, 1) / count_B,
        "masked_token_accuracy": jnp.sum((jnp.argmax(logits_BxNxK, -1) == targets_BxN) * weights_BxN, 1) / count_B}
    return masked_mean(per_example, batch, b)

  grid_columns = math.ceil(math.sqrt(s.num))  # media.images.image_grid's default layout

  def sample(state, rng, ids_B):
    labels_B = sample_labels(config, ids_B, m.num_classes, grid_columns) if m.num_classes else \
        jnp.full(ids_B.shape, m.num_classes, jnp.int32)
    codes_BxN, _ = decode_tokens(state["params"], labels_B, keys_for_ids(rng, ids_B))
    images = vq_decode(codes_BxN.reshape(-1, *grid))
    out = {"images": jnp.clip(images, -1.0, 1.0)}
    if m.num_classes:
      out["labels"] = labels_B
    return out

  family = Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step, media=("images",))
  family = dataclasses.replace(family, evaluate_split=lambda state, mesh, split: evaluate_split(
      config, family, state, mesh, split))
  return types.SimpleNamespace(family=family, model=model, decode_tokens=decode_tokens, logits=logits, gamma=gamma,
                               tx=tx)


def make_family(config: ConfigDict) -> Family:
  return build(config).family


def evaluate_split(config: ConfigDict, family: Family, state, mesh, split: str) -> dict:
  """eval_step over the code grids of `split` (the codes source's file), with their labels."""
  from aigc_jax import data as data_lib
  code_set = data_lib.load_split(config.data, split)
  return code_prior_lib.evaluate_codes(family.eval_step, state, mesh, code_set.codes, code_set.labels,
                                       config.batch_size, config.eval.seed)
