"""The colab notebooks run headless (nbclient) with tiny step counts: quickstart.ipynb shows a sample grid and
losses, audio.ipynb plays the generated WAVs, shows spectrogram grids and writes the metric card,
text_to_image.ipynb trains the three stages of latent text-to-image diffusion and samples typed prompts and a
guidance grid."""
import base64
import os
import re

import numpy as np
import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")
STEPS = 4


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  # The kernel is a fresh process: one CPU device keeps its compile short.
  monkeypatch.setenv("XLA_FLAGS", re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                         os.environ.get("XLA_FLAGS", "")).strip())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1 and "NUM_TRAIN_STEPS" in params[0].source
  workdir = tmp_path / "run"
  params[0].source = (f"NUM_TRAIN_STEPS = {STEPS}\nWORKDIR = {str(workdir)!r}\n"
                      "CONFIG_OVERRIDES = {'model.g_width': 8, 'model.d_width': 8, 'data.image_size': 16, "
                      "'batch_size': 16, 'sample.num': 16}\nREPO_URL = ''\n")
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "colab")}}).execute()

  grid_file = workdir / "samples" / f"{STEPS}.png"
  assert grid_file.is_file()
  grid = np.asarray(Image.open(grid_file))
  assert grid.shape == (4 * 18 + 2, 4 * 18 + 2)  # 16 samples of 16x16 in a 4x4 grid with 2-pixel gaps
  assert (workdir / "checkpoints" / str(STEPS)).is_dir()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  shown = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
  assert len(shown) == 2  # the sample grid and the loss curve
  assert shown[0] == grid_file.read_bytes()
  text = "".join(o.get("text", "") for o in outputs)
  assert f"trained steps: {STEPS}" in text
  losses = re.search(r"^g_loss (.*)$", text, re.M).group(1).split()
  assert [int(p.split(":")[0]) for p in losses] == list(range(1, STEPS + 1))  # log_every_steps = 1 here
  assert all(np.isfinite(float(p.split(":")[1])) for p in losses)
  assert (workdir / "loss_curve.png").is_file()


AUDIO_NOTEBOOK = os.path.join(ROOT, "colab", "audio.ipynb")
AUDIO_RATE, AUDIO_T = 8000, 1024


def write_tone_folder(path):
  """audio_folder layout: classes 'a' and 'b' (labels 0, 1), 4 clips each: a tone at 500 Hz or 1500 Hz."""
  from aigc_jax.media.audio import encode_wav, to_int16
  t = np.arange(AUDIO_T) / AUDIO_RATE
  for label, freq in (("a", 500.0), ("b", 1500.0)):
    os.makedirs(path / label)
    for i in range(4):
      clip = 0.5 * np.sin(2 * np.pi * freq * t + i)
      (path / label / f"{i}.wav").write_bytes(encode_wav(to_int16(clip)[:, None], AUDIO_RATE))


