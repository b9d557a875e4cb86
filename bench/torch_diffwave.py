"""The DiffWave training step of the diffusion family (aigc_jax/families/diffusion.py, model.arch=diffwave) in
PyTorch eager: the reference that bench/audio.py times ours against.

The network is aigc_jax/models/diffwave.py built from the experiment config (default `diffwave.py:cpu`: frames
of P = 8 samples, C = 64, 20 layers, frame dilations 1 .. 512 twice, 10 classes + the null class, 1-second clips
at 8 kHz), written as the paper's PyTorch code is (Kong et al., ICLR 2021, Section 3 and Figure 2), with ours'
patching (model.patch_size P: the clip [B, T] viewed as T/P frames of P samples, [B, P, T/P], so the input 1x1
conv takes P channels and the output one gives P, folded back to [B, T]): input 1x1 conv (P -> C) + ReLU; the 128-d
sinusoidal step encoding (bench/torch_unet.py's, the same as ours) -> Linear 512 -> swish -> Linear 512 ->
swish, shared; per residual layer a Linear (512 -> C) step projection added over time, a dilated
`nn.Conv1d(C, 2C, 3, padding=d, dilation=d)`, a Linear (128 -> 2C) of the shared 128-d label embedding added
after it, tanh x sigmoid, a 1x1 conv (C -> 2C) split into residual and skip, h = (h + residual) / sqrt(2);
skips summed / sqrt(N) -> 1x1 conv + ReLU -> zero-initialised 1x1 conv (C -> P). Parameter count equal to ours
(printed). The step (families/diffusion.py's train_step): x_0 = diffusion.data_scale x the clip, t ~ U{0..T-1},
eps ~ N(0, I), label replaced by the null class with probability diffusion.label_dropout, x_t = sqrt(abar_t)
x_0 + sqrt(1 - abar_t) eps on the linear (Ho et al.) or cosine (Nichol & Dhariwal eq. 17, offset 0.008, betas
clipped at 0.999) schedule, the unweighted mean squared error against the eps target or the v target
sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, global-norm clipping, Adam with linear warm-up then a constant or
cosine rate, EMA of the params with decay min(ema_decay, (1+t)/(10+t)). Other schedules, predictions, loss
weightings and optimisers are a SystemExit.

  pip install torch==2.13.0
  python bench/torch_diffwave.py [--config=diffwave.py:cpu] [--batch=8] [--steps=20] [--threads=N] \
      [--override KEY=VALUE ...]

`--override KEY=VALUE` (repeatable): a config key, as bench/torch_wavenet.py's (an unknown key is an error).

`--threads` unset = torch's own default intra-op thread count. Prints one human line, then one JSON line (what
bench/audio.py reads).
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_dcgan import time_and_report  # noqa: E402
from torch_unet import timestep_embedding  # noqa: E402
from torch_wavenet import check_optimizer, load_config, learning_rate  # noqa: E402

STEP_EMBED_DIM, STEP_HIDDEN_DIM, LABEL_EMBED_DIM = 128, 512, 128


class ResidualLayer(nn.Module):

  def __init__(self, c, dilation, conditional):
    super().__init__()
    self.step_projection = nn.Linear(STEP_HIDDEN_DIM, c)
    self.dilated_conv = nn.Conv1d(c, 2 * c, 3, padding=dilation, dilation=dilation)
    self.label_projection = nn.Linear(LABEL_EMBED_DIM, 2 * c) if conditional else None
    self.output_projection = nn.Conv1d(c, 2 * c, 1)
    for conv in (self.dilated_conv, self.output_projection):
      nn.init.kaiming_normal_(conv.weight)

  def forward(self, h, step, label):
    y = self.dilated_conv(h + self.step_projection(step)[:, :, None])
    if label is not None:
      y = y + self.label_projection(label)[:, :, None]
    gate, filt = y.chunk(2, dim=1)
    residual, skip = self.output_projection(torch.tanh(gate) * torch.sigmoid(filt)).chunk(2, dim=1)
    return (h + residual) / math.sqrt(2.0), skip


class DiffWave(nn.Module):

  def __init__(self, residual_channels, num_layers, dilation_cycle, num_classes, patch_size=1):
    super().__init__()
    c, self.p = residual_channels, patch_size
    self.input_projection = nn.Conv1d(patch_size, c, 1)
    self.step_fc1 = nn.Linear(STEP_EMBED_DIM, STEP_HIDDEN_DIM)
    self.step_fc2 = nn.Linear(STEP_HIDDEN_DIM, STEP_HIDDEN_DIM)
    self.label_embedding = nn.Embedding(num_classes + 1, LABEL_EMBED_DIM) if num_classes else None
    self.layers = nn.ModuleList(ResidualLayer(c, 2 ** (i % dilation_cycle), bool(num_classes))
                                for i in range(num_layers))
    self.skip_projection = nn.Conv1d(c, c, 1)
    self.output_projection = nn.Conv1d(c, patch_size, 1)
    nn.init.zeros_(self.output_projection.weight)

  def forward(self, x_BxT, t_B, labels_B=None):
    b, t = x_BxT.shape
    frames_BxPxF = x_BxT.view(b, t // self.p, self.p).transpose(1, 2)  # frame f = samples f P .. f P + P - 1
    h = F.relu(self.input_projection(frames_BxPxF))
    step = F.silu(self.step_fc2(F.silu(self.step_fc1(timestep_embedding(t_B, STEP_EMBED_DIM)))))
    label = self.label_embedding(labels_B) if self.label_embedding is not None else None
    skips = 0.0
    for layer in self.layers:
      h, skip = layer(h, step, label)
      skips = skips + skip
    out = F.relu(self.skip_projection(skips / math.sqrt(len(self.layers))))
    return self.output_projection(out).transpose(1, 2).reshape(b, t)  # [B, P, T/P] -> [B, T/P, P] -> [B, T]


def build(config):
  m = config.model
  if config.dtype != "float32":
    raise SystemExit(f"torch_diffwave.py runs float32 only, not dtype={config.dtype!r}")
  clip = round(config.data.sample_rate * config.data.clip_seconds)
  if m.patch_size < 1 or clip % m.patch_size:
    raise SystemExit(f"a clip of {clip} samples is not a multiple of model.patch_size={m.patch_size}")
  return DiffWave(m.residual_channels, m.residual_layers, m.dilation_cycle, m.num_classes, m.patch_size)


def betas_of(dif):
  """schedules.make_schedule's betas (float64): linear (Ho et al.) or cosine (Nichol & Dhariwal eq. 17)."""
  if dif.get("logsnr_shift", 0.0):
    raise SystemExit("torch_diffwave.py does not implement diffusion.logsnr_shift")
  if dif.schedule == "linear":
    return np.linspace(dif.beta_start, dif.beta_end, dif.num_timesteps, dtype=np.float64)
  if dif.schedule == "cosine":
    f = lambda t: np.cos((t / dif.num_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    t = np.arange(dif.num_timesteps, dtype=np.float64)
    return np.minimum(1.0 - f(t + 1) / f(t), 0.999)
  raise SystemExit(f"torch_diffwave.py implements the linear and cosine schedules, not {dif.schedule!r}")


def make_step(config, model):
  dif, o, m = config.diffusion, config.optimizer, config.model
  if dif.prediction not in ("eps", "v") or dif.loss_weighting != "simple":
    raise SystemExit(f"torch_diffwave.py implements eps and v prediction with the unweighted loss only, not "
                     f"prediction={dif.prediction!r}, loss_weighting={dif.loss_weighting!r}")
  check_optimizer(o, "torch_diffwave.py")
  abar = np.cumprod(1.0 - betas_of(dif))  # float64, cast to float32 per table as ours (schedules.take)
  sqrt_abar = torch.tensor(np.sqrt(abar), dtype=torch.float32)
  sqrt_1m_abar = torch.tensor(np.sqrt(1.0 - abar), dtype=torch.float32)
  scale = float(dif.data_scale)
  opt = torch.optim.Adam(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  state = {"step": 0}

  def step(x0_BxT, labels_B):
    x0_BxT = x0_BxT * scale  # the process runs on data_scale x the clip
    b = x0_BxT.shape[0]
    t = torch.randint(0, dif.num_timesteps, (b,))
    noise = torch.randn_like(x0_BxT)
    if m.num_classes and dif.label_dropout:
      labels_B = torch.where(torch.rand(b) < dif.label_dropout, torch.full_like(labels_B, m.num_classes), labels_B)
    a, s1 = sqrt_abar[t][:, None], sqrt_1m_abar[t][:, None]
    xt = a * x0_BxT + s1 * noise
    target = noise if dif.prediction == "eps" else a * noise - s1 * x0_BxT  # v (Salimans & Ho 2022)
    loss = (model(xt, t, labels_B if m.num_classes else None) - target).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(params, o.grad_clip_norm)
    s = state["step"]
    for group in opt.param_groups:
      group["lr"] = learning_rate(o, s)
    opt.step()
    decay = min(m.ema_decay, (1.0 + s) / (10.0 + s))
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
    state["step"] = s + 1
    return loss.detach()

  return step


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="diffwave.py:cpu", help="experiment file[:preset] whose DiffWave to build")
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
  if config.family != "diffusion" or config.model.arch != "diffwave":
    raise SystemExit(f"{a.config} has model.arch={config.model.arch!r}; bench/torch_unet.py twins the U-Net")
  batch = a.batch or config.batch_size
  length = round(config.data.sample_rate * config.data.clip_seconds)
  model = build(config)
  model.train()
  n_params = sum(p.numel() for p in model.parameters())
  x0 = torch.rand(batch, length) * 2 - 1
  labels = torch.randint(0, max(config.model.num_classes, 1), (batch,))
  time_and_report(make_step(config, model), (x0, labels), a.warmup, a.steps, "DiffWave", a.config, n_params, batch,
                  f" x {length} samples", "clips")


if __name__ == "__main__":
  main()
