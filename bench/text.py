"""Text benchmarks for the autoregressive family; each prints a table (numbers go to bench/RESULTS.md).

  python bench/text.py train --set data.name=text_file --set data.path=input.txt   # ours vs PyTorch eager, cpu preset
  python bench/text.py generate [--workdir=runs/gpt_cpu]                           # KV cache vs recomputation
  python bench/text.py val --workdir=runs/gpt_cpu --set data.path=...              # validation loss of a checkpoint
  python bench/text.py gpu --preset=shakespeare_char [--torch-data=input.txt] [--profile-steps=5]
                                                # tokens/s and MFU on a GPU (and the top device ops)
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.profiler import ProfileData
from jax.sharding import Mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from aigc_jax import data as data_lib  # noqa: E402
from aigc_jax import parallel, trainer  # noqa: E402
from aigc_jax.configs import load_experiment  # noqa: E402
from aigc_jax.families import autoregressive as ar  # noqa: E402

# Dense bf16 peak (TFLOP/s) for MFU, from NVIDIA's data sheets (SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def load_config(preset, overrides):
  c = load_experiment(os.path.join(ROOT, "experiments", "gpt.py"), preset)
  for item in overrides:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true")
  return c


def one_device_mesh():
  return Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))


def time_ours(config, iters, warmup=5, profile_steps=0):
  """(state, seconds per step); with `profile_steps`, then traces that many more steps and prints the device's
  most expensive ops (`print_op_profile`)."""
  family = ar.make_family(config)
  mesh = one_device_mesh()
  state = jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config))
  step = parallel.data_parallel(family.train_step, mesh)
  it = data_lib.make_train_iterator(config)
  for i in range(warmup):
    state, metrics = step(state, parallel.shard_batch(next(it), mesh), jax.random.key(i))
  jax.block_until_ready(metrics)
  start = time.time()
  for i in range(iters):
    state, metrics = step(state, parallel.shard_batch(next(it), mesh), jax.random.key(i))
  jax.block_until_ready(metrics)
  secs = time.time() - start
  if profile_steps:
    with tempfile.TemporaryDirectory() as trace_dir:
      with jax.profiler.trace(trace_dir):
        for i in range(profile_steps):
          state, metrics = step(state, parallel.shard_batch(next(it), mesh), jax.random.key(i))
        jax.block_until_ready(metrics)
      print_op_profile(trace_dir, profile_steps)
  return state, secs / iters


def print_op_profile(trace_dir, steps, top=20):
  """Per-step device time of the most expensive ops in a jax.profiler trace: on a GPU the "XLA Ops" line of
  each /device: plane (HLO op names; kernels on the streams if a plane has no such line)."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  totals, busy_ns = {}, 0
  for plane in ProfileData.from_file(paths[0]).planes if paths else []:
    if not plane.name.startswith("/device:"):
      continue
    lines = list(plane.lines)
    ops = [line for line in lines if line.name == "XLA Ops"] or [l for l in lines if l.name.startswith("Stream")]
    for line in ops:
      for event in line.events:
        totals[event.name] = totals.get(event.name, 0) + event.duration_ns
        busy_ns += event.duration_ns
  if not totals:
    print("op profile: the trace has no device ops (CPU-only run?)")
    return
  print(f"op profile over {steps} steps: {busy_ns / steps / 1e6:.2f} ms of device ops per step; top {top}:")
  for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {ns / steps / 1e6:8.3f} ms {100 * ns / busy_ns:5.1f}%  {name[:110]}")


def cmd_train(a):
  c = load_config(a.preset, a.set)
  _, ours = time_ours(c, a.iters)
  tokens = c.batch_size * c.model.block_size
  rows = [("aigc_jax (JAX jit)", ours * 1000, tokens / ours)]
  if c.data.name == "text_file":
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "torch_gpt.py"), f"--data-path={c.data.path}",
                          f"--iters={a.iters + 1}", f"--batch={c.batch_size}", f"--block={c.model.block_size}",
                          f"--layers={c.model.num_layers}", f"--heads={c.model.num_heads}",
                          f"--width={c.model.width}", "--eval-batches=1"], capture_output=True, text=True, check=True)
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append((ref["impl"], ref["ms_per_iter"], ref["tokens_per_s"]))
  print(f"cpu-preset training, {a.iters} iterations after warm-up, batch {c.batch_size} x {c.model.block_size}")
  print(f"{'implementation':<28}{'ms/iter':>10}{'tokens/s':>12}")
  for name, ms, tps in rows:
    print(f"{name:<28}{ms:>10.2f}{tps:>12.0f}")


