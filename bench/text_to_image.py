"""Text-to-image speed: the cross-attention U-Net's and CLIP's training steps side by side with PyTorch eager twins,
and guided DDIM sampling in images per second, ours vs the twin, in one invocation with alternating rounds.

  python bench/text_to_image.py                        # both parts at the cpu presets (needs torch)
  python bench/text_to_image.py --part=train --specs latent_diffusion.py:cpu_pixel clip.py:cpu --rounds=5
  python bench/text_to_image.py --part=sample --rounds=5 --wait-quiet=60
  python bench/text_to_image.py --part=train --specs clip.py:cpu@256 --steps=10 --rounds=1       # another batch

Part 1, training steps (`--part=train`): bench/audio.py's part 1 with this medium's twins. Per spec (`experiment
file[:preset][@global batch]`, as in bench/train_step.py) ours is the harness's own jitted data-parallel step
(bench/train_step.py's `Ours`: `parallel.data_parallel(family.train_step, mesh)`, synthetic batches of the
config's shapes, no input pipeline) on the CLI's devices (one XLA:CPU device per core unless XLA_FLAGS sets a
count): for `latent_diffusion.py:cpu_pixel` the diffusion family's step with the joint text encoder (the U-Net of
models/unet.py with CrossAttnBlock after every self-attention, caption dropout), for `clip.py:cpu` the clip
family's (negatives all-gathered over the devices). The reference is bench/torch_text_to_image.py (same layers,
parameter count, batch, loss, optimiser; the counts are asserted equal) in a subprocess at torch's own default
intra-op thread count (`--threads=N` pins it). Each round runs ours then the reference and records the `uptime`
load and the share of the cores other processes took meanwhile; medians are over the rounds where that share
stayed under `--quiet` (all rounds if none did).

Part 2, sampling (`--part=sample`): images per second of the text model's sampler at `--sample-spec` (default
`latent_diffusion.py:cpu_pixel`: 50 DDIM steps, eta 0, classifier-free guidance 3, both branches in one doubled
batch), `--gen-batch` images per call (default the preset's eval.batch_size, the chunk evaluation samples in).
Ours: the harness's sampler (`parallel.data_parallel_map(family.sample)` on the devices that divide the batch,
bench/audio.py's `Generator`), compiled before timing, outputs fetched to the host; freshly initialised weights
(the cost does not depend on their values); the prompts are the preset's (test captions). The twin: the same
network and DDIM loop under torch.no_grad(), random captions of the same context length, an untimed 3-step chain
of the same shapes first (ours: one untimed call after compiling).
Each round: `--sample-calls` calls of ours, then the twin's subprocess timing as many.

Prints a machine line, one line per round, then Markdown tables (median, min-max over rounds).
"""
import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import audio  # noqa: E402  (bench/audio.py: bench_train, Generator, uptime_load, spread; starts no backend)
from aigc_jax import parallel  # noqa: E402

REFERENCE = "torch_text_to_image.py"
SCRIPTS = {"text_unet": REFERENCE, "clip": REFERENCE}


def model_kind(config) -> str:
  if config.family == "clip":
    return "clip"
  if config.family == "diffusion" and config.model.get("text_encoder") == "joint" and not config.model.autoencoder:
    return "text_unet"
  raise SystemExit(f"bench/text_to_image.py times CLIP and pixel-space text diffusion (joint text encoder); this "
                   f"spec is family {config.family!r}")


def bench_train(args, ts):
  rows = audio.bench_train(args, ts, model_kind, SCRIPTS, unit="images")
  for r in rows:
    if "ref_params" in r:
      assert r["params"] == r["ref_params"], f"{r['spec']}: ours {r['params']:,} params, torch {r['ref_params']:,}"
  return rows


class Sampler(audio.Generator):
  """bench/audio.py's Generator (the harness's compiled sampler) rated in images per second."""

  def run(self):
    wall = self.call()
    return self.batch / wall, wall


