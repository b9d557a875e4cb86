"""The WaveNet training step of the wavenet family (aigc_jax/families/wavenet.py) in PyTorch eager: the reference
that bench/audio.py times ours against.

The network is aigc_jax/models/wavenet.py built from the experiment config (default `wavenet.py:cpu`: 2 stacks
of 10 layers, R = G = 32, S = 64, kernel 2, 10 classes, 0.5-second clips at 8 kHz), written the way a PyTorch
user would write it (van den Oord et al. 2016, Sections 2.1-2.5): the one-hot input convolution as one
embedding table per tap (the same function as a 256-channel causal conv with those taps, without the 256-wide
matmul, as ours), per layer a causal dilated `nn.Conv1d(R, 2G, K, dilation=d)` on the left-padded signal plus
a per-layer label embedding [classes, 2G] (global conditioning, Eq. 3), tanh x sigmoid gate, 1x1 skip
(G -> S) and residual (G -> R, none after the last layer) convolutions, and the head relu -> 1x1 (S -> S) ->
relu -> 1x1 (S -> 256). model.position_frames F > 0 adds the learned (label, position) code of ours (a table
[label rows, F, layers, 2G], normal(1) init) inside every layer's gate, linear between frame centres: weights
w_f(t) = max(0, 1 - |u - f|), u = clip((t + 0.5) F / T - 0.5, 0, F - 1), one [F, T] matmul per step. With
model.label_dropout p > 0 the label tables have num_classes + 1 rows (the last is the null class). Parameter
count equal to ours (printed). The step: mu-law encode the float clip to 256 bins, teacher forcing (input t =
bin of sample t - 1, silence before the first), each clip's label replaced by the null class with probability
p, mean cross-entropy over all positions, global-norm clipping, Adam (the config's rate, betas, eps) with
optimizer.schedule constant or cosine after the linear warm-up (optax's warmup_cosine_decay_schedule, as
bench/torch_text_to_image.py's clip_lr), EMA of the params when model.ema_decay > 0.

  pip install torch==2.13.0
  python bench/torch_wavenet.py [--config=wavenet.py:cpu] [--batch=8] [--steps=20] [--threads=N] \
      [--override model.position_frames=10 --override optimizer.schedule=cosine ...]

`--override KEY=VALUE` (repeatable) sets a config key as bench/audio.py's flag of that name does (the value
parsed to the key's current type); an unknown key is an error.

`--threads` unset = torch's own default intra-op thread count. Prints one human line, then one JSON line (what
bench/audio.py reads).
"""
import argparse
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_dcgan import ROOT, experiment_config, time_and_report  # noqa: E402
from torch_text_to_image import clip_lr  # noqa: E402  (optax.warmup_cosine_decay_schedule at step s)

MU_LAW_BINS = 256
START_INDEX = MU_LAW_BINS // 2  # mu-law bin of silence: the input before the first sample


def parse_override(config, item):
  """'model.stacks=1' -> ('model.stacks', 1): the value parsed to the key's current type, as
  bench/train_step.py's load_config does (bools from 1/true/yes, tuples from comma lists)."""
  key, sep, value = item.partition("=")
  if not sep:
    raise SystemExit(f"--override takes KEY=VALUE, got {item!r}")
  node = config
  try:
    for part in key.split("."):
      node = node[part]
  except (KeyError, AttributeError, TypeError):
    raise SystemExit(f"--override {item!r}: the config has no key {key!r}") from None
  if isinstance(node, bool):
    return key, value.lower() in ("1", "true", "yes")
  if isinstance(node, (tuple, list)):
    return key, type(node)(type(node[0])(v) for v in value.split(","))
  return key, type(node)(value)


def load_config(spec, overrides=()):
  """experiment_config(spec) with `--override KEY=VALUE` items set through aigc_jax.configs.override."""
  config = experiment_config(spec)
  sys.path.insert(0, ROOT)
  from aigc_jax.configs import override
  return override(config, dict(parse_override(config, item) for item in overrides))