def cmd_generate(a):
  c = load_config(a.preset, a.set)
  c.sample.temperature = 0.0  # greedy: the two paths must agree exactly
  built = ar.build(c)
  if a.workdir:
    state, step, _ = trainer.load_latest(c, a.workdir, built.family, one_device_mesh())
    params = state["params"]
  else:
    params = built.model.init(jax.random.key(0), jnp.zeros((1, c.model.block_size), jnp.int32))["params"]
  keys = parallel.keys_for_ids(jax.random.key(0), jnp.arange(a.batch))
  gen = jax.jit(built.generate, static_argnums=(3, 4))
  results = {}
  for cached in (True, False):
    jax.block_until_ready(gen(params, built.prompt, keys, a.tokens, cached))  # compile
    start = time.time()
    for _ in range(a.repeats):
      out = jax.block_until_ready(gen(params, built.prompt, keys, a.tokens, cached))
    results[cached] = (out, a.batch * a.tokens * a.repeats / (time.time() - start))
  same = bool(np.array_equal(results[True][0], results[False][0]))
  print(f"greedy generation, {a.tokens} new tokens x batch {a.batch}, context {c.model.block_size}, "
        f"{'trained' if a.workdir else 'random'} {c.model.num_layers}x{c.model.width} model, "
        f"{jax.devices()[0].platform}")
  print(f"{'path':<26}{'tokens/s':>12}")
  print(f"{'KV cache (one scan)':<26}{results[True][1]:>12.0f}")
  print(f"{'recompute context (scan)':<26}{results[False][1]:>12.0f}")
  print(f"speed-up {results[True][1] / results[False][1]:.1f}x; greedy tokens identical: {same}")
  print(repr(built.tokenizer.decode(results[True][0][0][:200])))


def cmd_val(a):
  c = load_config(a.preset, a.set)
  family = ar.make_family(c)
  mesh = one_device_mesh()
  state, step, _ = trainer.load_latest(c, a.workdir, family, mesh)
  result = ar.evaluate_split(c, family, state, mesh, num_batches=a.batches or None)
  print(json.dumps({"step": step, **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}))


def cmd_gpu(a):
  c = load_config(a.preset, a.set)
  c.dtype = a.dtype
  c.model.attention_impl = a.attention
  state, secs = time_ours(c, a.iters, profile_steps=a.profile_steps)
  params = state["params"]
  n = sum(x.size for x in jax.tree.leaves(params)) - params["wpe"]["embedding"].size
  m = c.model
  flops_per_token = 6 * n + 12 * m.num_layers * m.num_heads * (m.width // m.num_heads) * m.block_size
  tokens_per_s = c.batch_size * m.block_size / secs
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
  mfu = flops_per_token * tokens_per_s / (peak * 1e12) if peak else float("nan")
  print(f"{a.preset} on {kind}, {c.dtype}, attention={a.attention or 'default'}: {secs * 1000:.2f} ms/iter, "
        f"{tokens_per_s:,.0f} tokens/s, {n / 1e6:.2f}M params, MFU {100 * mfu:.1f}% of {peak} TFLOP/s", flush=True)
  if not a.torch_data:
    return
  # The same model, batch and optimiser in PyTorch on the same GPU: eager, then torch.compile.
  for compiled in (False, True):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "torch_gpt.py"), f"--data-path={a.torch_data}",
           f"--iters={a.iters + 10}", "--warmup=10", f"--batch={c.batch_size}", f"--block={m.block_size}",
           f"--layers={m.num_layers}", f"--heads={m.num_heads}", f"--width={m.width}", "--eval-batches=0",
           f"--dropout={m.dropout}", f"--attention-dropout={m.attention_dropout}",
           "--device=cuda", f"--dtype={c.dtype}", *(["--compile"] if compiled else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
      print(f"torch {'compile' if compiled else 'eager'} failed: {out.stderr.strip().splitlines()[-1:]}")
      continue
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    ref_mfu = flops_per_token * ref["tokens_per_s"] / (peak * 1e12) if peak else float("nan")
    print(f"{ref['impl']} on {kind}, {ref['dtype']}: {ref['ms_per_iter']:.2f} ms/iter, {ref['tokens_per_s']:,} "
          f"tokens/s, MFU {100 * ref_mfu:.1f}%; ours / theirs: {ref['ms_per_iter'] / (secs * 1000):.2f}x",
          flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("command", choices=["train", "generate", "val", "gpu"])
  p.add_argument("--preset", default="cpu")
  p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
  p.add_argument("--workdir", default="")
  p.add_argument("--iters", type=int, default=200)
  p.add_argument("--tokens", type=int, default=500)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--batches", type=int, default=0, help="validation batches (0 = eval.text_batches)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--attention", default="cudnn")
  p.add_argument("--profile-steps", type=int, default=0, help="gpu: trace this many steps, print the top ops")
  p.add_argument("--torch-data", default="", help="gpu: a text file for the PyTorch twins (eager, compile)")
  a = p.parse_args()
  {"train": cmd_train, "generate": cmd_generate, "val": cmd_val, "gpu": cmd_gpu}[a.command](a)


if __name__ == "__main__":
  main()
