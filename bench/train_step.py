"""Training-step throughput of the harness, per experiment preset, on the current devices.

Builds exactly what `python -m aigc_jax.main --mode=train` runs, from the same code: the family from the
config, the replicated initial state (`trainer.init_state`), the data-parallel step
(`parallel.data_parallel(family.train_step, mesh)`: jit + shard_map over every device, donated state) and
batches shaped by `data.example_batch`, stacked as the trainer stacks them (`batches_per_step`), filled with
synthetic values (no input pipeline in the timing). Prints per preset: compile seconds (lowering + XLA
compilation of the step), steps/s, examples/s (global batch per second), FLOPs per example from
`jax.jit(...).lower(...).compile().cost_analysis()` (the per-device program's FLOPs x devices / global batch;
the optimiser update, replicated on every device, is included), achieved TFLOP/s and, given a peak, MFU.

  python bench/train_step.py                                   # dcgan.py:cpu gan.py:cpu ddpm.py:cpu ddpm.py@8
  python bench/train_step.py dcgan.py:cpu ddpm.py:cpu --reference       # + the PyTorch eager step, alternated
  python bench/train_step.py ddpm.py --set dtype=bfloat16 --peak-tflops=auto     # on a GPU: images/s and MFU

A spec is `experiment file[:preset][@global batch]`, e.g. `ddpm.py@8` is the paper's CIFAR-10 U-Net at batch
8. `--set key=value` overrides a config key in every spec that has it (`--set dtype=bfloat16`).
`--reference` runs bench/torch_dcgan.py (DCGAN presets) and bench/torch_unet.py (diffusion presets) in
subprocesses with `--threads` intra-op threads (default: the number of cores, which XLA:CPU also uses),
alternating rounds with ours so that load from other processes hits both alike. On a shared machine each
round also records the share of the cores other processes used meanwhile (/proc/stat minus our own CPU
time); the medians are over the rounds where that stayed under `--quiet` (10%), and `--wait-quiet=S` waits
up to S seconds for such a moment before each round. (PyTorch's OpenMP threads collapse under contention,
XLA's thread pool much less, so contended rounds say little about either.)
`--dcgan-upconv=conv,auto` times each DCGAN spec once per value: `conv` builds the generator
with lax's transposed convolutions (what nn.ConvTranspose ran before), `auto` as the model does by default
(the matmul form of aigc_jax/models/dcgan.py on CPU, conv on GPU/TPU).
"""
import argparse
import functools
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from aigc_jax import configs  # noqa: E402
from aigc_jax import data as data_lib  # noqa: E402
from aigc_jax import parallel, trainer  # noqa: E402
from aigc_jax.families import gan, get_family  # noqa: E402
from aigc_jax.models import dcgan, layers  # noqa: E402

