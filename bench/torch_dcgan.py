"""The DCGAN training step of the gan family (aigc_jax/families/gan.py), in PyTorch eager: the reference
that bench/train_step.py times ours against.

Same networks as aigc_jax/models/dcgan.py built from the experiment config (default `dcgan.py:cpu`: batch 64,
32x32x1, z 100, G/D width 32): G = Linear(z, 4*4*8w, no bias) -> BN -> ReLU -> [ConvTranspose 4x4 stride 2
pad 1, no bias -> BN -> ReLU] x 2 -> ConvTranspose (bias) -> tanh; D = Conv 4x4/2 (bias) -> LReLU(0.2) ->
[Conv 4x4/2 no bias -> BN -> LReLU] x 2 -> Linear -> logit. N(0, 0.02) weights, BN eps 1e-5. The same step:
`d_steps` discriminator updates (each: a fresh fake batch from G in train mode without grad, D on real and on
fake, softplus losses, Adam), then one generator update on a fresh fake batch with the non-saturating loss,
Adam(2e-4, b1 0.5), then the EMA of G's params with decay min(0.999, (1+t)/(10+t)).

  pip install torch==2.13.0
  python bench/torch_dcgan.py [--config=dcgan.py:cpu] [--batch=64] [--steps=100] [--threads=2]

Prints one human line, then one JSON line (what bench/train_step.py --reference reads).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment_config(spec):
  """'dcgan.py:cpu' -> the locked ConfigDict (aigc_jax.configs imports ml_collections, not jax)."""
  sys.path.insert(0, ROOT)
  from aigc_jax.configs import load_experiment
  name, _, preset = spec.partition(":")
  return load_experiment(name if os.path.sep in name else os.path.join(ROOT, "experiments", name), preset)


def time_and_report(step, inputs, warmup, steps, label, config_spec, n_params, batch, shape="", unit="examples"):
  """The twins' shared tail: `warmup` untimed then `steps` timed calls of step(*inputs) (the last loss read back
  so queued work is counted), one human line and one JSON line (what bench/train_step.py parses)."""
  for _ in range(warmup):
    step(*inputs)
  start = time.perf_counter()
  for _ in range(steps):
    out = step(*inputs)
  float(out[0] if isinstance(out, tuple) else out)
  rate = steps / (time.perf_counter() - start)
  impl, threads = f"PyTorch {torch.__version__} eager", torch.get_num_threads()
  print(f"{impl} {label} ({config_spec}, {n_params:,} params, batch {batch}{shape}, {threads} threads): "
        f"{rate:.3f} steps/s, {rate * batch:.1f} {unit}/s")
  print(json.dumps({"impl": impl, "config": config_spec, "batch": batch, "threads": threads, "params": n_params,
                    "steps_per_s": rate, "examples_per_s": rate * batch, "ms_per_step": 1000 / rate}))


def dcgan_init(module):
  if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
    nn.init.normal_(module.weight, 0.0, 0.02)
    if module.bias is not None:
      nn.init.zeros_(module.bias)
  elif isinstance(module, nn.BatchNorm2d):
    nn.init.normal_(module.weight, 1.0, 0.02)
    nn.init.zeros_(module.bias)


class Generator(nn.Module):
  def __init__(self, image_size, channels, width, z_dim):
    super().__init__()
    steps = (image_size // 4).bit_length() - 1
    self.top = width * 2 ** (steps - 1)
    self.project = nn.Linear(z_dim, 4 * 4 * self.top, bias=False)
    self.bn0 = nn.BatchNorm2d(self.top, eps=1e-5, momentum=0.1)
    layers, c = [], self.top
    for _ in range(steps - 1):
      layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2, eps=1e-5), nn.ReLU()]
      c //= 2
    layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=True), nn.Tanh()]
    self.body = nn.Sequential(*layers)

  def forward(self, z):
    # Flax reshapes the projection to NHWC (4, 4, top); the same features reshaped NCHW is a relabelling of
    # the Linear's outputs, the same function class.
    x = self.project(z).view(-1, self.top, 4, 4)
    return self.body(F.relu(self.bn0(x)))


class Discriminator(nn.Module):
  def __init__(self, image_size, channels, width):
    super().__init__()
    steps = (image_size // 4).bit_length() - 1
    layers, c = [], channels
    for i in range(steps):
      out = width * 2 ** i
      layers.append(nn.Conv2d(c, out, 4, 2, 1, bias=i == 0))
      if i > 0:
        layers.append(nn.BatchNorm2d(out, eps=1e-5))
      layers.append(nn.LeakyReLU(0.2))
      c = out
    self.body = nn.Sequential(*layers)
    self.logit = nn.Linear(c * 4 * 4, 1)

  def forward(self, x):
    return self.logit(self.body(x).flatten(1))[:, 0]


def make_step(config, batch):
  m, d, o = config.model, config.data, config.optimizer
  g = Generator(d.image_size, d.channels, m.g_width, m.z_dim)
  disc = Discriminator(d.image_size, d.channels, m.d_width)
  g.apply(dcgan_init)
  disc.apply(dcgan_init)
  g_lr = o.get("g_learning_rate") or o.learning_rate
  d_lr = o.get("d_learning_rate") or o.learning_rate
  g_opt = torch.optim.Adam(g.parameters(), lr=g_lr, betas=(o.b1, o.b2), eps=o.get("eps", 1e-8))
  d_opt = torch.optim.Adam(disc.parameters(), lr=d_lr, betas=(o.b1, o.b2), eps=o.get("eps", 1e-8))
  ema = [p.detach().clone() for p in g.parameters()]
  state = {"step": 0}

  def step(real_BxKxCxHxW):
    for j in range(m.d_steps):
      with torch.no_grad():
        fake = g(torch.randn(batch, m.z_dim))
      d_opt.zero_grad(set_to_none=True)
      d_loss = F.softplus(-disc(real_BxKxCxHxW[:, j])).mean() + F.softplus(disc(fake)).mean()
      d_loss.backward()
      d_opt.step()
    g_opt.zero_grad(set_to_none=True)
    g_loss = F.softplus(-disc(g(torch.randn(batch, m.z_dim)))).mean()
    g_loss.backward()
    g_opt.step()
    t = state["step"]
    decay = min(m.ema_decay, (1.0 + t) / (10.0 + t))
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in g.parameters()], 1.0 - decay)
    state["step"] = t + 1
    return d_loss.detach(), g_loss.detach()

  return step


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="dcgan.py:cpu", help="experiment file[:preset] whose sizes to build")
  p.add_argument("--batch", type=int, default=0, help="0 = the config's batch_size")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  config = experiment_config(a.config)
  if config.model.arch != "dcgan":
    raise SystemExit(f"{a.config} is not a DCGAN config (model.arch={config.model.arch!r})")
  batch = a.batch or config.batch_size
  d = config.data
  real = torch.rand(batch, config.model.d_steps, d.channels, d.image_size, d.image_size) * 2 - 1
  step = make_step(config, batch)
  for _ in range(a.warmup):
    step(real)
  start = time.perf_counter()
  for _ in range(a.steps):
    losses = step(real)
  float(losses[1])
  secs = time.perf_counter() - start
  rate = a.steps / secs
  print(f"torch {torch.__version__} eager DCGAN ({a.config}, batch {batch}, {a.threads} threads): "
        f"{rate:.2f} steps/s, {rate * batch:.1f} examples/s")
  print(json.dumps({"impl": f"PyTorch {torch.__version__} eager", "config": a.config, "batch": batch,
                    "threads": a.threads, "steps_per_s": rate, "examples_per_s": rate * batch,
                    "ms_per_step": 1000 / rate}))


if __name__ == "__main__":
  main()
