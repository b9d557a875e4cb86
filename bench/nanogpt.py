"""`experiments/gpt.py:cpu` against nanoGPT's own train.py: the CPU baby GPT, side by side, alternating rounds.

What it measures, per round and for each side: the wall time of the whole training command (interpreter start
to exit: imports, data loading, compilation, the evaluations and checkpoints each program makes by default),
the training step time from each program's own log lines (ours: 1000 / the median of its `steps/s` lines
after the first, each a mean over log_every_steps; nanoGPT: the median of its per-iteration `time` after the
first, the mean printed too), and the final validation loss.

  ours:    python -m aigc_jax.main --config=experiments/gpt.py:cpu --workdir=<scratch>/ours \\
               --config.data.name=text_file --config.data.path=<data>
  nanoGPT: python <nanogpt>/train.py config/train_shakespeare_char.py <the CPU flags of nanoGPT's README>

Both at their defaults: ours without XLA_FLAGS (the CLI's own CPU device rule), nanoGPT without
OMP_NUM_THREADS / MKL_NUM_THREADS (torch's own thread count); everything else in the environment, PYTHONPATH
included, is passed through, and both run with this interpreter. The nanoGPT command is read from the
checkout's README.md (the line starting `python train.py config/train_shakespeare_char.py --device=cpu`) and
its model and optimiser settings are checked against our preset. nanoGPT runs from the path given by
`--nanogpt` (nothing of it is copied into this repository): each round builds a scratch directory holding
data/shakespeare_char/{input.txt = --data, prepare.py copied from the checkout} (prepare.py then writes
train.bin, val.bin and meta.pkl there; it downloads nothing when input.txt exists) and links to the
checkout's configurator.py and config/, which train.py reads relative to its working directory. Preparing the
data is a separate step for nanoGPT, so its time is reported but not counted in nanoGPT's wall; ours reads
and tokenises the text inside the timed command.

Validation loss, two protocols:
  - ours: `bench/text.py val` on the final checkpoint (eval.text_batches = 200 random windows of 12 x 64 from
    the last 10% of the text, fixed seed);
  - nanoGPT: its own printed `step N: ... val loss` (eval_iters = 20 random windows of 12 x 64 drawn by
    torch's generator, a noisier estimate) and, on the same 200 windows as ours (same start positions in the
    last 10%), its saved checkpoint out-shakespeare-char/ckpt.pt (nanoGPT's own model.py loads it). nanoGPT
    saves ckpt.pt only when its val loss improves (always_save_checkpoint = False in its config), so the
    checkpoint's step is printed; it is the last evaluation's when the loss still falls at the end.
nanoGPT makes one more update after its last evaluation (its loop ends after iteration max_iters, counting
from 0): its step-N numbers are after N updates, as ours are.

  pip install torch --index-url https://download.pytorch.org/whl/cpu     # torch (CPU) for nanoGPT
  git clone https://github.com/karpathy/nanoGPT /path/to/nanoGPT
  python bench/nanogpt.py --nanogpt=/path/to/nanoGPT --data=tinyshakespeare.txt [--rounds=3] [--wait-quiet=120]
  python bench/nanogpt.py --nanogpt=/path/to/nanoGPT --data=tinyshakespeare.txt --iters=200 --rounds=1  # smoke

`--iters` shortens both runs (ours: num_train_steps and optimizer.decay_steps; nanoGPT: max_iters and
lr_decay_iters, and eval_interval = iters when iters is not a multiple of its config's eval_interval). Each
round records the load average and the share of the cores other processes used during each run
(bench/train_step.OthersCPU); medians are over the rounds where both runs had that share under `--quiet`
(all rounds if none did), and `--wait-quiet=S` waits up to S seconds for a quiet moment before each run.
Prints a line per run, then a table (median wall and min-max, median step time, median validation losses)
and the wall ratio nanoGPT / ours (> 1: ours is faster).
"""
import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "experiments/gpt.py:cpu"
README_PREFIX = "python train.py config/train_shakespeare_char.py --device=cpu"
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "README.md", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")
TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
# nanoGPT flag -> our config key, for the check that the two runs train the same model the same way.
SAME_SETTINGS = {"block_size": "model.block_size", "batch_size": "batch_size", "n_layer": "model.num_layers",
                 "n_head": "model.num_heads", "n_embd": "model.width", "dropout": "model.dropout",
                 "max_iters": "num_train_steps", "lr_decay_iters": "optimizer.decay_steps"}


def fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def readme_flags(nanogpt):
  """The --key=value flags of the CPU command in nanoGPT's README, in order, as (key, value) pairs."""
  with open(os.path.join(nanogpt, "README.md"), encoding="utf-8") as f:
    line = next((ln.strip() for ln in f if ln.strip().startswith(README_PREFIX)), None)
  if line is None:
    fail(f"{nanogpt}/README.md has no line starting {README_PREFIX!r}; is it a nanoGPT checkout?")
  flags = []
  for word in line.split()[3:]:
    key, _, value = word[2:].partition("=")
    flags.append((key, value))
  return flags


def config_value(path, key, default):
  """`key = value` at the top level of a nanoGPT config file (a Python literal), or `default`."""
  with open(path, encoding="utf-8") as f:
    m = re.search(rf"^{key}\s*=\s*([^#\n]+)", f.read(), re.M)
  return type(default)(ast.literal_eval(m.group(1).strip())) if m else default


def check_settings(config, flags):
  """Lines naming the nanoGPT flags whose value differs from our preset's (empty: the same run)."""
  out = []
  for key, value in flags:
    if key in SAME_SETTINGS:
      node = config
      for part in SAME_SETTINGS[key].split("."):
        node = node[part]
      if float(value) != float(node):
        out.append(f"nanoGPT --{key}={value} vs ours {SAME_SETTINGS[key]}={node}")
  return out


def environments():
  """(ours, theirs): the current environment less XLA_FLAGS, and less torch's thread-count variables."""
  ours = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  theirs = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
  return ours, theirs


def torch_info(env):
  probe = "import numpy, requests, torch; print(torch.__version__, torch.get_num_threads())"
  out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
  if out.returncode:
    last = (out.stderr.strip().splitlines() or ["?"])[-1]
    fail(f"nanoGPT needs torch, numpy and requests importable by {sys.executable} "
         f"(PYTHONPATH={env.get('PYTHONPATH', '')!r}): {last}; install torch with `{TORCH_INSTALL}`")
  version, threads = out.stdout.split()
  return version, int(threads)


def run_timed(cmd, cwd, env, what):
  """(wall seconds, stdout, others' CPU share) of one command; a failure is a one-line error."""
  import train_step as ts  # bench/train_step.py: OthersCPU (imported late: it imports jax)
  with ts.OthersCPU() as others:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
  if out.returncode:
    tail = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["(no output)"]
    fail(f"{what} exited with status {out.returncode}: {tail[0]}  (command: {' '.join(cmd)})")
  return wall, out.stdout + out.stderr, others.fraction


