"""PyTorch eager reference for bench/text.py: the same GPT, optimiser, schedule and batches as the `cpu` preset.

Written from the GPT-2 description (pre-LN, tied embeddings, GELU-tanh MLP, no biases, N(0, 0.02) init with
scaled residual projections), AdamW with nanoGPT's schedule, and the very same random windows as our data
pipeline (aigc_jax.data.text.TextBatchIterator), so the two runs see identical batches.

  pip install torch==2.13.0
  python bench/torch_gpt.py --data-path=input.txt --iters=2000     # prints one JSON line
  python bench/torch_gpt.py --data-path=input.txt --device=cuda --dtype=bfloat16 --compile --iters=200 \
      --batch=64 --block=256 --layers=6 --heads=6 --width=384 --eval-batches=0    # a GPU twin of shakespeare_char

On a GPU, bf16 is autocast (weights and optimiser state stay float32, as ours), `--compile` wraps the model in
torch.compile, and ms/iter is timed after `--warmup` iterations with the device synchronised.
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aigc_jax.data.text import TRAIN_FRACTION, TextBatchIterator, Tokenizer  # noqa: E402


class Block(nn.Module):

  def __init__(self, width, heads, layers, dropout=0.0, attention_dropout=0.0):
    super().__init__()
    self.heads, self.attention_dropout = heads, attention_dropout
    self.drop = nn.Dropout(dropout)  # nanoGPT's resid_dropout and MLP dropout
    self.ln_1, self.ln_2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
    self.qkv = nn.Linear(width, 3 * width, bias=False)
    self.proj = nn.Linear(width, width, bias=False)
    self.fc = nn.Linear(width, 4 * width, bias=False)
    self.fc_proj = nn.Linear(4 * width, width, bias=False)
    for lin in (self.qkv, self.fc):
      nn.init.normal_(lin.weight, std=0.02)
    for lin in (self.proj, self.fc_proj):
      nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * layers))

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
    q, k, v = (a.view(b, t, self.heads, d // self.heads).transpose(1, 2) for a in (q, k, v))
    p_drop = self.attention_dropout if self.training else 0.0  # nanoGPT's attn_dropout (flash dropout_p)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p_drop).transpose(1, 2).reshape(b, t, d)
    x = x + self.drop(self.proj(y))
    return x + self.drop(self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh")))


class GPT(nn.Module):

  def __init__(self, vocab, block, layers, heads, width, dropout=0.0, attention_dropout=0.0):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(block, width)
    nn.init.normal_(self.wte.weight, std=0.02)
    nn.init.normal_(self.wpe.weight, std=0.02)
    self.drop = nn.Dropout(dropout)
    self.blocks = nn.ModuleList(Block(width, heads, layers, dropout, attention_dropout) for _ in range(layers))
    self.ln_f = nn.LayerNorm(width, bias=False)

  def forward(self, idx, targets):
    x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
    for blk in self.blocks:
      x = blk(x)
    logits = self.ln_f(x) @ self.wte.weight.T  # tied
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(it, lr, min_lr, warmup, decay):
  if it < warmup:
    return lr * it / warmup
  ratio = min(1.0, (it - warmup) / max(1, decay - warmup))
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data-path", required=True)
  p.add_argument("--iters", type=int, default=2000)
  p.add_argument("--batch", type=int, default=12)
  p.add_argument("--block", type=int, default=64)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--eval-batches", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dropout", type=float, default=0.0, help="embedding, attention-output and MLP dropout")
  p.add_argument("--attention-dropout", type=float, default=0.0, help="attention-probability dropout")
  p.add_argument("--threads", type=int, default=0, help="0 = torch's default")
  p.add_argument("--device", default="cpu")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast compute dtype")
  p.add_argument("--compile", action="store_true", help="torch.compile the model")
  p.add_argument("--warmup", type=int, default=1, help="iterations left out of ms/iter (compilation)")
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(a.seed)
  with open(a.data_path, encoding="utf-8") as f:
    text = f.read()
  cut = int(len(text) * TRAIN_FRACTION)
  tok = Tokenizer("char", "".join(sorted(set(text))))
  train_it = TextBatchIterator(tok.encode(text[:cut]), a.block, a.batch, a.seed)
  device = torch.device(a.device)
  model = GPT(tok.vocab_size, a.block, a.layers, a.heads, a.width, a.dropout, a.attention_dropout).to(device)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-3, betas=(0.9, 0.99), fused=device.type == "cuda")
  forward = torch.compile(model) if a.compile else model
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  start = time.time()
  first_iter_s = None
  for it in range(a.iters):
    for g in opt.param_groups:
      g["lr"] = lr_at(it, 1e-3, 1e-4, 100, a.iters)
    w = torch.from_numpy(next(train_it)["tokens"]).long().to(device, non_blocking=True)
    with autocast:
      loss = forward(w[:, :-1], w[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if it == a.warmup - 1:
      sync()
      first_iter_s = time.time() - start
  sync()
  train_s = time.time() - start
  # Same validation windows as aigc_jax.families.autoregressive.evaluate_split (seed offset included).
  val_it = TextBatchIterator(tok.encode(text[cut:]), a.block, a.batch, 0 + 1_000_003)
  model.eval()
  with torch.no_grad():
    losses = []
    for _ in range(a.eval_batches):
      w = torch.from_numpy(next(val_it)["tokens"]).long().to(device)
      with autocast:
        losses.append(model(w[:, :-1], w[:, 1:]).item())
  timed = max(1, a.iters - a.warmup)
  impl = f"torch {torch.__version__} {'compile' if a.compile else 'eager'}"
  print(json.dumps({"impl": impl, "device": a.device, "dtype": a.dtype, "iters": a.iters,
                    "train_s": round(train_s, 1), "ms_per_iter": round(1000 * (train_s - first_iter_s) / timed, 2),
                    "tokens_per_s": round(a.batch * a.block * timed / (train_s - first_iter_s)),
                    "final_train_loss": round(loss.item(), 4),
                    "val_loss": round(float(np.mean(losses)), 4) if losses else None,
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