DEFAULT_SPECS = ("dcgan.py:cpu", "gan.py:cpu", "ddpm.py:cpu", "ddpm.py@8")
# Dense peak TFLOP/s per device (vendor data sheets, without sparsity) for --peak-tflops=auto.
PEAK_TFLOPS = {  # device_kind substring -> {compute dtype: peak}
    "H200": {"bfloat16": 989.0, "float32": 494.7},  # fp32 entry = TF32 tensor cores (XLA's default precision)
    "H100": {"bfloat16": 989.0, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v3": {"bfloat16": 123.0, "float32": 123.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
}


def parse_spec(spec):
  """'ddpm.py:cpu@8' -> ('ddpm.py', 'cpu', 8); preset '' = the file's default, batch 0 = the config's."""
  spec, _, batch = spec.partition("@")
  name, _, preset = spec.partition(":")
  return name, preset, int(batch) if batch else 0


def load_config(name, preset, batch, overrides):
  path = name if os.path.sep in name else os.path.join(ROOT, "experiments", name)
  config = configs.load_experiment(path, preset)
  for key, value in overrides:
    *parents, leaf = key.split(".")
    node = config
    try:
      for p in parents:
        node = node[p]
      old = node[leaf]
    except KeyError:
      continue  # a key of another family's config
    if isinstance(old, bool):
      node[leaf] = value.lower() in ("1", "true", "yes")
    elif isinstance(old, (tuple, list)):
      node[leaf] = type(old)(type(old[0])(v) for v in value.split(","))
    else:
      node[leaf] = type(old)(value)
  if batch:
    config.batch_size = batch
  return config


def synthetic_batch(config, batches_per_step, rng):
  """One host's batch as the trainer hands it to the step: data.example_batch's shapes, random values."""
  local = config.batch_size // jax.process_count()
  example = data_lib.example_batch(config, batch_size=local)
  classes = max(config.model.get("num_classes", 0), 10)

  def fill(x):
    if np.issubdtype(x.dtype, np.floating):
      return rng.uniform(-1.0, 1.0, x.shape).astype(x.dtype)
    return rng.integers(0, classes, x.shape).astype(x.dtype)
  host = jax.tree.map(fill, example)
  return trainer._next_train_batch(itertools.repeat(host), batches_per_step)


def flops_of(lowered):
  """FLOPs of a lowered (not yet optimised) program. A compiled GPU program hides its convolutions in cuDNN
  custom calls that XLA's cost analysis counts as 0 (the paper U-Net: 2.9 GFLOP per example compiled for an
  H200, 35.4 lowered; 35.2 compiled for CPU), so the count is taken before compilation, the same on every
  backend."""
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  return float(cost.get("flops", 0.0)) if cost else 0.0


def peak_tflops(arg, dtype):
  if not arg:
    return 0.0
  if arg != "auto":
    return float(arg)
  kind = jax.devices()[0].device_kind
  for key, peaks in PEAK_TFLOPS.items():
    if key.lower() in kind.lower():
      return peaks[dtype]
  print(f"(no peak known for device kind {kind!r}; pass --peak-tflops=<dense TFLOP/s per device>)")
  return 0.0


class Ours:
  """The harness's jitted data-parallel step for one spec, compiled once, timed in rounds."""

  def __init__(self, config):
    self.config = config
    trainer.check_config(config)
    family = get_family(config)
    self.mesh = parallel.make_mesh()
    self.state = trainer.init_state(family, config, self.mesh)
    self.step = parallel.data_parallel(family.train_step, self.mesh)
    host = synthetic_batch(config, family.batches_per_step, np.random.default_rng(0))
    self.batch = parallel.shard_batch(host, self.mesh)
    self.train_key = trainer.run_keys(config)[1]
    self.block = parallel.must_block_each_step()
    start = time.perf_counter()
    lowered = self.step.lower(self.state, self.batch, self.train_key)
    lowered.compile()
    self.compile_s = time.perf_counter() - start
    n_dev = len(self.mesh.devices.flat)
    self.flops_per_step = flops_of(lowered) * n_dev  # the per-device program, on every device
    self.i = 0

  def run(self, steps):
    """Steps/s over `steps` steps; calls the jitted step (its cache holds the executable compiled above)."""
    metrics = None
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch, jax.random.fold_in(self.train_key, self.i))
      self.i += 1
      if self.block:
        jax.block_until_ready(metrics)
    jax.block_until_ready((self.state, metrics))
    return steps / (time.perf_counter() - start)


def reference_command(config, name, preset, batch, steps, threads):
  spec = f"{name}:{preset}" if preset else name
  if config.family == "gan" and config.model.arch == "dcgan":
    script = "torch_dcgan.py"
  elif config.family == "diffusion":
    script = "torch_unet.py"
  else:
    return None
  cmd = [sys.executable, os.path.join(ROOT, "bench", script), f"--config={spec}", f"--batch={batch}",
         f"--steps={steps}", "--warmup=2", f"--threads={threads}"]
  if jax.default_backend() == "gpu" and script == "torch_unet.py":  # the twin on the same GPU, same dtype
    cmd += ["--device=cuda", f"--dtype={config.dtype}"]
  return cmd


def run_reference(cmd, env=None):
  """Runs a reference script; its last stdout line is a JSON object."""
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def machine_line(threads):
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  dev = jax.devices()[0]
  line = (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {jax.device_count()} x {dev.platform}:{dev.device_kind}; "
          f"host {cpu}, {os.cpu_count()} cores, load {load:.2f}; jax {jax.__version__}")
  try:
    import flax
    line += f" / flax {flax.__version__}"
  except ImportError:
    pass
  return line + (f"; reference threads {threads}" if threads else "")


