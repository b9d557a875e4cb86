"""Text conditioning for the diffusion family: the caption encoder, caption dropout's null caption, and the prompt
table that sampling draws from.

`model.text_encoder` picks how a caption becomes the U-Net's cross-attention context ctx_BxLxD:
  none   no text (class-conditional or unconditional models);
  joint  a small causal text transformer (models/clip.TextTransformer's architecture, `model.text_width`,
         `text_layers`, `text_heads`) trained with the U-Net, on the data's own tokenizer (data.tokenizer ...);
  clip   the frozen text tower of a CLIP run of this project (`model.clip_workdir`; GLIDE / latent diffusion use a
         frozen pretrained text encoder the same way): its final token states, its tokenizer and context length.
         Its weights are read once when the family is built and held as constants of the compiled step (they are
         not trained and not in the checkpoint: keep the CLIP run, or its checkpoint, next to the diffusion run).
The null caption is the all-masked context: the U-Net's cross-attention then adds exactly nothing (models/unet.py),
so caption dropout (`diffusion.caption_dropout`) trains the unconditional branch classifier-free guidance needs,
and the empty prompt "" means "no caption".

Prompts (sampling, evaluation): `sample.prompt` (every sample), else `sample.prompts_file` (one prompt per line,
blank lines skipped; each row of the sample grid is one prompt, in turn), else the first caption of each test-split
image (sample i shows caption i mod the split size). A prompt longer than the text context is an error (training
captions are truncated instead); the tokenizers are byte-level, so every character has tokens.
"""
import dataclasses
import math
import os
from typing import Callable, Optional, Tuple

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data import captions
from aigc_jax.errors import UserError
from aigc_jax.media import images as images_lib
from aigc_jax.models.clip import TextTransformer

ENCODERS = ("none", "joint", "clip")
JOINT_KEYS = ("text_width", "text_layers", "text_heads")
CLIP_KEYS = ("clip_workdir",)
TEST_PROMPTS = 1000  # at most this many test captions make the default prompt table


def add_config_keys(c: ConfigDict):
  """The text keys of the diffusion family's default_config (model.*, diffusion.caption_dropout, sample.*)."""
  c.model.text_encoder = "none"      # none | joint (trained with the U-Net) | clip (frozen, model.clip_workdir)
  c.model.text_width = 128           # joint: the text transformer's width (= the cross-attention context dim)
  c.model.text_layers = 2
  c.model.text_heads = 4
  c.model.clip_workdir = ""          # clip: a run of experiments/clip.py (workdir or one checkpoints/<step>)
  c.diffusion.caption_dropout = 0.0  # probability of training a captioned example with the null caption
  c.sample.prompt = ""               # text models: every sample shows this prompt
  c.sample.prompts_file = ""         # text models: one prompt per line; grid row r shows prompt r mod the count
  c.sample.guidance_grid = ()        # text models, --mode=sample: <step>_guidance.png, a row of the first prompt
                                     # per guidance scale (same noise), e.g. (0, 1, 3, 7); needs caption_dropout


@dataclasses.dataclass(frozen=True)
class TextConditioning:
  """What the family needs: `context(params, tokens_BxL, mask_BxL) -> ctx_BxLxD` (params: the family's params
  tree, whose "text" entry the joint encoder owns), the tokenizer and context length prompts are encoded with, the
  context width, the encoder's init, and a description of the frozen CLIP for logs."""
  kind: str
  context_dim: int
  length: int
  tokenizer: captions.CaptionTokenizer
  context: Callable
  init_params: Optional[Callable] = None  # joint: rng, tokens, mask -> params of the text transformer
  clip: object = None


def enabled(config: ConfigDict) -> bool:
  return config.model.get("text_encoder", "none") != "none"


