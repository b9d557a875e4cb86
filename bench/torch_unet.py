"""The DDPM training step of the diffusion family (aigc_jax/families/diffusion.py) in PyTorch eager: the
reference that bench/train_step.py times ours against.

The U-Net is aigc_jax/models/unet.py layer for layer, built from the experiment config (default
`ddpm.py:cpu`; `ddpm.py` is the paper's 35.7M-parameter CIFAR-10 U-Net): sinusoidal time embedding -> MLP
(4 ch), 3x3 input conv, per level `num_res_blocks` ResNet blocks (GroupNorm with min(32, C/4) groups, swish,
3x3 convs, time projection, dropout, 1x1 shortcut when the width changes) with self-attention at
`attn_resolutions`, stride-2 3x3 downsampling, the middle block, the decoder on concatenated skips with
nearest-neighbour upsampling + 3x3 conv, GroupNorm, swish, 3x3 output conv. One difference of alignment
only: the stride-2 conv pads (1, 1) here and (0, 1) in Flax's SAME; same shapes and FLOPs. The step: t ~ U{0..T-1},
eps ~ N(0, I), x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, L_simple = mean (eps_theta(x_t, t) - eps)^2,
global-norm clipping, Adam with linear warm-up, EMA of the params.

  pip install torch==2.13.0
  python bench/torch_unet.py [--config=ddpm.py:cpu] [--batch=64] [--steps=20] [--threads=2]
  python bench/torch_unet.py --config=ddpm.py --batch=128 --device=cuda --dtype=bfloat16 [--compile]   # GPU twin

On a GPU, bf16 is autocast (params, Adam and EMA stay float32, as ours) and `--compile` wraps the U-Net in
torch.compile; the timed steps end with a device synchronisation.

Prints one human line, then one JSON line (what bench/train_step.py --reference reads).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_dcgan import experiment_config  # noqa: E402


def group_norm(channels):
  return nn.GroupNorm(min(32, max(1, channels // 4)), channels, eps=1e-6)


def timestep_embedding(t_B, dim):
  half = dim // 2
  freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t_B.device) / (half - 1))
  args = t_B.float()[:, None] * freqs[None]
  return F.pad(torch.cat([torch.sin(args), torch.cos(args)], 1), (0, dim % 2))


class ResnetBlock(nn.Module):
  def __init__(self, in_ch, out_ch, temb_ch, dropout):
    super().__init__()
    self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
    self.temb = nn.Linear(temb_ch, out_ch)
    self.norm2, self.dropout = group_norm(out_ch), nn.Dropout(dropout)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
    self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

  def forward(self, x, temb):
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    return self.skip(x) + h


class AttnBlock(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.norm = group_norm(c)
    self.q, self.k, self.v, self.out = (nn.Linear(c, c) for _ in range(4))

  def forward(self, x):
    b, c, hgt, wid = x.shape
    h = self.norm(x).flatten(2).transpose(1, 2)  # [B, L, C]
    q, k, v = self.q(h), self.k(h), self.v(h)
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
    h = self.out(w @ v)
    return x + h.transpose(1, 2).reshape(b, c, hgt, wid)


class UNet(nn.Module):
  def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, dropout, num_classes, channels, image_size):
    super().__init__()
    self.ch, self.num_classes = ch, num_classes
    temb_ch = 4 * ch
    self.temb1, self.temb2 = nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)
    self.label_emb = nn.Embedding(num_classes + 1, temb_ch) if num_classes else None
    self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
    self.down, skip_ch, c, res = nn.ModuleList(), [ch], ch, image_size
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        self.down.append(ResnetBlock(c, ch * mult, temb_ch, dropout))
        c = ch * mult
        if res in attn_resolutions:
          self.down.append(AttnBlock(c))
        skip_ch.append(c)
      if level != len(ch_mult) - 1:
        self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        skip_ch.append(c)
        res //= 2
    self.mid = nn.ModuleList([ResnetBlock(c, c, temb_ch, dropout), AttnBlock(c), ResnetBlock(c, c, temb_ch, dropout)])
    self.up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(ch_mult))):
      for _ in range(num_res_blocks + 1):
        self.up.append(ResnetBlock(c + skip_ch.pop(), ch * mult, temb_ch, dropout))
        c = ch * mult
        if res in attn_resolutions:
          self.up.append(AttnBlock(c))
      if level != 0:
        self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.up.append(nn.Conv2d(c, c, 3, padding=1))
        res *= 2
    assert not skip_ch
    self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, channels, 3, padding=1)

  def forward(self, x, t_B, labels_B=None):
    temb = self.temb2(F.silu(self.temb1(timestep_embedding(t_B, self.ch))))
    if self.label_emb is not None:
      temb = temb + self.label_emb(labels_B)
    h = self.conv_in(x)
    skips = [h]
    for layer in self.down:
      if isinstance(layer, ResnetBlock):
        h = layer(h, temb)
        skips.append(h)
      elif isinstance(layer, AttnBlock):
        h = layer(h)
        skips[-1] = h
      else:  # downsampling conv
        h = layer(h)
        skips.append(h)
    h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
    for layer in self.up:
      h = layer(torch.cat([h, skips.pop()], 1), temb) if isinstance(layer, ResnetBlock) else layer(h)
    assert not skips
    return self.conv_out(F.silu(self.norm_out(h)))


def build(config):
  m, d = config.model, config.data
  return UNet(m.ch, tuple(m.ch_mult), m.num_res_blocks, tuple(m.attn_resolutions), m.dropout, m.num_classes,
              d.channels, d.image_size)


def make_step(config, model, device, autocast, forward=None):
  dif, o, m = config.diffusion, config.optimizer, config.model
  if dif.schedule != "linear" or dif.prediction != "eps" or dif.loss_weighting != "simple":
    raise SystemExit("torch_unet.py implements the linear schedule with eps prediction and L_simple only")
  betas = np.linspace(dif.beta_start, dif.beta_end, dif.num_timesteps, dtype=np.float64)
  abar = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32, device=device)
  forward = model if forward is None else forward  # a compiled module has no truth value
  sqrt_abar, sqrt_1m_abar = abar.sqrt(), (1.0 - abar).sqrt()
  opt = torch.optim.Adam(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.get("eps", 1e-8),
                         fused=device.type == "cuda")
  ema = [p.detach().clone() for p in model.parameters()]
  params = list(model.parameters())
  state = {"step": 0}

  def step(x0, labels):
    b = x0.shape[0]
    t = torch.randint(0, dif.num_timesteps, (b,), device=device)
    noise = torch.randn_like(x0)
    if m.num_classes and dif.label_dropout:
      labels = torch.where(torch.rand(b, device=device) < dif.label_dropout, torch.full_like(labels, m.num_classes),
                           labels)
    xt = sqrt_abar[t][:, None, None, None] * x0 + sqrt_1m_abar[t][:, None, None, None] * noise
    with autocast:
      loss = (forward(xt, t, labels if m.num_classes else None).float() - noise).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip_norm) if o.grad_clip_norm else None
    s = state["step"]
    for group in opt.param_groups:
      group["lr"] = o.learning_rate * min(1.0, s / o.warmup_steps) if o.warmup_steps else o.learning_rate
    opt.step()
    decay = min(m.ema_decay, (1.0 + s) / (10.0 + s))
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
    state["step"] = s + 1
    return loss.detach(), grad_norm

  return step


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="ddpm.py:cpu", help="experiment file[:preset] whose U-Net to build")
  p.add_argument("--batch", type=int, default=0, help="0 = the config's batch_size")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  p.add_argument("--device", default="cpu")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast compute dtype")
  p.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  device = torch.device(a.device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  torch.manual_seed(0)
  config = experiment_config(a.config)
  batch = a.batch or config.batch_size
  d = config.data
  model = build(config).to(device)
  model.train()
  n_params = sum(p.numel() for p in model.parameters())
  x0 = torch.rand(batch, d.channels, d.image_size, d.image_size, device=device) * 2 - 1
  labels = torch.randint(0, max(config.model.num_classes, 1), (batch,), device=device)
  step = make_step(config, model, device, autocast, torch.compile(model) if a.compile else None)
  for _ in range(a.warmup):
    step(x0, labels)
  sync()
  start = time.perf_counter()
  for _ in range(a.steps):
    loss, _ = step(x0, labels)
  float(loss)
  sync()
  secs = time.perf_counter() - start
  rate = a.steps / secs
  impl = f"PyTorch {torch.__version__} {'compile' if a.compile else 'eager'}" + (
      f" {a.dtype}" if a.dtype != "float32" else "")
  print(f"{impl} U-Net ({a.config}, {n_params / 1e6:.2f}M params, batch {batch}, on {a.device}, "
        f"{a.threads} threads): {rate:.3f} steps/s, {rate * batch:.1f} examples/s")
  print(json.dumps({"impl": impl, "config": a.config, "batch": batch, "device": a.device,
                    "threads": a.threads, "params": n_params, "steps_per_s": rate, "examples_per_s": rate * batch,
                    "ms_per_step": 1000 / rate}))


if __name__ == "__main__":
  main()
