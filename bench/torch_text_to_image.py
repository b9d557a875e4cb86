"""The text-to-image training steps and the guided DDIM sampler in PyTorch eager: the references that
bench/text_to_image.py times ours against.

Two networks, built from the experiment config as ours are, layer for layer, parameter count equal to ours
(printed; bench/text_to_image.py asserts it):
  * a text-conditional diffusion U-Net (`latent_diffusion.py:cpu_pixel` by default, aigc_jax/families/diffusion.py
    with model.text_encoder=joint): bench/torch_unet.py's U-Net (Ho et al. 2020's, as aigc_jax/models/unet.py)
    with a cross-attention block after every self-attention block, as models/unet.py's CrossAttnBlock (Rombach et
    al., CVPR 2022, Section 3.3): GroupNorm, a query projection of the positions, key and value projections of the
    caption's token states, 64 channels a head, masked keys get zero weight, an output projection without bias,
    residual; the context comes from the joint text encoder trained with it, models/clip.py's TextTransformer
    (token embedding, learned positions, pre-LN causal blocks with biases and a GELU-tanh MLP, final LayerNorm,
    every token's state). The step is bench/torch_unet.py's (t ~ U{0..T-1}, eps, x_t, L_simple, clipping, Adam
    with warm-up, EMA) with diffusion.caption_dropout's null caption (all keys masked) drawn per example.
  * CLIP (`clip.py:cpu` by default, aigc_jax/families/clip.py; Radford et al., ICML 2021, Section 2.4): a ViT (stride-p
    patch conv without bias, class token, learned positions, ln_pre, pre-LN blocks, ln_post on the class token,
    projection without bias) and the same text transformer read at each caption's EOS and projected, unit-norm
    embeddings, the symmetric cross-entropy over the batch scaled by exp(logit_scale); AdamW with weight decay on
    tensors of rank >= 2 (ours: optim.matrices_only), warm-up + cosine rate, the log scale clipped to
    [0, log max_logit_scale] after every update.

`--part=sample` times the text model's sampler instead: images per second of `sample.steps` DDIM steps (eta 0,
Song et al. 2021, eq. 12, x0 clipped when diffusion.clip_denoised) with classifier-free guidance at
sample.guidance_scale (Ho & Salimans 2022: conditional and null-caption branches in one doubled batch per step,
the caption encoded once), under torch.no_grad(), as ours (diffusion_lib/samplers.py's ddim and guided);
`--warmup` denoising steps of the same shapes run first, untimed.

  pip install torch==2.13.0
  python bench/torch_text_to_image.py [--config=latent_diffusion.py:cpu_pixel] [--batch=64] [--steps=20]
  python bench/torch_text_to_image.py --config=clip.py:cpu [--batch=128]
  python bench/torch_text_to_image.py --part=sample [--config=latent_diffusion.py:cpu_pixel] [--batch=100]

`--threads` unset = torch's own default intra-op thread count. Prints one human line, then one JSON line (what
bench/text_to_image.py reads).
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
import torch_unet  # noqa: E402
from torch_dcgan import ROOT, experiment_config, time_and_report  # noqa: E402

sys.path.insert(0, ROOT)
from aigc_jax.data import captions  # noqa: E402  (numpy + ml_collections; no jax)


class Block(nn.Module):
  """models/transformer.py's Block with biases (CLIP's): pre-LN attention and GELU-tanh MLP, both residual."""

  def __init__(self, width, heads, causal):
    super().__init__()
    self.heads, self.causal = heads, causal
    self.ln_1, self.ln_2 = nn.LayerNorm(width, eps=1e-5), nn.LayerNorm(width, eps=1e-5)
    self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
    self.fc, self.fc_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

  def forward(self, x_BxTxD):
    b, t, d = x_BxTxD.shape
    q, k, v = (a.view(b, t, self.heads, d // self.heads).transpose(1, 2)
               for a in self.qkv(self.ln_1(x_BxTxD)).split(d, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal).transpose(1, 2).reshape(b, t, d)
    x_BxTxD = x_BxTxD + self.proj(y)
    return x_BxTxD + self.fc_proj(F.gelu(self.fc(self.ln_2(x_BxTxD)), approximate="tanh"))


class TextTransformer(nn.Module):
  """models/clip.py's TextTransformer: every token's final state, or (embed_dim > 0) the EOS state projected."""

  def __init__(self, vocab, length, width, layers, heads, embed_dim=0):
    super().__init__()
    self.wte = nn.Embedding(vocab, width)
    self.pos_embed = nn.Parameter(0.01 * torch.randn(length, width))
    self.blocks = nn.ModuleList(Block(width, heads, causal=True) for _ in range(layers))
    self.ln_final = nn.LayerNorm(width, eps=1e-5)
    self.proj = nn.Linear(width, embed_dim, bias=False) if embed_dim else None

  def forward(self, tokens_BxL, mask_BxL):
    x = self.wte(tokens_BxL) + self.pos_embed[:tokens_BxL.shape[1]][None]
    for blk in self.blocks:
      x = blk(x)
    x = self.ln_final(x)
    if self.proj is None:
      return x
    eos_B = (mask_BxL.long().sum(-1) - 1).clamp(0, tokens_BxL.shape[1] - 1)
    return self.proj(x[torch.arange(x.shape[0]), eos_B])


class VisionTransformer(nn.Module):

  def __init__(self, image_size, channels, patch, width, layers, heads, embed_dim):
    super().__init__()
    self.patch_embed = nn.Conv2d(channels, width, patch, stride=patch, bias=False)
    self.class_token = nn.Parameter(width ** -0.5 * torch.randn(width))
    self.pos_embed = nn.Parameter(width ** -0.5 * torch.randn((image_size // patch) ** 2 + 1, width))
    self.ln_pre, self.ln_post = nn.LayerNorm(width, eps=1e-5), nn.LayerNorm(width, eps=1e-5)
    self.blocks = nn.ModuleList(Block(width, heads, causal=False) for _ in range(layers))
    self.proj = nn.Linear(width, embed_dim, bias=False)

  def forward(self, images_BxCxHxW):
    x = self.patch_embed(images_BxCxHxW).flatten(2).transpose(1, 2)  # [B, P, D]
    x = torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], 1) + self.pos_embed[None]
    x = self.ln_pre(x)
    for blk in self.blocks:
      x = blk(x)
    return self.proj(self.ln_post(x[:, 0]))


class CLIP(nn.Module):

  def __init__(self, config):
    super().__init__()
    m, d = config.model, config.data
    self.visual = VisionTransformer(d.image_size, d.channels, m.patch_size, m.vision_width, m.vision_layers,
                                    m.vision_heads, m.embed_dim)
    self.text = TextTransformer(captions.vocab_size(d), captions.caption_length(d), m.text_width, m.text_layers,
                                m.text_heads, m.embed_dim)
    self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / m.init_temperature)))

  def forward(self, images, tokens, mask):
    return (F.normalize(self.visual(images), dim=-1), F.normalize(self.text(tokens, mask), dim=-1),
            self.logit_scale)


class CrossAttnBlock(nn.Module):
  """models/unet.py's CrossAttnBlock: the positions attend to the caption's unmasked tokens."""

  def __init__(self, c, context_dim):
    super().__init__()
    self.heads = max(1, c // 64)
    self.norm = torch_unet.group_norm(c)
    self.query, self.key, self.value = nn.Linear(c, c), nn.Linear(context_dim, c), nn.Linear(context_dim, c)
    self.out = nn.Linear(c, c, bias=False)

  def forward(self, x, ctx_BxLxD, mask_BxL):
    b, c, hgt, wid = x.shape
    n, k = self.heads, c // self.heads
    q = self.query(self.norm(x).flatten(2).transpose(1, 2)).view(b, hgt * wid, n, k).transpose(1, 2)  # [B,N,P,K]
    key, val = (f(ctx_BxLxD).view(b, -1, n, k).transpose(1, 2) for f in (self.key, self.value))      # [B,N,L,K]
    keep = mask_BxL[:, None, None, :]
    logits = (q @ key.transpose(2, 3) / math.sqrt(k)).masked_fill(~keep, -1e9)
    w = torch.softmax(logits, dim=-1) * keep  # every key masked: weight 0, not 1/L
    h = self.out((w @ val).transpose(1, 2).reshape(b, hgt * wid, c))
    return x + h.transpose(1, 2).reshape(b, c, hgt, wid)


class SelfCrossAttnBlock(torch_unet.AttnBlock):
  """Self-attention then cross-attention (models/unet.py's `attend`); an AttnBlock, so torch_unet.UNet's forward
  routes it as one, reading the context TextUNet set for this forward pass."""

  def __init__(self, c, context_dim):
    super().__init__(c)
    self.cross = CrossAttnBlock(c, context_dim)
    self.context = None

  def forward(self, x):
    return self.cross(super().forward(x), *self.context)


class TextUNet(nn.Module):
  """torch_unet.UNet with cross-attention after every self-attention, and the joint text encoder."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    self.unet = torch_unet.build(config)
    self.cross = []
    for layers in (self.unet.down, self.unet.mid, self.unet.up):
      for i, layer in enumerate(layers):
        if isinstance(layer, torch_unet.AttnBlock):
          layers[i] = SelfCrossAttnBlock(layer.q.in_features, m.text_width)
          self.cross.append(layers[i])
    self.text = TextTransformer(captions.vocab_size(config.data), captions.caption_length(config.data), m.text_width,
                                m.text_layers, m.text_heads)

  def denoise(self, x, t_B, ctx_BxLxD, mask_BxL):
    for block in self.cross:
      block.context = (ctx_BxLxD, mask_BxL)
    try:
      return self.unet(x, t_B)
    finally:
      for block in self.cross:
        block.context = None

  def forward(self, x, t_B, tokens_BxL, mask_BxL):
    return self.denoise(x, t_B, self.text(tokens_BxL, mask_BxL), mask_BxL)


def build(config):
  if config.family == "clip":
    return CLIP(config)
  if config.family == "diffusion" and config.model.arch == "unet" and config.model.text_encoder == "joint":
    if latent_enabled(config):
      raise SystemExit("torch_text_to_image.py twins the pixel-space model; the latent presets need the autoencoder")
    return TextUNet(config)
  raise SystemExit("torch_text_to_image.py twins clip.py and the joint-text diffusion presets (e.g. "
                   "latent_diffusion.py:cpu_pixel)")


def latent_enabled(config):
  return bool(config.model.get("autoencoder", ""))


def synthetic_batch(config, batch):
  """Images in [-1, 1], random byte-token captions of random lengths (a BOS-to-EOS prefix unmasked)."""
  d = config.data
  length = captions.caption_length(d)
  images = torch.rand(batch, d.channels, d.image_size, d.image_size) * 2 - 1
  tokens = torch.randint(0, captions.vocab_size(d), (batch, length))
  mask = torch.arange(length)[None] < torch.randint(3, length + 1, (batch, 1))
  return images, tokens, mask


def diffusion_step(config, model):
  """torch_unet.make_step on the text model, caption dropout drawn per example in the forward it is handed."""
  p = config.diffusion.caption_dropout
  batch = {}

  def forward(xt, t_B, _labels):
    mask = batch["mask"]
    if p:
      mask = mask & ~(torch.rand(mask.shape[0]) < p)[:, None]
    return model(xt, t_B, batch["tokens"], mask)

  step = torch_unet.make_step(config, model, torch.device("cpu"), torch.autocast("cpu", enabled=False), forward)

  def run(images, tokens, mask):
    batch.update(tokens=tokens, mask=mask)
    return step(images, None)[0]

  return run


def clip_lr(o, s):
  """optax.warmup_cosine_decay_schedule (optim.make_schedule's cosine) at step s."""
  if s < o.warmup_steps:
    return o.learning_rate * s / o.warmup_steps
  frac = min(1.0, (s - o.warmup_steps) / max(1, o.decay_steps - o.warmup_steps))
  return o.min_learning_rate + 0.5 * (o.learning_rate - o.min_learning_rate) * (1 + math.cos(math.pi * frac))


def clip_step(config, model):
  o = config.optimizer
  if o.name != "adamw" or o.schedule != "cosine":
    raise SystemExit("torch_text_to_image.py implements CLIP's AdamW with warm-up + cosine only")
  params = list(model.parameters())
  opt = torch.optim.AdamW([{"params": [q for q in params if q.dim() >= 2], "weight_decay": o.weight_decay},
                           {"params": [q for q in params if q.dim() < 2], "weight_decay": 0.0}],
                          lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  max_log_scale = math.log(config.model.max_logit_scale)
  state = {"step": 0}

  def step(images, tokens, mask):
    img, txt, log_scale = model(images, tokens, mask)
    logits = log_scale.exp() * img @ txt.T
    labels = torch.arange(logits.shape[0])
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    accuracy = (logits.argmax(-1) == labels).float().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(params, o.grad_clip_norm)
    for group in opt.param_groups:
      group["lr"] = clip_lr(o, state["step"])
    opt.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0.0, max_log_scale)
    state["step"] += 1
    return loss.detach(), accuracy

  return step


def ddim_sampler(config, model, steps=0):
  """sample(tokens, mask) -> images: samplers.ddim (eta 0) through samplers.guided, eps prediction, over
  sample.steps steps (`steps` > 0: that many instead, e.g. a short warm-up chain of the same shapes)."""
  dif, s = config.diffusion, config.sample
  if dif.schedule != "linear" or dif.prediction != "eps" or s.sampler != "ddim" or s.eta:
    raise SystemExit("torch_text_to_image.py samples the linear schedule, eps prediction, DDIM with eta 0 only")
  abar_all = np.cumprod(1.0 - np.linspace(dif.beta_start, dif.beta_end, dif.num_timesteps, dtype=np.float64))
  steps = steps or s.steps or dif.num_timesteps
  timesteps = np.arange(steps) * (dif.num_timesteps // steps)
  abar = abar_all[timesteps]
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  scale, d = s.guidance_scale, config.data

  @torch.no_grad()
  def sample(tokens_BxL, mask_BxL):
    b = tokens_BxL.shape[0]
    ctx = model.text(tokens_BxL, mask_BxL)  # the caption once, not at every step
    both_ctx = torch.cat([ctx, torch.zeros_like(ctx)])
    both_mask = torch.cat([mask_BxL, torch.zeros_like(mask_BxL)])
    x = torch.randn(b, d.channels, d.image_size, d.image_size)
    for idx in reversed(range(steps)):
      t_2B = torch.full((2 * b,), int(timesteps[idx]), dtype=torch.long)
      cond, uncond = model.denoise(torch.cat([x, x]), t_2B, both_ctx, both_mask).chunk(2)
      eps = uncond + scale * (cond - uncond)
      a, a_prev = float(abar[idx]), float(abar_prev[idx])
      x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
      if dif.clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
      x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x.clamp(-1.0, 1.0)

  return sample


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--part", choices=["train", "sample"], default="train")
  p.add_argument("--config", default="latent_diffusion.py:cpu_pixel", help="experiment file[:preset] to twin")
  p.add_argument("--batch", type=int, default=0, help="0 = the config's batch_size (sample: eval.batch_size)")
  p.add_argument("--steps", type=int, default=20, help="train: timed steps; sample: timed sampler calls")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (sample: one chain of this many)")
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default")
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  config = experiment_config(a.config)
  model = build(config)
  n_params = sum(q.numel() for q in model.parameters())
  impl, threads = f"PyTorch {torch.__version__} eager", torch.get_num_threads()
  if a.part == "sample":
    if config.family != "diffusion":
      raise SystemExit("--part=sample times the diffusion sampler; give a diffusion preset")
    batch = a.batch or config.eval.batch_size
    model.eval()
    _, tokens, mask = synthetic_batch(config, batch)
    sample = ddim_sampler(config, model)
    if a.warmup:  # a chain of `warmup` steps on the same shapes: torch eager needs no more than that
      ddim_sampler(config, model, a.warmup)(tokens, mask)
    start = time.perf_counter()
    for _ in range(a.steps):
      sample(tokens, mask)
    per_call = (time.perf_counter() - start) / a.steps
    rate = batch / per_call
    print(f"{impl} DDIM sampler ({a.config}, {config.sample.steps} steps, guidance {config.sample.guidance_scale:g}, "
          f"{n_params:,} params, batch {batch}, {threads} threads): {per_call:.3f} s per call, {rate:.2f} images/s")
    print(json.dumps({"impl": impl, "config": a.config, "batch": batch, "threads": threads, "params": n_params,
                      "s_per_call": per_call, "images_per_s": rate}))
    return
  batch = a.batch or config.batch_size
  model.train()
  images, tokens, mask = synthetic_batch(config, batch)
  step = clip_step(config, model) if config.family == "clip" else diffusion_step(config, model)
  time_and_report(step, (images, tokens, mask), a.warmup, a.steps, type(model).__name__, a.config, n_params, batch)


if __name__ == "__main__":
  main()
