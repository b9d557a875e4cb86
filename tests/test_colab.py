"""The colab notebooks run headless (nbclient) with tiny step counts: quickstart.ipynb shows a sample grid and
losses, audio.ipynb plays the generated WAVs, shows spectrogram grids and writes the metric card."""
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
