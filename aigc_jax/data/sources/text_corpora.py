"""Text sources: any local text file(s), the Python standard library's own sources (offline, ships with every
Python) and TFDS tiny_shakespeare (online)."""
import glob
import os

from aigc_jax.data import text
from aigc_jax.data.registry import register_source
from aigc_jax.errors import UserError


def _text_file(path: str, data_dir: str):
  if not path:
    raise UserError("data.name=text_file needs --config.data.path=<file>[,<file>...]")
  return text.read_files([p for p in path.split(",") if p])


def _python_stdlib(path: str, data_dir: str):
  return text.read_files(sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))))


def _tiny_shakespeare(path: str, data_dir: str):
  import tensorflow_datasets as tfds  # lazy: TF is slow to import and only this source needs it

  from aigc_jax.data import tfds_source
  name = "tiny_shakespeare"
  fix = "prepare it with network access, or use --config.data.name=text_file --config.data.path=input.txt"
  if not tfds.builder(name, data_dir=data_dir or None).is_prepared() and tfds_source.network_unreachable():
    raise tfds_source.offline_error(name, "no network, nothing prepared", fix)
  try:
    splits = {s: tfds.as_numpy(tfds.load(name, split=s, data_dir=data_dir or None, batch_size=-1))
              for s in text.SPLITS}
  except Exception as e:  # no network, no prepared data: say what to do instead
    raise UserError(f"cannot load TFDS tiny_shakespeare ({type(e).__name__}); {fix}") from None
  return {s: "".join(t.decode("utf-8") for t in v["text"]) for s, v in splits.items()}


register_source(text.text_source("text_file", _text_file, keys=("path",),
                                 doc="data.path: one text file, or several joined by commas"))
register_source(text.text_source("python_stdlib", _python_stdlib,
                                 doc="the standard library's top-level .py files (offline)"))
register_source(text.text_source("tiny_shakespeare", _tiny_shakespeare, keys=("data_dir",),
                                 doc="TFDS tiny_shakespeare (online)"))