def test_audio_notebook_trains_diffwave_and_plays_wavs(tmp_path, monkeypatch):
  """colab/audio.ipynb on a tiny DiffWave (C = 8, 2 layers) and a folder of tones: the inline players hold the
  trainer's WAVs at data.sample_rate, the spectrogram grids are the medium's PNGs, the metric card is written."""
  import io
  import json
  import wave
  monkeypatch.setenv("XLA_FLAGS", re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                         os.environ.get("XLA_FLAGS", "")).strip())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(AUDIO_NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1 and "NUM_TRAIN_STEPS" in params[0].source and "EVALUATE" in params[0].source
  write_tone_folder(tmp_path / "tones")
  workdir = tmp_path / "run"
  overrides = {"data.name": "audio_folder", "data.path": str(tmp_path / "tones"), "data.sample_rate": AUDIO_RATE,
               "data.clip_seconds": AUDIO_T / AUDIO_RATE, "model.residual_channels": 8, "model.residual_layers": 2,
               "model.dilation_cycle": 2, "model.num_classes": 2, "sample.num": 4, "eval.num_samples": 10,
               "eval.batch_size": 10, "eval.classifier_steps": 2}
  params[0].source = (f"NUM_TRAIN_STEPS = 2\nWORKDIR = {str(workdir)!r}\nCONFIG_OVERRIDES = {overrides!r}\n"
                      "EVALUATE = True\nREPO_URL = ''\n")
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "colab")}}).execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert "trained steps: 2" in text
  # sample.num = 4 on a 2x2 grid: ids 0, 1 ask for digit 0, ids 2, 3 for digit 1; one player per digit.
  np.testing.assert_array_equal(np.load(workdir / "samples" / "2.npz")["labels"], [0, 0, 1, 1])
  players = [o["data"]["text/html"] for o in outputs if "<audio" in o.get("data", {}).get("text/html", "")]
  assert len(players) == 2
  for player, i in zip(players, (0, 2)):
    wav_bytes = (workdir / "samples" / "2_audio" / f"{i:03d}.wav").read_bytes()
    assert base64.b64encode(wav_bytes).decode() in player  # the trainer's WAV, embedded as is
    with wave.open(io.BytesIO(wav_bytes)) as w:
      assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (AUDIO_RATE, 1, 2, AUDIO_T)
  shown = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
  real_png = workdir / "real" / "train_spectrograms.png"
  generated_png = workdir / "samples" / "2_spectrograms.png"
  assert shown == [generated_png.read_bytes(), real_png.read_bytes()]
  # The real grid has the generated grid's layout (4 tiles, 2x2).
  assert np.asarray(Image.open(real_png)).shape == np.asarray(Image.open(generated_png)).shape
  assert sorted(os.listdir(workdir / "real" / "train_audio")) == ["000.wav", "001.wav", "002.wav", "003.wav"]
  for i, freq in ((0, 500.0), (2, 1500.0)):  # real clips of the digit each generated tile asked for
    with wave.open(str(workdir / "real" / "train_audio" / f"{i:03d}.wav")) as w:
      x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
    assert np.argmax(np.abs(np.fft.rfft(x))) * AUDIO_RATE / len(x) == pytest.approx(freq, abs=AUDIO_RATE / AUDIO_T)
  card = json.loads((workdir / "eval" / "2.json").read_text())
  assert card["num_generated"] == 10 and {"fid", "is", "class_accuracy"} <= set(card["metrics"])
  assert '"class_accuracy"' in text


T2I_NOTEBOOK = os.path.join(ROOT, "colab", "text_to_image.ipynb")
T2I_STEPS = 3


def _png(data: bytes) -> np.ndarray:
  import io
  return np.asarray(Image.open(io.BytesIO(data)))