def check(config: ConfigDict, changed: Callable[[str, list], list]):
  """One-line errors for text settings that cannot work or would be ignored; `changed(section, keys)` lists the
  keys that differ from the family's defaults, as "section.key"."""
  m, s = config.model, config.sample
  if m.text_encoder not in ENCODERS:
    raise UserError(f"unknown model.text_encoder {m.text_encoder!r}; use one of {ENCODERS}")
  if m.text_encoder == "none":
    ignored = (changed("model", list(JOINT_KEYS + CLIP_KEYS)) + changed("diffusion", ["caption_dropout"]) +
               changed("sample", ["prompt", "prompts_file", "guidance_grid"]))
    if ignored:
      raise UserError(f"{ignored[0]} is only read by a text-conditional model, and model.text_encoder='none'; set "
                      "--config.model.text_encoder=joint (or clip) with captioned data, or leave it at its default")
    return
  ignored = changed("model", list(CLIP_KEYS if m.text_encoder == "joint" else JOINT_KEYS))
  if ignored:
    raise UserError(f"{ignored[0]} is not read by model.text_encoder={m.text_encoder!r}; leave it at its default")
  if m.arch != "unet":
    raise UserError(f"model.text_encoder={m.text_encoder!r} needs the U-Net's cross-attention, and model.arch="
                    f"{m.arch!r} has none; set --config.model.arch=unet or model.text_encoder=none")
  if m.num_classes:
    raise UserError(f"model.num_classes={m.num_classes} and model.text_encoder={m.text_encoder!r}: condition on "
                    "the caption or on the class, not both; set --config.model.num_classes=0")
  captions.get_captioned_source(config.data.name)  # text needs captions: a one-line error otherwise
  if not 0.0 <= config.diffusion.caption_dropout < 1.0:
    raise UserError(f"diffusion.caption_dropout must be in [0, 1), got {config.diffusion.caption_dropout}")
  if s.guidance_grid and (not config.diffusion.caption_dropout or min(s.guidance_grid) < 0):
    raise UserError(f"sample.guidance_grid={tuple(s.guidance_grid)} needs scales >= 0 and the null caption "
                    "(diffusion.caption_dropout > 0); fix the scales or set --config.sample.guidance_grid='()'")
  if s.prompt and s.prompts_file:
    raise UserError("sample.prompt and sample.prompts_file are both set; keep one")
  if m.text_encoder == "joint" and min(m.text_width, m.text_layers, m.text_heads) < 1:
    raise UserError(f"model.text_width/text_layers/text_heads must be >= 1, got {m.text_width}/{m.text_layers}/"
                    f"{m.text_heads}")
  if m.text_encoder == "joint" and m.text_width % m.text_heads:
    raise UserError(f"model.text_width={m.text_width} must be a multiple of model.text_heads={m.text_heads}")
  if m.text_encoder == "clip" and not m.clip_workdir:
    raise UserError("model.text_encoder=clip needs --config.model.clip_workdir (a run of experiments/clip.py, e.g. "
                    "runs/clip_cpu)")


def build(config: ConfigDict, dtype) -> TextConditioning:
  m = config.model
  if m.text_encoder == "joint":
    length = captions.caption_length(config.data)
    net = TextTransformer(captions.vocab_size(config.data), length, m.text_width, m.text_layers, m.text_heads,
                          embed_dim=m.text_width, dtype=dtype, token_states=True)
    return TextConditioning(
        "joint", m.text_width, length, captions.make_tokenizer(config.data),
        context=lambda params, tokens, mask: net.apply({"params": params["text"]}, tokens, mask),
        init_params=lambda rng, tokens, mask: net.init({"params": rng}, tokens, mask)["params"])
  from aigc_jax.families.clip import load_clip  # the clip family imports nothing of this one
  clip = load_clip(m.clip_workdir, key="model.clip_workdir")
  cm, d, cd = clip.config.model, config.data, clip.config.data
  mismatch = [k for k in captions.CAPTION_KEYS if k != "tokenizer_path" and
              captions.caption_value(d, k) != captions.caption_value(cd, k)]
  if mismatch:
    k = mismatch[0]
    raise UserError(f"data.{k}={captions.caption_value(d, k)!r} but the CLIP run at model.clip_workdir="
                    f"{m.clip_workdir} was trained with {captions.caption_value(cd, k)!r}; set --config.data.{k}="
                    f"{captions.caption_value(cd, k)!r} so captions are tokenised as that CLIP reads them")
  if captions.make_tokenizer(d) != clip.tokenizer:
    raise UserError(f"the data's {clip.tokenizer.kind} tokenizer differs from the one the CLIP run at "
                    f"model.clip_workdir={m.clip_workdir} was trained with (different captions?); train the CLIP on "
                    f"data.name={d.name!r}, or set data.tokenizer_path to that CLIP's tokenizer")
  net = TextTransformer(clip.model.vocab_size, clip.model.context_length, cm.text_width, cm.text_layers,
                        cm.text_heads, embed_dim=cm.embed_dim, dtype=dtype, attention_impl=cm.attention_impl or None,
                        token_states=True)
  frozen = {"params": clip.params["text"]}
  return TextConditioning("clip", cm.text_width, clip.caption_length, clip.tokenizer,
                          context=lambda params, tokens, mask: net.apply(frozen, tokens, mask), clip=clip)


