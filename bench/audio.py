"""Audio speed: WaveNet and DiffWave training steps side by side with PyTorch eager twins, and generation speed
as a real-time factor, in one invocation with alternating rounds.

  python bench/audio.py                                   # both parts at the cpu presets (needs torch for part 1)
  python bench/audio.py --part=train --specs wavenet.py:cpu diffwave.py:cpu --rounds=3 --wait-quiet=60
  python bench/audio.py --part=generate --gen-batch=1 --rounds=3
  python bench/audio.py --part=train --specs wavenet.py:sc09_128@1 diffwave.py@1 --steps=2 --rounds=1  # paper nets
  python bench/audio.py --part=train --specs wavenet.py:cpu --override model.position_frames=10 \
      --override model.label_dropout=0.1 --override optimizer.schedule=cosine --override optimizer.decay_steps=2000

Part 1, training steps (`--part=train`): per spec (`experiment file[:preset][@global batch]`, as in
bench/train_step.py) ours is the harness's own jitted data-parallel step built exactly as the trainer builds
it (bench/train_step.py's `Ours`: `parallel.data_parallel(family.train_step, mesh)` on synthetic batches of the
config's shapes, no input pipeline), on the CLI's devices (one XLA:CPU device per core, `parallel.
default_host_devices`, unless XLA_FLAGS sets a count); the reference is bench/torch_wavenet.py or
bench/torch_diffwave.py (same network, parameter count, batch, loss and optimiser) in a subprocess at torch's
own default intra-op thread count (`--threads=N` pins it). Each round runs ours then the reference; every
round records the load average (as `uptime` prints it) and the share of the cores other processes took
meanwhile (/proc/stat minus our own CPU time, bench/train_step.py's `OthersCPU`); the medians are over the
rounds where that share stayed under `--quiet` (all rounds if none did), and `--wait-quiet=S` waits up to S
seconds for a quiet moment before each round.

`--override KEY=VALUE` (repeatable; `--set` is the same flag, as in bench/train_step.py) sets a config key in
every spec whose config has it, parsed to the key's current type (bench/train_step.py's load_config), in both
parts; part 1 forwards the keys a spec has to its twin (`--override` of bench/torch_wavenet.py and
bench/torch_diffwave.py). A key no spec has is an error. Keys both families share (optimizer.*, batch_size,
...) change every spec: give each family its own invocation when that is not meant.

Part 2, generation (`--part=generate`): real-time factor = seconds of audio generated per wall second
(batch x clip samples / sample rate / wall; > 1 is faster than real time), through the harness's sampler
(`runtime.make_sampler`: `parallel.data_parallel_map(family.sample)` on the devices that divide the batch),
with freshly initialised weights (the cost does not depend on their values), compiled before timing:
  * WaveNet (`--wavenet`, default wavenet.py:cpu) cached: Paine et al.'s per-layer queues in one `lax.scan`
    (families/wavenet_lib.py), the full clip; naive: the whole network over the last receptive-field window
    for every sample, in a clip exactly one receptive field long (the window is min(receptive field, clip), so
    every sample of a longer clip costs the same: timing the full clip would take minutes and measure nothing
    more). The two are checked to give identical samples on that clip (same seed) and the check is printed.
  * DiffWave (`--diffwave`, default diffwave.py:cpu, with its guidance scale: both branches in one doubled
    batch per step) with the preset's sampler (DDPM or DDIM) at 6, 50 and all T steps (`--diffwave-steps`),
    and DiffWave's fast sampler (T_infer = 6, sample.sampler=fast) where the preset's schedule is the paper's
    linear one (the cpu preset's cosine chain does not fit its betas).
Every variant runs once per round, in the same order each round, so load hits them alike.

Prints a machine line, one line per round, then Markdown tables (median, min-max over rounds).
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
from aigc_jax import parallel  # noqa: E402  (imports jax, but starts no backend)

REFERENCES = {"wavenet": "torch_wavenet.py", "diffwave": "torch_diffwave.py"}


def uptime_load() -> str:
  """The 1/5/15-minute load averages, as `uptime` prints them."""
  return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "-"


def spread(values, digits=3) -> str:
  """'median (min-max)' of a list of rates."""
  fmt = lambda x: f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"  # noqa: E731
  med = statistics.median(values)
  return fmt(med) if len(values) == 1 else f"{fmt(med)} ({fmt(min(values))}-{fmt(max(values))})"


def model_kind(config) -> str:
  if config.family == "wavenet":
    return "wavenet"
  if config.family == "diffusion" and config.model.get("arch") == "diffwave":
    return "diffwave"
  raise SystemExit(f"bench/audio.py times WaveNet and DiffWave specs; this one is family {config.family!r}")


def parse_overrides(items):
  """['model.stacks=1', ...] -> [('model.stacks', '1'), ...] (values parsed later, per config)."""
  pairs = []
  for item in items or []:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--override takes KEY=VALUE, got {item!r}")
    pairs.append((key, value))
  return pairs


def has_key(config, dotted) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError):
      return False
  return True


def applicable(config, overrides):
  """The (key, value) overrides whose key `config` has (bench/train_step.py's load_config skips the others)."""
  return [(k, v) for k, v in overrides if has_key(config, k)]


def check_overrides(overrides, spec_configs):
  """A one-line error for an override key that none of the specs' configs has (a typo would be ignored)."""
  for key, _ in overrides:
    if not any(has_key(c, key) for c in spec_configs):
      raise SystemExit(f"--override {key}: no spec's config has that key")


def reference_command(kind, name, preset, batch, steps, threads, scripts=REFERENCES, overrides=()):
  spec = f"{name}:{preset}" if preset else name
  cmd = [sys.executable, os.path.join(ROOT, "bench", scripts[kind]), f"--config={spec}", f"--batch={batch}",
         f"--steps={steps}", "--warmup=2"]
  cmd += [f"--override={k}={v}" for k, v in overrides]
  return cmd + ([f"--threads={threads}"] if threads else [])


def bench_train(args, ts, kind_of=model_kind, scripts=REFERENCES, unit="clips"):
  """Part 1. `ts` is bench/train_step.py (imported after the device count is set). Other benches reuse it with
  their own `kind_of(config) -> kind`, `scripts` (kind -> reference script) and `unit` (what one example is)."""
  import jax
  rows = []
  overrides = parse_overrides(getattr(args, "override", []))
  specs = [ts.parse_spec(spec) for spec in args.specs]
  check_overrides(overrides, [ts.load_config(name, preset, batch, overrides) for name, preset, batch in specs])
  for name, preset, batch in specs:
    config = ts.load_config(name, preset, batch, overrides)
    kind = kind_of(config)
    mine = applicable(config, overrides)
    label = f"{name}:{preset or 'default'}@{config.batch_size}"
    label += f" ({', '.join(f'{k}={v}' for k, v in mine)})" if mine else ""
    ours = ts.Ours(config)
    for _ in range(args.warmup):
      ours.run(1)
    steps = args.steps or max(2, min(100, round(3.0 * ours.run(2))))
    cmd = (reference_command(kind, name, preset, config.batch_size, steps, args.threads, scripts, mine)
           if args.reference else None)
    ours_rates, ref_rates, others, loads, ref = [], [], [], [], None
    for r in range(args.rounds):
      if args.wait_quiet:
        ts.wait_for_quiet(args.wait_quiet, args.quiet)
      loads.append(uptime_load())
      with ts.OthersCPU() as o:
        ours_rates.append(ours.run(steps))
        if cmd:
          ref = ts.run_reference(cmd)
          ref_rates.append(ref["steps_per_s"])
      others.append(o.fraction)
      line = f"  {label} round {r + 1}: ours {ours_rates[-1]:.3g} steps/s"
      line += f", torch {ref_rates[-1]:.3g} steps/s ({ref['threads']} threads)" if cmd else ""
      line += f" | load {loads[-1]}" + (f" | others' CPU {100 * o.fraction:.0f}%" if o.fraction is not None else "")
      print(line, flush=True)
    quiet = [i for i, o in enumerate(others) if o is None or o < args.quiet] or list(range(args.rounds))
    row = {"spec": label, "kind": kind, "devices": len(ours.mesh.devices.flat), "compile_s": ours.compile_s,
           "steps": steps, "batch": config.batch_size, "ours": [ours_rates[i] for i in quiet],
           "ours_all": ours_rates, "others_cpu": others, "loads": loads, "quiet_rounds": len(quiet) if any(
               o is None or o < args.quiet for o in others) else 0,
           "flops_per_step": ours.flops_per_step}
    if cmd:
      row.update(ref=[ref_rates[i] for i in quiet], ref_all=ref_rates, ref_threads=ref["threads"],
                 ref_impl=ref["impl"], ref_params=ref["params"])
    row["params"] = sum(int(x.size) for x in jax.tree.leaves(jax.device_get(ours.state["params"])))
    rows.append(row)
    del ours
  print()
  print(f"| preset@batch | ours steps/s | ours {unit}/s | torch eager steps/s | torch {unit}/s | ours/torch | params "
        "(ours = torch) | compile s | quiet rounds | load (1/5/15 min) per round |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    med = statistics.median(r["ours"])
    cells = [f"{r['spec']} ({r['devices']} dev)", spread(r["ours"]), f"{med * r['batch']:.3g}"]
    if "ref" in r:
      ref_med = statistics.median(r["ref"])
      cells += [f"{spread(r['ref'])} ({r['ref_threads']} thr)", f"{ref_med * r['batch']:.3g}", f"{med / ref_med:.2f}x",
                f"{r['params']:,}" + ("" if r["params"] == r["ref_params"] else f" vs {r['ref_params']:,} (!)")]
    else:
      cells += ["-", "-", "-", f"{r['params']:,}"]
    cells += [f"{r['compile_s']:.1f}", f"{r['quiet_rounds']}/{len(r['ours_all'])}", "; ".join(r["loads"])]
    print("| " + " | ".join(cells) + " |")
  return rows


class Generator:
  """One generation variant: the harness's sampler for `config` (`runtime.make_sampler`'s mapped function on
  the devices that divide the batch), compiled ahead of time so no timed call compiles, timed per call."""

  def __init__(self, label, config, sample_fn=None, state=None, batch=1):
    import jax
    import numpy as np
    from aigc_jax import runtime
    from aigc_jax.families import get_family
    config.batch_size = batch  # the mesh: the most devices that divide the generation batch
    self.label, self.config, self.batch = label, config, batch
    self.mesh = parallel.make_mesh(config)
    family = get_family(config) if sample_fn is None else None
    sample_fn = sample_fn or family.sample
    state = state if state is not None else runtime.init_state(family, config, self.mesh)
    self.state = parallel.replicate(jax.device_get(state), self.mesh)
    self.rng = jax.random.key(config.seed)
    self.ids = parallel.shard_batch(np.arange(batch, dtype=np.int32), self.mesh)
    self.length = round(config.data.sample_rate * config.data.clip_seconds) if "sample_rate" in config.data else 0
    start = time.perf_counter()
    self.compiled = parallel.data_parallel_map(sample_fn, self.mesh).lower(self.state, self.rng, self.ids).compile()
    self.compile_s = time.perf_counter() - start
    self.last = None

  def call(self) -> float:
    """Wall seconds of one call, its outputs fetched to the host as the sampler does."""
    import jax
    start = time.perf_counter()
    self.last = jax.device_get(self.compiled(self.state, self.rng, self.ids))
    return time.perf_counter() - start

  def run(self):
    """(real-time factor, wall seconds) of one call."""
    wall = self.call()
    return self.batch * self.length / self.config.data.sample_rate / wall, wall


def bench_generate(args, ts):
  import jax
  import numpy as np
  from aigc_jax import data as data_lib
  from aigc_jax.configs import override
  from aigc_jax.families import wavenet
  from aigc_jax.models.wavenet import receptive_field

  flags = parse_overrides(getattr(args, "override", []))
  check_overrides(flags, [ts.load_config(*args.wavenet.partition(":")[::2], 0, flags),
                          ts.load_config(*args.diffwave.partition(":")[::2], 0, flags)])

  def experiment(spec, overrides=None):
    """The spec's config with the --override flags it has, then `overrides` ({"dotted.key": value})."""
    name, _, preset = spec.partition(":")
    return override(ts.load_config(name, preset, 0, flags), overrides or {})

  gens = []
  # WaveNet: one set of weights for the three generators.
  wn_config = experiment(args.wavenet)
  wn = wavenet.build(wn_config)
  params = jax.jit(wn.family.init)(jax.random.key(0), data_lib.example_batch(wn_config))
  m, d = wn_config.model, wn_config.data
  rf = receptive_field(m.layers_per_stack, m.stacks, m.kernel_size)
  rf_seconds = rf / d.sample_rate
  short = lambda: experiment(args.wavenet, {"data.clip_seconds": rf_seconds})  # noqa: E731
  naive_fn = lambda cfg: functools.partial(wavenet.build(cfg).family.sample, cached=False)  # noqa: E731
  cached_short = Generator("wavenet cached (rf clip)", short(), wavenet.build(short()).family.sample, params,
                           args.gen_batch)
  naive = Generator(f"WaveNet naive ({rf} samples = {rf_seconds:.3f} s, one receptive field)", short(),
                    naive_fn(short()), params, args.gen_batch)
  cached_short.run()
  cached = Generator(f"WaveNet cached ({wn.length} samples = {d.clip_seconds:g} s)", wn_config,
                     wn.family.sample, params, args.gen_batch)
  gens += [cached, naive]
  dw = experiment(args.diffwave)
  scale = dw.sample.guidance_scale
  T = dw.diffusion.num_timesteps
  if dw.diffusion.schedule == "linear":  # the paper's fast betas fit only the paper's linear chain
    gens.append(Generator(f"DiffWave fast, {len(dw.sample.fast_schedule)} steps", experiment(
        args.diffwave, {"sample.sampler": "fast", "sample.steps": 0}), batch=args.gen_batch))
  sampler = dw.sample.sampler if dw.sample.sampler in ("ddpm", "ddim") else "ddpm"  # the preset's own
  for steps in args.diffwave_steps:
    gens.append(Generator(f"DiffWave {sampler.upper()}, {steps} steps", experiment(
        args.diffwave, {"sample.sampler": sampler, "sample.steps": 0 if steps == T else steps}),
        batch=args.gen_batch))
  for g in gens:
    print(f"  compiled {g.label}: {g.compile_s:.1f} s ({len(g.mesh.devices.flat)} device(s))", flush=True)

  rates = {g.label: [] for g in gens}
  walls = {g.label: [] for g in gens}
  loads, others = [], []
  for r in range(args.rounds):
    if args.wait_quiet:
      ts.wait_for_quiet(args.wait_quiet, args.quiet)
    loads.append(uptime_load())
    with ts.OthersCPU() as o:
      for g in gens:
        rtf, wall = g.run()
        rates[g.label].append(rtf)
        walls[g.label].append(wall)
    others.append(o.fraction)
    if r == 0:
      same = bool(np.array_equal(cached_short.last["audio"], naive.last["audio"]))
      print(f"  WaveNet cached == naive on the {rf}-sample clip, batch {args.gen_batch}, same seed: {same}", flush=True)
      del cached_short
    print(f"  generation round {r + 1}: " + ", ".join(f"{g.label.split(' (')[0]} {rates[g.label][-1]:.3g}"
                                                      for g in gens)
          + f" | load {loads[-1]}" + (f" | others' CPU {100 * o.fraction:.0f}%" if o.fraction is not None else ""),
          flush=True)
  quiet = [i for i, o in enumerate(others) if o is None or o < args.quiet] or list(range(args.rounds))
  print()
  print(f"Generation, batch {args.gen_batch}, {d.sample_rate} Hz (WaveNet {args.wavenet}, DiffWave {args.diffwave}"
        f"{f', guidance scale {scale:g}: 2 network passes per step' if scale != 1 else ''}); "
        f"quiet rounds {len(quiet) if any(o is None or o < args.quiet for o in others) else 0}/{args.rounds}; "
        f"loads per round {'; '.join(loads)}")
  print("| generator | audio per call | wall per call (s) | real-time factor | compile s |")
  print("|---|---|---|---|---|")
  for g in gens:
    secs = g.batch * g.length / g.config.data.sample_rate
    print(f"| {g.label} | {g.batch} x {g.length / g.config.data.sample_rate:g} s | "
          f"{spread([walls[g.label][i] for i in quiet])} | {spread([rates[g.label][i] for i in quiet])} | "
          f"{g.compile_s:.1f} |")
    del secs
  median_rtf = lambda g: statistics.median([rates[g.label][i] for i in quiet])  # noqa: E731
  print(f"WaveNet cached / naive (median RTF): {median_rtf(cached) / median_rtf(naive):.1f}x; "
        f"identical samples: {same}")
  return {"rates": rates, "walls": walls, "loads": loads, "others_cpu": others, "identical": same}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--part", choices=["all", "train", "generate"], default="all")
  p.add_argument("--specs", nargs="*", default=["wavenet.py:cpu", "diffwave.py:cpu"],
                 help="part 1: experiment file[:preset][@batch]")
  p.add_argument("--steps", type=int, default=0, help="part 1: steps per timed round (0: about 3 s of ours)")
  p.add_argument("--warmup", type=int, default=2, help="part 1: untimed steps after compiling")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  p.add_argument("--override", "--set", dest="override", action="append", default=[], metavar="KEY=VALUE",
                 help="config override for every spec that has the key (repeatable); forwarded to the twins")
  p.add_argument("--no-reference", dest="reference", action="store_false", help="part 1 without torch")
  p.add_argument("--wavenet", default="wavenet.py:cpu", help="part 2: the WaveNet experiment[:preset]")
  p.add_argument("--diffwave", default="diffwave.py:cpu", help="part 2: the DiffWave experiment[:preset]")
  p.add_argument("--diffwave-steps", type=lambda s: [int(v) for v in s.split(",")], default=[6, 50, 200],
                 help="part 2: step counts of the preset's sampler (DDPM or DDIM; T = all steps), besides the "
                      "fast sampler where the preset's schedule is the paper's linear one")
  p.add_argument("--gen-batch", type=int, default=1, help="part 2: clips per generation call")
  p.add_argument("--quiet", type=float, default=0.1)
  p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
  p.add_argument("--one-device", action="store_true", help="one XLA:CPU device instead of the CLI's one per core")
  p.add_argument("--json", default="")
  args = p.parse_args()
  if not args.one_device:
    parallel.default_host_devices()  # the CLI's rule; before JAX starts its backends
  import train_step as ts  # bench/train_step.py: Ours, OthersCPU, wait_for_quiet, machine_line
  print(ts.machine_line(args.threads if args.reference and args.part != "generate" else 0)
        + f"; uptime load {uptime_load()}", flush=True)
  out = {}
  if args.part in ("all", "train"):
    out["train"] = bench_train(args, ts)
  if args.part in ("all", "generate"):
    out["generate"] = bench_generate(args, ts)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
  main()