def learning_rate(o, s):
  """optim.make_schedule at step s: linear warm-up over optimizer.warmup_steps, then constant or cosine."""
  schedule = o.get("schedule", "constant")
  if schedule == "cosine":
    return clip_lr(o, s)
  if schedule == "constant":
    return o.learning_rate * min(1.0, s / o.warmup_steps) if o.warmup_steps else o.learning_rate
  raise SystemExit(f"the torch twins implement optimizer.schedule constant or cosine, not {schedule!r}")


def check_optimizer(o, script):
  if o.name != "adam" or o.get("schedule", "constant") not in ("constant", "cosine"):
    raise SystemExit(f"{script} implements Adam with a constant or cosine rate after linear warm-up only "
                     f"(optimizer.name={o.name!r}, optimizer.schedule={o.get('schedule', 'constant')!r})")
  if o.get("schedule") == "cosine" and o.decay_steps <= o.warmup_steps:
    raise SystemExit(f"optimizer.decay_steps={o.decay_steps} must be past optimizer.warmup_steps={o.warmup_steps}")


def mu_law_encode(x):
  """Float audio in [-1, 1] -> int64 bins 0..255 (aigc_jax/families/wavenet_lib.py's encode)."""
  mu = MU_LAW_BINS - 1
  x = x.clamp(-1.0, 1.0)
  f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
  return torch.floor((f + 1.0) / 2.0 * mu + 0.5).clamp(0, mu).long()


class WaveNet(nn.Module):

  def __init__(self, residual_channels, dilation_channels, skip_channels, layers_per_stack, stacks, kernel_size,
               num_classes, position_frames=0, clip_samples=0):
    """`num_classes`: rows of the label tables (the config's num_classes, + 1 null row with label dropout)."""
    super().__init__()
    r, g, s, k = residual_channels, dilation_channels, skip_channels, kernel_size
    self.k = k
    self.dilations = [2 ** i for i in range(layers_per_stack)] * stacks
    self.input_taps = nn.ModuleList(nn.Embedding(MU_LAW_BINS, r) for _ in range(k))
    for e in self.input_taps:
      nn.init.normal_(e.weight, std=k ** -0.5)
    self.input_bias = nn.Parameter(torch.zeros(r))
    self.gates = nn.ModuleList(nn.Conv1d(r, 2 * g, k, dilation=d) for d in self.dilations)
    self.labels = nn.ModuleList(nn.Embedding(num_classes, 2 * g) for _ in self.dilations) if num_classes else None
    self.position_embed = None
    if position_frames:  # [label rows (1 when unconditional), F, layer, 2G], normal(1) as ours
      f, n = position_frames, len(self.dilations)
      self.position_embed = nn.Parameter(torch.randn(max(num_classes, 1), f, n, 2 * g))
      u = ((torch.arange(clip_samples, dtype=torch.float32) + 0.5) * (f / clip_samples) - 0.5).clamp(0.0, f - 1.0)
      weights_TxF = (1.0 - (u[:, None] - torch.arange(f, dtype=torch.float32)).abs()).clamp(min=0.0)
      self.register_buffer("position_weights_FxT", weights_TxF.T.contiguous(), persistent=False)
    self.skips = nn.ModuleList(nn.Conv1d(g, s, 1) for _ in self.dilations)
    self.residuals = nn.ModuleList(nn.Conv1d(g, r, 1) for _ in self.dilations[:-1])
    self.head_hidden, self.head_out = nn.Conv1d(s, s, 1), nn.Conv1d(s, MU_LAW_BINS, 1)

  def forward(self, x_BxT, labels_B=None):
    """Logits [B, 256, T]; position t depends on inputs t - receptive field + 1 .. t."""
    h = self.input_taps[0](x_BxT)
    for j in range(1, self.k):  # tap j reads the input j samples back (zeros before the clip)
      h = h + F.pad(self.input_taps[j](x_BxT), (0, 0, j, 0))[:, :x_BxT.shape[1]]
    h = (h + self.input_bias).transpose(1, 2)  # [B, R, T]
    position = None
    if self.position_embed is not None:  # the code at every position, every layer: [B or 1, layer, 2G, T]
      table = self.position_embed[labels_B] if self.labels is not None else self.position_embed[:1]
      position = torch.einsum("bfnc,ft->bnct", table, self.position_weights_FxT[:, :x_BxT.shape[1]])
    skip = 0.0
    for i, d in enumerate(self.dilations):
      z = self.gates[i](F.pad(h, ((self.k - 1) * d, 0)))  # causal: pad on the left only
      if self.labels is not None:
        z = z + self.labels[i](labels_B)[:, :, None]
      if position is not None:
        z = z + position[:, i]
      zf, zg = z.chunk(2, dim=1)
      out = torch.tanh(zf) * torch.sigmoid(zg)
      skip = skip + self.skips[i](out)
      if i < len(self.dilations) - 1:
        h = h + self.residuals[i](out)
    return self.head_out(F.relu(self.head_hidden(F.relu(skip))))