def test_text_to_image_notebook_trains_three_stages_then_prompt_rows_and_a_guidance_grid(tmp_path, monkeypatch):
  """colab/text_to_image.ipynb at tiny widths (compiles dominate: one U-Net level, attention only in the middle):
  the autoencoder, CLIP and the latent U-Net train T2I_STEPS steps each, the U-Net on the autoencoder's latents
  with CLIP's text tower; the figures shown are the harness's PNGs enlarged pixel for pixel; the typed prompts get
  one row each, of samples drawn for that prompt; the guidance grid's rows move away from the unconditional row
  as the scale grows (same noise: uncond + s (cond - uncond))."""
  import json
  monkeypatch.setenv("XLA_FLAGS", re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                         os.environ.get("XLA_FLAGS", "")).strip())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(T2I_NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1 and all(k in params[0].source for k in ("AUTOENCODER_STEPS", "CLIP_STEPS",
                                                                   "DIFFUSION_STEPS", "DIFFUSION_OVERRIDES"))
  runs = tmp_path / "runs"
  ae = {"batch_size": 8, "model.ch": 8, "model.ch_mult": (1,), "model.mid_attention": False,
        "model.perceptual_weight": 0.0, "sample.num": 16}  # 8x8x4 latents
  clip = {"batch_size": 16, "model.embed_dim": 16, "model.vision_width": 16, "model.text_width": 16,
          "model.vision_layers": 1, "model.text_layers": 1, "model.vision_heads": 2, "model.text_heads": 2,
          "sample.num": 16}
  # lr 1e-2 without EMA: three steps move the zero-initialised cross-attention enough for guidance to show.
  ldm = {"batch_size": 8, "model.ch": 32, "model.ch_mult": (1,), "model.num_res_blocks": 1,
         "model.attn_resolutions": (), "optimizer.warmup_steps": 0, "optimizer.learning_rate": 1e-2,
         "sample.use_ema": False, "sample.steps": 2}
  params[0].source = (f"AUTOENCODER_STEPS = CLIP_STEPS = DIFFUSION_STEPS = {T2I_STEPS}\nWORKDIR = {str(runs)!r}\n"
                      f"AUTOENCODER_OVERRIDES = {ae!r}\nCLIP_OVERRIDES = {clip!r}\nDIFFUSION_OVERRIDES = {ldm!r}\n"
                      "REPO_URL = ''\n")
  ae_dir, clip_dir, ldm_dir = runs / "autoencoder_kl_cpu", runs / "clip_cpu", runs / "latent_diffusion_cpu"
  prompt_samples = {}

  def after_cell(cell, cell_index, execute_reply):
    """The prompt cell's samples, before the guidance cell's --mode=sample overwrites <step>.npz."""
    if "PROMPTS = [" in cell.source:
      with np.load(ldm_dir / "samples" / f"{T2I_STEPS}.npz") as f:
        prompt_samples.update(f)

  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", on_cell_executed=after_cell,
                          resources={"metadata": {"path": os.path.join(ROOT, "colab")}}).execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert text.count(f"trained steps: {T2I_STEPS}") == 3
  for d in (ae_dir, clip_dir, ldm_dir):
    assert (d / "checkpoints" / str(T2I_STEPS)).is_dir()
  assert "latents (8, 8, 4) per (8, 8, 1) image" in text  # one autoencoder level: f = 1
  shown = [_png(base64.b64decode(o["data"]["image/png"])) for o in outputs if "image/png" in o.get("data", {})]
  assert len(shown) == 4
  # Autoencoder and CLIP figures: the harness's 4x4 grids of 8x8 tiles, enlarged 4x with nearest pixels.
  for figure, d in zip(shown[:2], (ae_dir, clip_dir)):
    written = np.asarray(Image.open(d / "samples" / f"{T2I_STEPS}.png"))
    assert written.shape[:2] == (4 * 10 + 2, 4 * 10 + 2)
    np.testing.assert_array_equal(figure[::4, ::4], written)
  card = json.loads((clip_dir / "eval" / f"{T2I_STEPS}.json").read_text())
  assert f"zero-shot accuracy: {card['metrics']['zero_shot_accuracy']:.3f}" in text
  assert {"text_to_image_recall@1", "image_to_text_recall@1"} <= set(card["metrics"])
  # Prompts: 4 typed prompts, 8 per row, from a square sample grid of 8 columns whose row r asks for prompt r % 4.
  prompts = ["a handwritten zero", "the digit three", "a seven written by hand", "the number nine"]
  assert all(f"row {r}: {prompts[r % 4]}" in text for r in range(8))
  ids = prompt_samples["prompt_ids"]
  np.testing.assert_array_equal(ids, np.repeat(np.arange(8) % 4, 8))
  from aigc_jax.media import images as images_lib
  tiles = np.concatenate([prompt_samples["images"][ids == p][:8] for p in range(4)])
  grid = images_lib.image_grid(tiles, ncols=8)  # the npz holds the samples as uint8
  rows_figure = shown[2]
  assert rows_figure.shape[0] == 4 * (4 * 10 + 2)
  right = rows_figure[::4, -4 * (8 * 10 + 2)::4]  # the labels are on the left
  np.testing.assert_array_equal(right, np.repeat(grid, 3, axis=-1))
  # Guidance: one row per scale (0, 1, 3, 7) of 8 samples, the same noise in every row.
  guidance = np.asarray(Image.open(ldm_dir / "samples" / f"{T2I_STEPS}_guidance.png"))
  assert guidance.shape[:2] == (4 * 10 + 2, 8 * 10 + 2)
  np.testing.assert_array_equal(shown[3][::6, ::6], guidance)
  assert (ldm_dir / "samples" / f"{T2I_STEPS}_guidance.txt").read_text().splitlines() == [
      "prompt: a handwritten seven"] + [f"row {k}: guidance_scale {g}" for k, g in enumerate((0.0, 1.0, 3.0, 7.0))]
  rows = [guidance[2 + 10 * k:10 + 10 * k].astype(np.int64) for k in range(4)]
  distance = [np.abs(rows[k] - rows[0]).mean() for k in (1, 2, 3)]
  assert 0 < distance[0] < distance[1] < distance[2], distance
