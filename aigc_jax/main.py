"""Command line: train, sample (and later eval) any family from an experiments/ config.

  python -m aigc_jax.main --config=experiments/dcgan.py:cpu --workdir=runs/dcgan [--mode=train|sample]
                          [--config.<key>=<value> ...]
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from aigc_jax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiments/<file>.py[:preset]", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "encode"],
                  "train (resumes automatically), sample | eval | encode from the latest checkpoint.")


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
  from aigc_jax import parallel  # after flag parsing: importing jax/TF is slow

  parallel.maybe_initialize_distributed()
  logging.set_verbosity(logging.WARNING)
  config, workdir = FLAGS.config, FLAGS.workdir
  try:
    _mode_fn(FLAGS.mode)(config, workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main)


if __name__ == "__main__":
  run()
