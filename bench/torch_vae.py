"""Training-step throughput of the vae and vqvae families (jit) against the same step in PyTorch eager.

Both sides build the `cpu` presets' networks (experiments/vae.py:cpu, the Burda et al. MLP VAE on 28x28
dynamically binarised digits; experiments/vqvae.py:cpu, the conv VQ-VAE with an EMA codebook on 16x16 digits),
the same optimiser and the same batches. Ours runs as the CLI does: one XLA:CPU device per core, the batch
split over them (`parallel.default_host_devices` / `make_mesh`; `--one-device` for one); torch runs at its
default threads in a fresh process each round (in ours' process, XLA's idle workers slowed it 2.5x). Rounds
alternate between the two and the median round is reported, so load from other processes hits both alike.

  pip install torch==2.13.0
  python bench/torch_vae.py [--steps=50] [--rounds=3] [--one-device]   # prints a markdown table for bench/RESULTS.md
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import jax  # noqa: E402

from aigc_jax import data as data_lib  # noqa: E402
from aigc_jax import parallel, trainer  # noqa: E402
from aigc_jax.configs import load_experiment  # noqa: E402
from aigc_jax.families import get_family  # noqa: E402
from train_step import run_reference  # noqa: E402  (bench/, this script's folder)


def experiment_config(name, preset="cpu"):
  return load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"), preset)


class TorchVAE(nn.Module):
  """784 -> tanh 200 -> tanh 200 -> 2x50, and back: Burda et al.'s one-stochastic-layer VAE."""

  def __init__(self, dims, hidden=(200, 200), latent=50):
    super().__init__()
    self.latent = latent
    enc, width = [], dims
    for h in hidden:
      enc += [nn.Linear(width, h), nn.Tanh()]
      width = h
    self.encoder = nn.Sequential(*enc, nn.Linear(width, 2 * latent))
    dec, width = [], latent
    for h in hidden:
      dec += [nn.Linear(width, h), nn.Tanh()]
      width = h
    self.decoder = nn.Sequential(*dec, nn.Linear(width, dims))

  def loss(self, x_grey01):
    x = torch.bernoulli(x_grey01)  # dynamic binarisation
    mean, logvar = self.encoder(x).chunk(2, dim=1)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    logits = self.decoder(z)
    recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    kl = 0.5 * (torch.exp(logvar) + mean ** 2 - 1.0 - logvar).sum(1)
    return (kl - recon).mean()


class Residual(nn.Module):

  def __init__(self, channels, hidden):
    super().__init__()
    self.c1, self.c2 = nn.Conv2d(channels, hidden, 3, padding=1), nn.Conv2d(hidden, channels, 1)

  def forward(self, x):
    return x + self.c2(F.relu(self.c1(F.relu(x))))