def encode(text: TextConditioning, prompts, truncate: bool = False) -> Tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [N, L], mask bool [N, L]); the empty prompt "" is the null caption (all masked)."""
  prompts = list(prompts)
  tokens, mask, _ = text.tokenizer.encode_padded(prompts, text.length, truncate=truncate)
  mask[np.array([p == "" for p in prompts], bool)] = False
  return tokens, mask


def prompt_table(config: ConfigDict, text: TextConditioning) -> Tuple[tuple, np.ndarray, np.ndarray, str]:
  """(prompts, tokens [P, L], mask [P, L], layout): the prompts sampling draws from (module docstring)."""
  s = config.sample
  if s.prompt:
    return (s.prompt,), *encode(text, [s.prompt]), "one"
  if s.prompts_file:
    if not os.path.isfile(s.prompts_file):
      raise UserError(f"sample.prompts_file={s.prompts_file} does not exist; give a text file with one prompt per "
                      "line")
    with open(s.prompts_file, encoding="utf-8") as f:
      prompts = tuple(line.strip() for line in f if line.strip())
    if not prompts:
      raise UserError(f"sample.prompts_file={s.prompts_file} has no prompts (every line is blank); write one "
                      "prompt per line")
    return prompts, *encode(text, prompts), "rows"
  test = captions.load_captioned(config.data, "test")
  prompts = tuple(c[0] for c in test.captions[:TEST_PROMPTS])
  return prompts, *encode(text, prompts, truncate=True), "each"


def prompt_ids(layout: str, count: int, ids_B, columns: int):
  """Which prompt of the table sample `ids_B` shows (layout from prompt_table)."""
  if layout == "one":
    return jnp.zeros_like(ids_B)
  if layout == "rows":
    return (ids_B // columns) % count
  return ids_B % count


def _write_text(path: str, text: str):
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_figures(config: ConfigDict, directory: str, step: int, prompts: tuple, layout: str, columns: int,
                  guided_row: Callable) -> list:
  """--mode=sample's extra files: `<step>_prompts.txt`, the prompt of each row of the sample grid (sampling draws
  prompts by id alone, so no sample is needed), and with sample.guidance_grid `<step>_guidance.png` (+ .txt): row
  k = `guided_row(scale_k, 8)`, the first prompt at the k-th scale from the same noise, so the rows differ by
  guidance alone (low scales: diverse; high: faithful to the prompt, less varied)."""
  s = config.sample
  ids = np.arange(s.num)
  shown = [prompts[int(i)] for i in np.asarray(prompt_ids(layout, len(prompts), ids, columns))]
  lines = [f"row {r}: " + " | ".join(dict.fromkeys(shown[r * columns:(r + 1) * columns]))
           for r in range(math.ceil(s.num / columns))]
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{step}_prompts.txt")
  _write_text(path, "\n".join(lines) + "\n")
  if not s.guidance_grid:
    return [path]
  n = 8
  rows = [guided_row(g, n) for g in s.guidance_grid]
  figure = os.path.join(directory, f"{step}_guidance.png")
  images_lib.save_png(figure, images_lib.image_grid(images_lib.to_uint8(np.concatenate(rows)), ncols=n))
  _write_text(figure[:-4] + ".txt", f"prompt: {prompts[0]}\n" +
              "".join(f"row {k}: guidance_scale {g}\n" for k, g in enumerate(s.guidance_grid)))
  return [path, figure, figure[:-4] + ".txt"]
