"""The "text" medium: token ids [N, L] under 'text', decoded with their 'text_vocab' table [N, V] into
`<step>.txt` (samples joined by TEXT_SEPARATOR)."""
import os

from aigc_jax.media.base import Medium, tmp_path

TEXT_SEPARATOR = "\n\n---------------\n\n"


def decode_texts(outputs: dict) -> list:
  """Each row of ids decoded with its own table (aigc_jax.data.text.Tokenizer.table), so the checkpoint's
  vocabulary decodes its samples."""
  from aigc_jax.data.text import decode_with_table  # lazy: aigc_jax.data imports jax
  return [decode_with_table(ids, table) for ids, table in zip(outputs["text"], outputs["text_vocab"])]


def joined(outputs: dict) -> str:
  return TEXT_SEPARATOR.join(decode_texts(outputs))


def write_files(outputs: dict, directory: str, step: int) -> list:
  path = os.path.join(directory, f"{step}.txt")
  tmp = tmp_path(path)
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(joined(outputs) + "\n")
  os.replace(tmp, path)
  return [path]


def write_summaries(writer, step: int, outputs: dict):
  # Fenced, so TensorBoard's Markdown keeps the sample's newlines.
  writer.write_texts(step, {"samples": "```\n" + decode_texts(outputs)[0] + "\n```"})


MEDIUM = Medium(name="text", aux_keys=("text_vocab",), write_files=write_files,
                write_summaries=write_summaries, echo_text=joined)