def clip_length(config):
  return round(config.data.sample_rate * config.data.clip_seconds)


def build(config):
  m = config.model
  if config.dtype != "float32":
    raise SystemExit(f"torch_wavenet.py runs float32 only, not dtype={config.dtype!r}")
  if m.output_distribution != "categorical":
    raise SystemExit(f"torch_wavenet.py implements the categorical output only, not {m.output_distribution!r}")
  if m.label_dropout and not m.num_classes:
    raise SystemExit("model.label_dropout > 0 needs model.num_classes > 0")
  rows = m.num_classes + (1 if m.label_dropout else 0)  # + the null class
  return WaveNet(m.residual_channels, m.dilation_channels, m.skip_channels, m.layers_per_stack, m.stacks,
                 m.kernel_size, rows, m.position_frames, clip_length(config))


def make_step(config, model):
  o, m = config.optimizer, config.model
  check_optimizer(o, "torch_wavenet.py")
  opt = torch.optim.Adam(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params] if m.ema_decay else None
  state = {"step": 0}

  def step(audio_BxT, labels_B):
    targets = mu_law_encode(audio_BxT)
    inputs = torch.cat([torch.full_like(targets[:, :1], START_INDEX), targets[:, :-1]], 1)
    if m.num_classes and m.label_dropout:  # the null class (index num_classes) in place of the label
      drop = torch.rand(labels_B.shape[0]) < m.label_dropout
      labels_B = torch.where(drop, torch.full_like(labels_B, m.num_classes), labels_B)
    loss = F.cross_entropy(model(inputs, labels_B if m.num_classes else None), targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(params, o.grad_clip_norm)
    s = state["step"]
    for group in opt.param_groups:
      group["lr"] = learning_rate(o, s)
    opt.step()
    if ema is not None:
      decay = min(m.ema_decay, (1.0 + s) / (10.0 + s))
      with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
    state["step"] = s + 1
    return loss.detach()

  return step


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="wavenet.py:cpu", help="experiment file[:preset] whose WaveNet to build")
  p.add_argument("--batch", type=int, default=0, help="0 = the config's batch_size")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config key (repeatable)")
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  config = load_config(a.config, a.override)
  if config.family != "wavenet":
    raise SystemExit(f"{a.config} is family {config.family!r}; torch_wavenet.py twins the wavenet family")
  batch = a.batch or config.batch_size
  length = clip_length(config)
  if not 0 <= config.model.position_frames <= length:
    raise SystemExit(f"model.position_frames={config.model.position_frames} must be in [0, {length}]")
  model = build(config)
  model.train()
  n_params = sum(p.numel() for p in model.parameters())
  audio = torch.rand(batch, length) * 2 - 1
  labels = torch.randint(0, max(config.model.num_classes, 1), (batch,))
  time_and_report(make_step(config, model), (audio, labels), a.warmup, a.steps, "WaveNet", a.config, n_params, batch,
                  f" x {length} samples", "clips")


if __name__ == "__main__":
  main()
