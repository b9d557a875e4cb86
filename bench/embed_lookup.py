"""An embedding lookup and its gradient, three ways, on whatever device JAX finds (the GPT's token table).

On GPUs the gather's gradient is a scatter-add into few rows, each hit thousands of times per batch, which runs
on atomics: a compare-and-swap loop for bf16 (openxla/xla#26371) and, in jaxlib 0.10.2-0.11.0, for float32 too
(jax-ml/jax#38806). This times, per lookup + gradient:
  flax      nn.Embed(dtype=bf16): the table cast first, gather, bf16 scatter-add
  gather    models/layers.Embed(lookup="gather"): float32 gather, cast after, float32 scatter-add
  one_hot   models/layers.Embed(lookup="one_hot"): one_hot(ids) @ table, the gradient a matmul
            (what lookup="auto" picks off CPU for tables of at most ONE_HOT_MAX_ROWS rows)

  python bench/embed_lookup.py                       # shakespeare_char: 65 x 384 table, 64 x 256 ids
  python bench/embed_lookup.py --rows=50304 --width=768 --batch=16 --seq=1024   # a GPT-2 BPE table
"""
import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aigc_jax.models.layers import Embed  # noqa: E402


def time_grad(module, params, ids, cotangent, iters):
  loss = lambda p, ids, cot: jnp.sum(module.apply({"params": p}, ids).astype(jnp.float32) * cot)
  step = jax.jit(jax.grad(loss))  # ids and cotangent as arguments: as constants XLA would fold the scatter
  jax.block_until_ready(step(params, ids, cotangent))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(step(params, ids, cotangent))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times)), 1000 * float(np.min(times)), 1000 * float(np.max(times))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rows", type=int, default=65)
  p.add_argument("--width", type=int, default=384)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--iters", type=int, default=20)
  a = p.parse_args()
  ids = jax.random.randint(jax.random.key(0), (a.batch, a.seq), 0, a.rows)
  cotangent = jax.random.normal(jax.random.key(1), (a.batch, a.seq, a.width)) * 1e-3
  params = nn.Embed(a.rows, a.width).init(jax.random.key(2), ids)["params"]
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}: table {a.rows} x {a.width}, ids {a.batch} x "
        f"{a.seq}, lookup + gradient, ms median (min-max) of {a.iters}")
  for name, module in (("flax", nn.Embed(a.rows, a.width, dtype=jnp.bfloat16)),
                       ("gather", Embed(a.rows, a.width, dtype=jnp.bfloat16, lookup="gather")),
                       ("one_hot", Embed(a.rows, a.width, dtype=jnp.bfloat16, lookup="one_hot"))):
    med, lo, hi = time_grad(module, params, ids, cotangent, a.iters)
    print(f"  {name:<8} {med:9.3f} ({lo:.3f}-{hi:.3f})", flush=True)


if __name__ == "__main__":
  main()