class OthersCPU:
  """Share of the machine's cores that OTHER processes used while a block ran: all busy CPU time from
  /proc/stat minus this process's and its finished children's (os.times). None where /proc/stat is missing."""

  def __enter__(self):
    self.start = self._sample()
    return self

  def __exit__(self, *exc):
    end = self._sample()
    self.fraction = None
    if self.start and end:
      (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
      self.fraction = max(0.0, (busy1 - busy0) - (own1 - own0)) / (os.cpu_count() * max(wall1 - wall0, 1e-9))

  @staticmethod
  def _sample():
    try:
      with open("/proc/stat") as f:
        ticks = [float(v) for v in f.readline().split()[1:]]
    except OSError:
      return None
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()


def wait_for_quiet(max_wait_s, threshold=0.1):
  """Waits up to max_wait_s for other processes to use less than `threshold` of the cores (2 s samples)."""
  deadline = time.time() + max_wait_s
  while True:
    with OthersCPU() as others:
      time.sleep(2.0)
    if others.fraction is None or others.fraction < threshold or time.time() >= deadline:
      return others.fraction


def median_of_quiet(rates, others, threshold):
  """Median over the rounds that other processes left alone (all rounds if none was)."""
  quiet = [r for r, o in zip(rates, others) if o is None or o < threshold]
  return statistics.median(quiet or rates), len(quiet)


def fmt(x, digits=3):
  if x is None:
    return "-"
  return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("specs", nargs="*", default=list(DEFAULT_SPECS),
                 help="experiment file[:preset][@batch], default: " + " ".join(DEFAULT_SPECS))
  p.add_argument("--steps", type=int, default=0, help="steps per timed round (0: about 3 s of steps)")
  p.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, every spec")
  p.add_argument("--peak-tflops", default="", help="dense peak TFLOP/s per device for MFU, or 'auto'")
  p.add_argument("--reference", action="store_true", help="also time the PyTorch eager step (DCGAN, U-Net)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
  p.add_argument("--dcgan-upconv", default="auto",
                 help="comma-separated UpConv4x4 impls (auto, conv, matmul) to time each DCGAN spec with")
  p.add_argument("--json", default="", help="also write the rows to this file")
  p.add_argument("--quiet", type=float, default=0.1, help="a round counts as quiet if other processes used "
                 "less than this share of the cores during it; the medians are over quiet rounds")
  p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                 help="on a shared machine: before each round, wait up to this long for other processes to go quiet")
  a = p.parse_args()
  overrides = [tuple(s.split("=", 1)) for s in a.set]
  upconv_impls = a.dcgan_upconv.split(",")
  if set(upconv_impls) - set(layers.UPCONV_IMPLS):
    p.error(f"--dcgan-upconv takes {layers.UPCONV_IMPLS}, got {a.dcgan_upconv!r}")

  print(machine_line(a.threads if a.reference else 0), flush=True)
  rows = []
  runs = []
  for spec in a.specs:
    name, preset, batch = parse_spec(spec)
    config = load_config(name, preset, batch, overrides)
    is_dcgan = config.family == "gan" and config.model.get("arch") == "dcgan"
    runs += [(name, preset, config, impl) for impl in (upconv_impls if is_dcgan else [None])]
  for name, preset, config, upconv in runs:
    # No config key chooses the impl: swap the class the gan family builds.
    gan.DCGANGenerator = functools.partial(dcgan.DCGANGenerator, upconv_impl=upconv or "auto")
    label = f"{name}:{preset or 'default'}@{config.batch_size}"
    label += f" {config.dtype}" if config.dtype != "float32" else ""
    label += f" upconv={upconv}" if upconv and upconv_impls != ["auto"] else ""
    ours = Ours(config)
    for _ in range(a.warmup):
      ours.run(1)
    steps = a.steps or max(3, min(200, round(3.0 * ours.run(2))))
    cmd = reference_command(config, name, preset, config.batch_size, steps, a.threads) if a.reference else None
    ours_rates, ref_rates, ref, others = [], [], None, []
    for _ in range(a.rounds):
      if a.wait_quiet:
        wait_for_quiet(a.wait_quiet, a.quiet)
      with OthersCPU() as o:  # one round of ours and the paired round of the reference
        ours_rates.append(ours.run(steps))
        if cmd:
          ref = run_reference(cmd)
          ref_rates.append(ref["steps_per_s"])
      others.append(o.fraction)
    rate, quiet_rounds = median_of_quiet(ours_rates, others, a.quiet)
    flops_ex = ours.flops_per_step / config.batch_size
    tflops = ours.flops_per_step * rate / 1e12
    peak = peak_tflops(a.peak_tflops, config.dtype)
    row = {"spec": label, "devices": jax.device_count(), "compile_s": ours.compile_s, "steps": steps,
           "steps_per_s": rate, "examples_per_s": rate * config.batch_size, "rounds": ours_rates,
           "flops_per_example": flops_ex, "tflops_per_s": tflops,
           "mfu": tflops / (peak * jax.device_count()) if peak else None,
           "others_cpu": others, "quiet_rounds": quiet_rounds,
           "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if cmd:
      ref_rate, _ = median_of_quiet(ref_rates, others, a.quiet)
      row.update(ref_impl=ref["impl"], ref_threads=a.threads, ref_steps_per_s=ref_rate,
                 ref_examples_per_s=ref_rate * config.batch_size, ref_rounds=ref_rates)
    rows.append(row)
    msg = (f"{label}: compile {row['compile_s']:.1f} s | {rate:.3g} steps/s | {row['examples_per_s']:.4g} examples/s"
           f" | {flops_ex / 1e6:.4g} MFLOP/example | {tflops * 1e3:.4g} GFLOP/s")
    if row["mfu"] is not None:
      msg += f" | MFU {100 * row['mfu']:.1f}% of {peak:g} TFLOP/s x {jax.device_count()}"
    if cmd:
      msg += (f" || {row['ref_impl']} ({a.threads} threads): {row['ref_steps_per_s']:.3g} steps/s, "
              f"{row['ref_examples_per_s']:.4g} examples/s; ours/torch {rate / row['ref_steps_per_s']:.2f}x")
    msg += f" | rounds {' '.join(f'{x:.3g}' for x in ours_rates)}"
    msg += f" vs {' '.join(f'{x:.3g}' for x in ref_rates)}" if cmd else ""
    msg += f" | load {row['load_after']:.2f}" if row["load_after"] is not None else ""
    if others and others[0] is not None:
      msg += (f" | other processes' CPU per round {' '.join(f'{100 * x:.0f}%' for x in others)}; "
              f"median over {quiet_rounds} rounds below {100 * a.quiet:.0f}%" if quiet_rounds else
              f" | other processes' CPU per round {' '.join(f'{100 * x:.0f}%' for x in others)}; no quiet round: "
              "median of all (contended)")
    print(msg, flush=True)
    del ours

  print()
  has_ref = any("ref_steps_per_s" in r for r in rows)
  has_mfu = any(r["mfu"] is not None for r in rows)
  head = ["family/preset@batch", "compile s", "steps/s", "examples/s", "MFLOP/example"]
  head += ["MFU"] if has_mfu else []
  head += ["torch eager steps/s", "torch examples/s", "ours/torch"] if has_ref else []
  head += ["quiet rounds", "load"]
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for r in rows:
    cells = [r["spec"], f"{r['compile_s']:.1f}", fmt(r["steps_per_s"]), fmt(r["examples_per_s"]),
             fmt(r["flops_per_example"] / 1e6, 4)]
    cells += [f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"] if has_mfu else []
    if has_ref:
      if "ref_steps_per_s" in r:
        cells += [fmt(r["ref_steps_per_s"]), fmt(r["ref_examples_per_s"]),
                  f"{r['steps_per_s'] / r['ref_steps_per_s']:.2f}x"]
      else:
        cells += ["-", "-", "-"]
    cells += [f"{r['quiet_rounds']}/{len(r['rounds'])}",
              f"{r['load_after']:.1f}" if r["load_after"] is not None else "-"]
    print("| " + " | ".join(cells) + " |")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
