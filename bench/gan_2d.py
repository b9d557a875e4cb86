"""The 2-D mode-coverage benchmark (experiments/gan_2d.py): train presets x seeds one after another through the
CLI, then print ours next to the published rows (numbers go to bench/RESULTS.md and the experiment docstring).

  python bench/gan_2d.py run --root=runs/gan_2d                  # ring, ring_pac2, grid, grid_pac2 (_cpu) x 3 seeds
  python bench/gan_2d.py run --root=runs/gan_2d --steps=20000     # the same runs continued to 20,000 steps
  python bench/gan_2d.py table --root=runs/gan_2d [--steps=5000,20000]   # the table from the runs' metric cards

`run` is sequential (one training at a time, seed-major so every preset has a first seed early) and skips a
run whose evaluation card of the target step exists, so rerunning it after an interruption continues where it
stopped, and a larger --steps continues finished runs from their checkpoints (the _cpu presets evaluate every
5,000 steps). Each run's console output and a `time: user sys wall` line go to <root>/<preset>_s<seed>.log.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ("ring_cpu", "ring_pac2_cpu", "grid_cpu", "grid_pac2_cpu")
# PacGAN Table 1 (Lin et al. 2018; 10 runs, mean +- standard error): modes, high-quality %, reverse KL.
PUBLISHED = {
    ("ring", 1): ("6.3 +- 0.5", "98.2 +- 0.2", "0.45 +- 0.09"),
    ("ring", 2): ("7.9 +- 0.1", "95.6 +- 2.0", "0.07 +- 0.03"),
    ("ring", 3): ("7.8 +- 0.1", "97.7 +- 0.3", "0.10 +- 0.02"),
    ("ring", 4): ("7.8 +- 0.1", "95.9 +- 1.4", "0.07 +- 0.02"),
    ("grid", 1): ("17.3 +- 0.8", "94.8 +- 0.7", "0.70 +- 0.07"),
    ("grid", 2): ("23.8 +- 0.7", "91.3 +- 0.8", "0.13 +- 0.04"),
    ("grid", 3): ("24.6 +- 0.4", "94.2 +- 0.4", "0.06 +- 0.02"),
    ("grid", 4): ("24.8 +- 0.2", "93.6 +- 0.6", "0.04 +- 0.01"),
}


def run(args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  os.makedirs(args.root, exist_ok=True)
  for seed in args.seeds:
    for preset in args.presets:
      workdir = os.path.join(args.root, f"{preset}_s{seed}")
      steps = args.steps[-1] if args.steps else None
      card = os.path.join(workdir, "eval", f"{steps}.json") if steps else last_card(workdir)
      if card and os.path.exists(card) and not args.force:
        continue
      cmd = [sys.executable, "-m", "aigc_jax.main",
             f"--config=experiments/gan_2d.py:{preset}", f"--workdir={workdir}", f"--config.seed={seed}",
             f"--config.num_devices={args.num_devices}", *([f"--config.num_train_steps={steps}"] if steps else []),
             *args.flags]
      print(" ".join(cmd[1:]), flush=True)
      with open(workdir + ".log", "a") as log:
        before, start = os.times(), time.time()
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        after = os.times()
        # The child's CPU time and the wall, in /usr/bin/time's words (training_wall reads them).
        log.write(f"time: {after.children_user - before.children_user:.2f} user "
                  f"{after.children_system - before.children_system:.2f} sys {time.time() - start:.2f} wall\n")


def last_card(workdir):
  cards = glob.glob(os.path.join(workdir, "eval", "*.json"))
  return max(cards, key=lambda p: int(os.path.basename(p)[:-5])) if cards else None


def training_wall(log_path, step):
  """Seconds of the invocations (console "steps a -> b" and /usr/bin/time lines) that trained up to `step`."""
  log = open(log_path).read()
  ends = [int(b) for b in re.findall(r"steps +\d+ -> (\d+)", log)]
  walls = [float(w) for w in re.findall(r"time: .* ([\d.]+) wall", log)]
  return sum(w for end, w in zip(ends, walls) if end <= step)


def mean_se(values, scale=1.0, digits=2):
  v = np.asarray(values, float) * scale
  se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
  return f"{v.mean():.{digits}f} +- {se:.{digits}f}"


def table(args):
  print("| setting | steps | seeds | modes: paper / ours | high quality %: paper / ours | reverse KL: paper / ours "
        "| ours per seed (modes, HQ %, KL) | training wall / run |")
  print("|---|---|---|---|---|---|---|---|")
  for preset in args.presets:
    for steps in args.steps or [None]:
      row(args, preset, steps)


def row(args, preset, steps):
  m = re.fullmatch(r"(ring|grid)(?:_pac(\d))?(_cpu)?", preset)
  mixture, pack = m.group(1), int(m.group(2) or 1)
  cards, walls = [], []
  for seed in args.seeds:
    workdir = os.path.join(args.root, f"{preset}_s{seed}")
    card = os.path.join(workdir, "eval", f"{steps}.json") if steps else last_card(workdir)
    if card and os.path.exists(card):
      cards.append(json.load(open(card)))
      walls.append(training_wall(workdir + ".log", cards[-1]["step"]))
  if cards:
    vals = [c["metrics"] for c in cards]
    modes = [v["modes_covered"] for v in vals]
    hq = [v["high_quality"] for v in vals]
    kl = [v["mode_reverse_kl"] if v["mode_reverse_kl"] is not None else float("nan") for v in vals]
    paper = PUBLISHED[(mixture, pack)]
    per_seed = "; ".join(f"{a}, {100 * b:.1f}, {c:.2f}" for a, b, c in zip(modes, hq, kl))
    name = "GAN" if pack == 1 else f"PacGAN{pack}"
    wall = f"{np.mean(walls) / 60:.0f} min" if any(walls) else "-"
    print(f"| {mixture} {name} | {cards[0]['step']:,} (paper 400,000) | {len(cards)} | {paper[0]} / "
          f"{mean_se(modes, digits=1)} | {paper[1]} / {mean_se(hq, 100, 1)} | {paper[2]} / {mean_se(kl)} | "
          f"{per_seed} | {wall} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", choices=("run", "table"))
  parser.add_argument("--root", default="runs/gan_2d")
  parser.add_argument("--presets", type=lambda s: s.split(","), default=PRESETS)
  parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
  parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=None,
                      help="run: train to the last of these; table: one row per step (default: the last card)")
  parser.add_argument("--num-devices", type=int, default=1, help="1: no per-step collectives for these tiny nets")
  parser.add_argument("--force", action="store_true", help="run again even where a card exists")
  parser.add_argument("flags", nargs="*", help="extra --config.* flags for every run (after --)")
  args = parser.parse_intermixed_args()
  run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
  main()