def bench_sample(args, ts):
  import jax
  from aigc_jax.configs import load_experiment
  name, _, preset = args.sample_spec.partition(":")
  config = load_experiment(name if os.path.sep in name else os.path.join(ROOT, "experiments", name), preset)
  model_kind(config)
  s = config.sample
  batch = args.gen_batch or config.eval.batch_size
  label = (f"{args.sample_spec} {s.sampler.upper()} {s.steps} steps, guidance {s.guidance_scale:g}, "
           f"batch {batch}")
  ours = Sampler(label, config, batch=batch)
  params = sum(int(x.size) for x in jax.tree.leaves(jax.device_get(ours.state["params"])))
  print(f"  compiled {label}: {ours.compile_s:.1f} s ({len(ours.mesh.devices.flat)} device(s))", flush=True)
  ours.call()  # untimed, as the twin's first call
  cmd = None
  if args.reference:
    cmd = [sys.executable, os.path.join(ROOT, "bench", REFERENCE), "--part=sample", f"--config={args.sample_spec}",
           f"--batch={batch}", f"--steps={args.sample_calls}", "--warmup=3"]
    cmd += [f"--threads={args.threads}"] if args.threads else []
  ours_rates, ref_rates, loads, others, ref = [], [], [], [], None
  for r in range(args.rounds):
    if args.wait_quiet:
      ts.wait_for_quiet(args.wait_quiet, args.quiet)
    loads.append(audio.uptime_load())
    with ts.OthersCPU() as o:
      walls = [ours.run()[1] for _ in range(args.sample_calls)]
      ours_rates.append(batch * len(walls) / sum(walls))
      if cmd:
        ref = ts.run_reference(cmd)
        ref_rates.append(ref["images_per_s"])
    others.append(o.fraction)
    line = f"  sampling round {r + 1}: ours {ours_rates[-1]:.3g} images/s"
    line += f", torch {ref_rates[-1]:.3g} images/s ({ref['threads']} threads)" if cmd else ""
    line += f" | load {loads[-1]}" + (f" | others' CPU {100 * o.fraction:.0f}%" if o.fraction is not None else "")
    print(line, flush=True)
  if ref is not None:
    assert params == ref["params"], f"sampler: ours {params:,} params, torch {ref['params']:,}"
  quiet = [i for i, o in enumerate(others) if o is None or o < args.quiet] or list(range(args.rounds))
  n_quiet = len(quiet) if any(o is None or o < args.quiet for o in others) else 0
  pick = lambda xs: [xs[i] for i in quiet]  # noqa: E731
  print()
  print(f"Sampling, {label}; quiet rounds {n_quiet}/{args.rounds}; loads per round {'; '.join(loads)}")
  print("| sampler | ours images/s | ours s per call | torch eager images/s | ours/torch | params (ours = torch) | "
        "compile s |")
  print("|---|---|---|---|---|---|---|")
  cells = [label, audio.spread(pick(ours_rates)), f"{batch / statistics.median(pick(ours_rates)):.3g}"]
  if cmd:
    cells += [f"{audio.spread(pick(ref_rates))} ({ref['threads']} thr)",
              f"{statistics.median(pick(ours_rates)) / statistics.median(pick(ref_rates)):.2f}x"]
  else:
    cells += ["-", "-"]
  cells += [f"{params:,}", f"{ours.compile_s:.1f}"]
  print("| " + " | ".join(cells) + " |")
  return {"label": label, "batch": batch, "ours": ours_rates, "ref": ref_rates, "loads": loads, "others_cpu": others,
          "params": params, "compile_s": ours.compile_s, "devices": len(ours.mesh.devices.flat)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--part", choices=["all", "train", "sample"], default="all")
  p.add_argument("--specs", nargs="*", default=["latent_diffusion.py:cpu_pixel", "clip.py:cpu"],
                 help="part 1: experiment file[:preset][@batch]")
  p.add_argument("--steps", type=int, default=0, help="part 1: steps per timed round (0: about 3 s of ours)")
  p.add_argument("--warmup", type=int, default=2, help="part 1: untimed steps after compiling")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  p.add_argument("--no-reference", dest="reference", action="store_false", help="without torch")
  p.add_argument("--sample-spec", default="latent_diffusion.py:cpu_pixel", help="part 2: experiment[:preset]")
  p.add_argument("--gen-batch", type=int, default=0, help="part 2: images per call (0: the preset's eval.batch_size)")
  p.add_argument("--sample-calls", type=int, default=1, help="part 2: timed calls per round, each side")
  p.add_argument("--quiet", type=float, default=0.1)
  p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
  p.add_argument("--one-device", action="store_true", help="one XLA:CPU device instead of the CLI's one per core")
  p.add_argument("--json", default="")
  args = p.parse_args()
  if not args.one_device:
    parallel.default_host_devices()  # the CLI's rule; before JAX starts its backends
  import train_step as ts  # bench/train_step.py: Ours, OthersCPU, wait_for_quiet, machine_line, run_reference
  print(ts.machine_line(args.threads if args.reference else 0) + f"; uptime load {audio.uptime_load()}", flush=True)
  out = {}
  if args.part in ("all", "train"):
    out["train"] = bench_train(args, ts)
  if args.part in ("all", "sample"):
    out["sample"] = bench_sample(args, ts)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
  main()
