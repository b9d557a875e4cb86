"""Command line: train, sample (and later eval) any family from an experiments/ config.

  python -m aigc_jax.main --config=experiments/dcgan.py:cpu --workdir=runs/dcgan [--mode=train|sample]
                          [--config.<key>=<value> ...]

Every mistake a user can fix (a misspelt config key, a value of the wrong type, missing data, no
checkpoint...) ends as ONE line `error: <problem>; <fix>` on stderr and exit status 2.
"""
import difflib
import os
import sys

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from aigc_jax import hostmem
from aigc_jax.errors import UserError

# TensorFlow (imported by tf.data, TFDS and clu's writers) logs banners to stderr at import; keep the
# console for our own progress and errors unless the user asks for TF's logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiments/<file>.py[:preset]", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "encode"],
                  "train (resumes automatically), sample | eval | encode from the latest checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str):
  print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def _flag_value(argv, name):
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config_quietly(argv):
  """The config `--config=file.py[:preset]` names, without overrides; None if it cannot be loaded."""
  spec_arg = _flag_value(argv, "config")
  if not spec_arg:
    return None
  path, _, preset = spec_arg.partition(":")
  try:
    from aigc_jax.configs import load_experiment
    return load_experiment(path, preset)
  except Exception:  # the flag parser's own message says what is wrong with the file
    return None


def _overrides(argv):
  """[(dotted key, the argument)] for every --config.<key>[=value] argument."""
  out = []
  for arg in argv:
    if arg.startswith("--config."):
      out.append((arg[len("--config."):].split("=", 1)[0], arg))
  return out


def _lookup(config, dotted):
  """(value, None) if `dotted` names a field of config, else (None, (parent key, missing name, siblings))."""
  node, parent = config, []
  for part in dotted.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      siblings = sorted(node.keys()) if isinstance(node, ConfigDict) else []
      return None, (".".join(parent), part, siblings)
    node = node[part]
    parent.append(part)
  return node, None


def _describe_flag_error(error: Exception, argv) -> str:
  """One line for anything the flag parser rejects (absl prints a usage page; ml_collections a traceback)."""
  config = _load_config_quietly(argv)
  if config is not None:
    for key, arg in _overrides(argv):
      value, missing = _lookup(config, key)
      if missing:
        parent, name, siblings = missing
        where = f"config.{parent}" if parent else "the config"
        close = difflib.get_close_matches(name, siblings, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"keys there: {', '.join(siblings)}"
        return (f"unknown config key {key!r} in {arg}: {where} has no field {name!r}; {hint} "
                "(configs are locked: fix the spelling or add the key to the experiment file)")
    for key, arg in _overrides(argv):
      if f"--config.{key}" in str(error):
        value, _ = _lookup(config, key)
        reason = str(error).splitlines()[0].split(": ", 1)[-1]
        return (f"bad value in {arg}: {reason}; config.{key} expects type {type(value).__name__} "
                f"(its default is {value!r})")
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return f"cannot parse the command line ({type(error).__name__}); see --helpshort"
  detail = f" {lines[-1]}" if len(lines) > 1 else ""
  return f"{lines[0]}{detail}; see --helpshort for the flags"


def _parse_flags(argv):
  spec_arg = _flag_value(argv, "config")
  if spec_arg and not os.path.isfile(spec_arg.partition(":")[0]):
    _fail(f"config file {spec_arg.partition(':')[0]!r} not found (--config={spec_arg}); pass "
          "--config=experiments/<file>.py[:preset], relative to the current directory")
  try:
    rest = FLAGS(argv)
  except Exception as e:  # flags.Error, and ml_collections' KeyError/AttributeError for unknown keys
    _fail(_describe_flag_error(e, argv))
  try:
    FLAGS.config.keys()  # config_flags defers some load failures until first use
  except Exception as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _fail(f"cannot load --config={spec_arg}: {lines[-1] if lines else type(e).__name__}")
  return rest


def _mode_fn(mode):
  """Each mode lives in its own room; imported lazily so `--help` stays fast."""
  if mode == "train":
    from aigc_jax.trainer import train_and_evaluate
    return train_and_evaluate
  if mode == "sample":
    from aigc_jax.trainer import sample
    return sample
  if mode == "eval":
    from aigc_jax.evaluation.runner import evaluate
    return evaluate
  from aigc_jax.encoding import encode
  return encode


def _main(argv):
  del argv
  try:
    from aigc_jax import data
    from aigc_jax import parallel  # after flag parsing: importing jax is slow

    hostmem.apply(FLAGS.config.host_memory)  # before JAX starts its threads (a thread keeps its arena)
    parallel.default_host_devices()  # one CPU device per core; before JAX starts its backends
    parallel.enable_compilation_cache()

    from aigc_jax.configs import check_sizes

    logging.set_verbosity(logging.WARNING)
    check_sizes(FLAGS.config)  # a 0 batch or image size fails here, before any JAX work
    # A data.* key set by hand that the chosen source does not read would be silently ignored.
    data.check_set_keys(FLAGS.config.data, [key for key, _ in _overrides(sys.argv[1:])])
    parallel.maybe_initialize_distributed()
    mode = _mode_fn(FLAGS.mode)
    if FLAGS.mode == "train":
      mode(FLAGS.config, FLAGS.workdir, experiment=_flag_value(sys.argv[1:], "config") or "")
    else:
      mode(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    _fail(str(e))


def run():
  app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
