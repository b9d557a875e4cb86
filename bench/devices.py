"""One config key at two values, alternating rounds in one invocation, same preset, same steps. By default the
CPU device rule: the CLI's default (one XLA:CPU device per core, batch split over them) against
`--config.num_devices=1`; `--key=steps_per_dispatch --values=1,50` measures several steps per jitted call.

  python bench/devices.py --spec=experiments/gpt.py:cpu --steps=400 --rounds=3 \
      -- --config.data.name=text_file --config.data.path=tinyshakespeare.txt
  python bench/devices.py --spec=experiments/gan_2d.py:ring_cpu --steps=2000 --key=steps_per_dispatch --values=1,100

Reports per run the wall time of the whole command and the training rate (the median of the harness's own
`steps/s` log lines after the first, so compilation is left out), then medians and the ratio.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(spec, steps, setting, extra):
  with tempfile.TemporaryDirectory() as workdir:
    args = [sys.executable, "-m", "aigc_jax.main", f"--config={spec}", f"--workdir={workdir}",
            f"--config.num_train_steps={steps}", f"--config.log_every_steps={max(steps // 10, 1)}",
            f"--config.checkpoint_every_steps={steps}", "--config.sample_every_steps=0",
            setting, *extra]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI's own default
    start = time.time()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.time() - start
  rates = [float(r) for r in re.findall(r"\| ([\d.]+) steps/s", out)[1:]]
  devices = re.search(r"devices\s+(\d+) x", out).group(1)
  return wall, statistics.median(rates), int(devices)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--spec", default="experiments/gpt.py:cpu")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--key", default="num_devices", help="the config key compared")
  parser.add_argument("--values", default="0,1", help="its two values, the first is the candidate")
  parser.add_argument("extra", nargs="*", help="more --config flags for both runs")
  a = parser.parse_args()
  names = [f"{a.key}={v}" for v in a.values.split(",")]
  assert len(names) == 2, "--values takes two comma-separated values"
  results = {name: [] for name in names}
  for r in range(a.rounds):
    for name in names:
      wall, rate, devices = run(a.spec, a.steps, f"--config.{name}", a.extra)
      results[name].append((wall, rate))
      print(f"round {r + 1} {name:10s} ({devices} devices): wall {wall:6.1f} s | {rate:6.2f} steps/s", flush=True)
  med = {k: (statistics.median(w for w, _ in v), statistics.median(s for _, s in v)) for k, v in results.items()}
  for k, (w, s) in med.items():
    spread = [s_ for _, s_ in results[k]]
    print(f"median {k:10s}: wall {w:6.1f} s | {s:6.2f} steps/s (min {min(spread):.2f}, max {max(spread):.2f})")
  first, second = names
  print(f"{first} / {second}: {med[first][1] / med[second][1]:.2f}x steps/s, "
        f"{med[second][0] / med[first][0]:.2f}x wall")


if __name__ == "__main__":
  main()