def run_ours(a, env, scratch, iters, config):
  workdir = os.path.join(scratch, "ours")
  overrides = [] if iters == config.num_train_steps else [f"num_train_steps={iters}",
                                                          f"optimizer.decay_steps={iters}"]
  cmd = [sys.executable, "-m", "aigc_jax.main", f"--config={SPEC}", f"--workdir={workdir}",
         "--config.data.name=text_file", f"--config.data.path={a.data}", *[f"--config.{o}" for o in overrides]]
  wall, log, others = run_timed(cmd, ROOT, env, "ours")
  rates = [float(r) for r in re.findall(r"\| ([\d.]+) steps/s", log)[1:]]  # the first includes compilation
  devices = re.search(r"devices\s+(.+)", log)
  preset = SPEC.rsplit(":", 1)[1]
  val_cmd = [sys.executable, os.path.join(ROOT, "bench", "text.py"), "val", f"--workdir={workdir}",
             f"--preset={preset}", "--set", "data.name=text_file", "--set", f"data.path={a.data}",
             *[x for o in overrides for x in ("--set", o)]]
  out = subprocess.run(val_cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if out.returncode:
    fail(f"bench/text.py val failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
  val = json.loads(out.stdout.strip().splitlines()[-1])
  return {"wall": wall, "others": others, "ms_per_it": 1000 / statistics.median(rates) if rates else None,
          "val": val["loss"], "val_windows": val["num_batches"], "step": val["step"],
          "devices": devices.group(1).strip() if devices else "?", "cmd": cmd}


def run_theirs(a, env, scratch, iters, flags, eval_seed, eval_batches, batch, block):
  dataset = config_value(os.path.join(a.nanogpt, "config", "train_shakespeare_char.py"), "dataset",
                         "shakespeare_char")
  data_dir = os.path.join(scratch, "data", dataset)
  os.makedirs(data_dir)
  shutil.copyfile(a.data, os.path.join(data_dir, "input.txt"))
  shutil.copyfile(os.path.join(a.nanogpt, "data", "shakespeare_char", "prepare.py"),
                  os.path.join(data_dir, "prepare.py"))
  os.symlink(os.path.join(a.nanogpt, "configurator.py"), os.path.join(scratch, "configurator.py"))
  os.symlink(os.path.join(a.nanogpt, "config"), os.path.join(scratch, "config"))
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, env=env, capture_output=True, text=True)
  prepare_s = time.perf_counter() - start
  if out.returncode:
    fail(f"nanoGPT's prepare.py failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
  args = [f"--{k}={iters if k in ('max_iters', 'lr_decay_iters') else v}" for k, v in flags]
  interval = config_value(os.path.join(a.nanogpt, "config", "train_shakespeare_char.py"), "eval_interval", 250)
  if iters % interval:
    args.append(f"--eval_interval={iters}")  # so that the last evaluation is at step `iters`
  cmd = [sys.executable, os.path.join(a.nanogpt, "train.py"), "config/train_shakespeare_char.py", *args]
  wall, log, others = run_timed(cmd, scratch, env, "nanoGPT train.py")
  evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", log)
  if not evals:
    fail("nanoGPT printed no 'step N: train loss X, val loss Y' line")
  iter_ms = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", log)]
  ckpt = os.path.join(scratch, config_value(os.path.join(a.nanogpt, "config", "train_shakespeare_char.py"),
                                            "out_dir", "out"), "ckpt.pt")
  mine = None
  if os.path.exists(ckpt):
    spec = {"nanogpt": a.nanogpt, "ckpt": ckpt, "data": a.data, "val_bin": os.path.join(data_dir, "val.bin"),
            "seed": eval_seed, "batches": eval_batches, "batch": batch, "block": block}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--eval-checkpoint", json.dumps(spec)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
      fail(f"evaluating nanoGPT's checkpoint failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    mine = json.loads(out.stdout.strip().splitlines()[-1])
  return {"wall": wall, "others": others, "prepare_s": prepare_s, "step": int(evals[-1][0]),
          "train": float(evals[-1][1]), "val": float(evals[-1][2]), "updates": len(iter_ms),
          "ms_per_it": statistics.median(iter_ms[1:]) if len(iter_ms) > 1 else None,
          "mean_ms": statistics.mean(iter_ms[1:]) if len(iter_ms) > 1 else None, "ckpt": mine, "cmd": cmd}


def eval_checkpoint(spec):
  """In a torch subprocess: nanoGPT's ckpt.pt (loaded by its own model.py) on the validation windows that
  `bench/text.py val` gives ours: the same start positions (aigc_jax.data.text.TextBatchIterator, same seed,
  batch and block size) in nanoGPT's own val.bin ids. Prints one JSON line."""
  import numpy as np
  import torch
  sys.path.insert(0, ROOT)
  sys.path.insert(0, spec["nanogpt"])
  from aigc_jax.data.text import TRAIN_FRACTION, TextBatchIterator
  from model import GPT, GPTConfig  # nanoGPT's model.py, from the checkout given
  ckpt = torch.load(spec["ckpt"], map_location="cpu", weights_only=False)
  args = ckpt["model_args"]
  model = GPT(GPTConfig(**args))
  model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
  model.eval()
  ids = np.fromfile(spec["val_bin"], dtype=np.uint16).astype(np.int64)
  with open(spec["data"], encoding="utf-8") as f:
    text = f.read()
  ours_len = len(text) - int(len(text) * TRAIN_FRACTION)
  windows = TextBatchIterator(ids, spec["block"], spec["batch"], spec["seed"] + 1_000_003)
  losses = []
  with torch.no_grad():
    for _ in range(spec["batches"]):
      w = torch.from_numpy(next(windows)["tokens"]).long()
      losses.append(model(w[:, :-1].contiguous(), w[:, 1:].contiguous())[1].item())
  print(json.dumps({"step": int(ckpt["iter_num"]), "val": float(np.mean(losses)), "windows": len(losses),
                    "same_split": len(ids) == ours_len}))


def spread(values, digits=1):
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def median(values, digits=4):
  values = [v for v in values if v is not None]
  return f"{statistics.median(values):.{digits}f}" if values else "-"


def main():
  if len(sys.argv) == 3 and sys.argv[1] == "--eval-checkpoint":
    eval_checkpoint(json.loads(sys.argv[2]))
    return
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--nanogpt", default="", help="a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)")
  p.add_argument("--data", default="", help="the text file (tiny Shakespeare's input.txt)")
  p.add_argument("--rounds", type=int, default=3, help="rounds; each runs ours, then nanoGPT")
  p.add_argument("--iters", type=int, default=0, help="training iterations (0: the README's, 2,000)")
  p.add_argument("--quiet", type=float, default=0.1, help="others' CPU share under which a run counts as quiet")
  p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                 help="wait up to this long for a quiet moment before each run")
  p.add_argument("--target-val", type=float, default=1.90, help="the validation loss ours must reach")
  a = p.parse_args()
  if not a.nanogpt:
    fail("--nanogpt=PATH is required: a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)")
  a.nanogpt = os.path.abspath(os.path.expanduser(a.nanogpt))
  if not os.path.isdir(a.nanogpt):
    fail(f"--nanogpt={a.nanogpt} is not a directory; give a nanoGPT checkout")
  missing = [f for f in NANOGPT_FILES if not os.path.isfile(os.path.join(a.nanogpt, f))]
  if missing:
    fail(f"--nanogpt={a.nanogpt} is not a nanoGPT checkout: {', '.join(missing)} missing")
  if not a.data or not os.path.isfile(a.data):
    fail(f"--data={a.data!r} is not a file; give the tiny Shakespeare text (nanoGPT's input.txt)")
  a.data = os.path.abspath(a.data)
  if a.rounds < 1:
    fail("--rounds must be at least 1")
  env_ours, env_theirs = environments()
  torch_version, torch_threads = torch_info(env_theirs)
  flags = readme_flags(a.nanogpt)

  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  from aigc_jax.configs import load_experiment
  import train_step as ts  # bench/train_step.py: OthersCPU, wait_for_quiet
  name, preset = SPEC.rsplit(":", 1)
  config = load_experiment(os.path.join(ROOT, name), preset)
  iters = a.iters or int(dict(flags)["max_iters"])
  if iters <= config.optimizer.warmup_steps:
    fail(f"--iters={iters} must exceed the {config.optimizer.warmup_steps} warm-up iterations of both schedules")
  differ = check_settings(config, flags)
  print(f"{SPEC} vs nanoGPT ({a.nanogpt}), {iters} iterations, {a.rounds} round(s); data {a.data}")
  print("nanoGPT README CPU command: python train.py config/train_shakespeare_char.py "
        + " ".join(f"--{k}={v}" for k, v in flags))
  print("settings: " + ("same model, batch, context and schedule length as our preset" if not differ
                        else "DIFFER: " + "; ".join(differ)))
  print(f"{os.cpu_count()} cores; torch {torch_version} with {torch_threads} threads (its default); "
        f"ours without XLA_FLAGS; python {sys.executable}", flush=True)

  runs = {"ours": [], "nanoGPT": []}
  for r in range(a.rounds):
    for side in runs:
      if a.wait_quiet:
        ts.wait_for_quiet(a.wait_quiet, a.quiet)
      load = " ".join(f"{x:.2f}" for x in os.getloadavg())
      with tempfile.TemporaryDirectory(prefix="bench_nanogpt_") as scratch:
        if side == "ours":
          res = run_ours(a, env_ours, scratch, iters, config)
          detail = (f"{res['ms_per_it'] or float('nan'):.1f} ms/it | val {res['val']:.4f} "
                    f"({res['val_windows']} windows, step {res['step']}) | devices {res['devices']}")
        else:
          res = run_theirs(a, env_theirs, scratch, iters, flags, config.eval.seed, config.eval.text_batches,
                           config.batch_size, config.model.block_size)
          ck = res["ckpt"]
          detail = (f"{res['ms_per_it'] or float('nan'):.1f} ms/it (mean {res['mean_ms'] or float('nan'):.1f}) | "
                    f"val {res['val']:.4f} (its own, step "
                    f"{res['step']}, train {res['train']:.4f}) | ckpt.pt step {ck['step'] if ck else '-'} on our "
                    f"{ck['windows'] if ck else '-'} windows: {ck['val'] if ck else float('nan'):.4f} | "
                    f"{res['updates']} updates | prepare.py {res['prepare_s']:.1f} s (not in wall)")
          if ck and not ck["same_split"]:
            detail += " | WARNING: val.bin length differs from our split"
      res["load"] = load
      runs[side].append(res)
      others = f"{100 * res['others']:.0f}%" if res["others"] is not None else "-"
      if r == 0:
        print(f"  {side} command: {' '.join(res['cmd'])}")
      print(f"round {r + 1} {side:8s}: wall {res['wall']:6.1f} s | {detail} | load {load} | others' CPU {others}",
            flush=True)

  quiet = [i for i in range(a.rounds)
           if all(runs[s][i]["others"] is None or runs[s][i]["others"] < a.quiet for s in runs)]
  used = quiet or list(range(a.rounds))
  pick = lambda side, key: [runs[side][i][key] for i in used]  # noqa: E731
  print()
  which = f"those where others used under {a.quiet:.0%} of the cores" if quiet else "all: none was quiet"
  m = config.model
  print(f"{iters} iterations, batch {config.batch_size} x {m.block_size}, {m.num_layers} x {m.num_heads} x "
        f"{m.width}; medians over {len(used)} of {a.rounds} rounds ({which})")
  print("| run | wall s, median (min-max) | train ms/it, median (min-max) | val loss, own protocol | "
        f"val loss, our {config.eval.text_batches} windows |")
  print("|---|---|---|---|---|")
  ours_val = pick("ours", "val")
  print(f"| ours ({SPEC}) | {spread(pick('ours', 'wall'))} | {spread(pick('ours', 'ms_per_it'))} | "
        f"{median(ours_val)} ({config.eval.text_batches} windows) | {median(ours_val)} |")
  ckpt_vals = [c["val"] if c else None for c in pick("nanoGPT", "ckpt")]
  ckpt_steps = sorted({c["step"] for c in pick("nanoGPT", "ckpt") if c})
  print(f"| nanoGPT train.py (torch {torch_version}, {torch_threads} threads) | {spread(pick('nanoGPT', 'wall'))} | "
        f"{spread(pick('nanoGPT', 'ms_per_it'))} | {median(pick('nanoGPT', 'val'))} "
        f"(eval_iters {dict(flags).get('eval_iters', '?')}) | {median(ckpt_vals)} "
        f"(ckpt.pt of step {'/'.join(map(str, ckpt_steps)) or '-'}) |")
  ratio = statistics.median(pick("nanoGPT", "wall")) / statistics.median(pick("ours", "wall"))
  print(f"wall nanoGPT / ours: {ratio:.2f}x ({'ours faster' if ratio > 1 else 'nanoGPT faster'}); "
        f"ours wall <= nanoGPT's: {'yes' if ratio >= 1 else 'no'}; "
        f"ours val {median(ours_val)} <= {a.target_val:.2f}: "
        f"{'yes' if statistics.median(ours_val) <= a.target_val else 'no'}")


if __name__ == "__main__":
  main()