class TorchVQVAE(nn.Module):
  """The vqvae cpu preset: one 4x4 stride-2 stage, residual blocks, K x D EMA codebook, beta commitment."""

  def __init__(self, channels, hidden, res_hidden, blocks, num_codes, code_dim, beta, decay, eps):
    super().__init__()
    self.encoder = nn.Sequential(nn.Conv2d(channels, hidden, 4, 2, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
                                 *[Residual(hidden, res_hidden) for _ in range(blocks)], nn.ReLU(),
                                 nn.Conv2d(hidden, code_dim, 1))
    self.decoder = nn.Sequential(nn.Conv2d(code_dim, hidden, 3, padding=1),
                                 *[Residual(hidden, res_hidden) for _ in range(blocks)], nn.ReLU(),
                                 nn.ConvTranspose2d(hidden, channels, 4, 2, 1))
    bound = 1.0 / np.sqrt(code_dim)
    codebook = torch.empty(num_codes, code_dim).uniform_(-np.sqrt(3) * bound, np.sqrt(3) * bound)
    self.register_buffer("embedding", codebook)
    self.register_buffer("cluster_size", torch.ones(num_codes))
    self.register_buffer("embed_sum", codebook.clone())
    self.beta, self.decay, self.eps = beta, decay, eps

  def loss(self, x):
    z = self.encoder(x).permute(0, 2, 3, 1)  # NHWC like the JAX side
    flat = z.reshape(-1, z.shape[-1])
    dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embedding.T + self.embedding.pow(2).sum(1)
    idx = dist.argmin(1)
    q = self.embedding[idx].view_as(z)
    recon = self.decoder((z + (q - z).detach()).permute(0, 3, 1, 2))
    loss = F.mse_loss(recon, x) + self.beta * F.mse_loss(z, q.detach())
    with torch.no_grad():  # EMA codebook (van den Oord et al. 2017, Appendix A)
      one_hot = F.one_hot(idx, self.embedding.shape[0]).float()
      self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
      self.embed_sum.mul_(self.decay).add_(one_hot.T @ flat, alpha=1 - self.decay)
      n = self.cluster_size.sum()
      smoothed = (self.cluster_size + self.eps) / (n + self.embedding.shape[0] * self.eps) * n
      self.embedding.copy_(self.embed_sum / smoothed[:, None])
    return loss


def jax_runner(config, batches):
  family = get_family(config)
  mesh = parallel.make_mesh(config)
  block = parallel.must_block_each_step()
  state = trainer.init_state(family, config, mesh)
  step_fn = parallel.data_parallel(family.train_step, mesh)
  device_batches = [parallel.shard_batch(b, mesh) for b in batches]
  holder = {"state": state, "i": 0}

  def run(steps):
    metrics = None
    for _ in range(steps):
      b = device_batches[holder["i"] % len(device_batches)]
      holder["state"], metrics = step_fn(holder["state"], b, trainer.step_rng(config, holder["i"]))
      holder["i"] += 1
      if block:  # as the trainer does with several XLA:CPU devices
        jax.block_until_ready(metrics)
    jax.block_until_ready(metrics)
    return float(next(iter(metrics.values())))

  return run


def torch_runner(model, lr, eps, batches, to_input):
  opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
  inputs = [to_input(b["image"]) for b in batches]
  holder = {"i": 0}

  def run(steps):
    loss = None
    for _ in range(steps):
      loss = model.loss(inputs[holder["i"] % len(inputs)])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      holder["i"] += 1
    return loss.item()

  return run


def load_case(name):
  """(config, 8 training batches, a builder of the torch runner) of one preset; the batches come from the
  preset's own deterministic iterator, so the torch subprocess rebuilds the same ones."""
  c = experiment_config(name)
  iterator = data_lib.make_train_iterator(c)
  batches = [next(iterator) for _ in range(8)]
  iterator.close()
  m = c.model
  if name == "vae":
    dims = c.data.image_size ** 2 * c.data.channels
    grey01 = lambda x: torch.from_numpy((x.reshape(len(x), -1) + 1.0) / 2.0)
    label = "vae (MLP 200-200-50, 28x28 binarised)"
    make_torch = lambda: torch_runner(TorchVAE(dims, tuple(m.hidden), m.latent_dim), c.optimizer.learning_rate,
                                      c.optimizer.eps, batches, grey01)
  else:
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    label = f"vqvae (conv {m.hidden}ch, K={m.num_codes} D={m.code_dim} EMA, 16x16)"
    make_torch = lambda: torch_runner(
        TorchVQVAE(c.data.channels, m.hidden, m.residual_hidden, m.num_residual_blocks, m.num_codes, m.code_dim,
                   m.beta, m.ema_decay, m.ema_epsilon), c.optimizer.learning_rate, 1e-8, batches, nchw)
  return c, batches, label, make_torch


def torch_round(name, steps, threads):
  """ms/step of the torch twin in a fresh process: XLA:CPU's idle worker threads (several devices) slowed
  torch's OpenMP threads 2.5x when both lived in one process."""
  cmd = [sys.executable, os.path.abspath(__file__), f"--torch-only={name}", f"--steps={steps}", f"--threads={threads}"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return run_reference(cmd, env)["ms"]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
  p.add_argument("--one-device", action="store_true", help="one XLA:CPU device instead of the CLI's one per core")
  p.add_argument("--torch-only", default="", help=argparse.SUPPRESS)  # the subprocess side: vae or vqvae
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  if a.torch_only:
    run = load_case(a.torch_only)[3]()
    run(2)  # allocator warm-up
    start = time.perf_counter()
    run(a.steps)
    print(json.dumps({"ms": 1000 * (time.perf_counter() - start) / a.steps, "threads": torch.get_num_threads()}))
    return
  if not a.one_device:
    parallel.default_host_devices()  # the CLI's rule; before JAX starts its backends
  rows = []
  for name in ("vae", "vqvae"):
    c, batches, label, _ = load_case(name)
    ours = jax_runner(c, batches)
    ours(2)  # compile
    times = {"jax": [], "torch": []}
    for _ in range(a.rounds):  # alternating rounds: ours here, torch in a fresh process
      start = time.perf_counter()
      ours(a.steps)
      times["jax"].append(1000 * (time.perf_counter() - start) / a.steps)
      times["torch"].append(torch_round(name, a.steps, a.threads))
    print(f"{name}: jax {[round(t, 2) for t in times['jax']]} torch {[round(t, 2) for t in times['torch']]} ms/step",
          file=sys.stderr, flush=True)
    rows.append((label, c.batch_size, {k: statistics.median(v) for k, v in times.items()}))

  print(f"{time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores | "
        f"jax {jax.__version__} ({jax.default_backend()}, {len(parallel.make_mesh(c).devices.flat)} devices) vs "
        f"torch {torch.__version__} eager ({a.threads or 'default'} threads, own process) | median of {a.rounds} "
        f"alternating rounds of {a.steps} steps\n")
  print("| step | batch | jax jit ms/step | torch eager ms/step | jax examples/s | torch examples/s | torch/jax |")
  print("|---|---|---|---|---|---|---|")
  for name, batch, ms in rows:
    print(f"| {name} | {batch} | {ms['jax']:.2f} | {ms['torch']:.2f} | {1000 * batch / ms['jax']:.0f} | "
          f"{1000 * batch / ms['torch']:.0f} | {ms['torch'] / ms['jax']:.2f}x |")


if __name__ == "__main__":
  main()
