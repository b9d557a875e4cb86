"""aigc_jax.media: each medium's files, the outputs-key check, the registry, quantisation, and TensorBoard
events written with and without TensorFlow (read back with TensorBoard's own EventAccumulator)."""
import json
import os
import subprocess
import sys
import textwrap
import wave

import numpy as np
import pytest
from PIL import Image

from aigc_jax import media
from aigc_jax.errors import UserError
from aigc_jax.media import audio, images, text, video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def uniform(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def text_outputs():
  vocab = np.array([ord(c) for c in "abc\n"], np.int32)
  return {"text": np.array([[0, 1, 3, 2], [2, 2, 1, 0]]), "text_vocab": np.stack([vocab, vocab])}


@pytest.mark.parametrize("channels", [1, 3])
def test_images_keep_todays_png_grid_and_npz(tmp_path, channels):
  x_NxHxWxC = uniform((5, 6, 7, channels))
  paths = media.write_samples({"images": x_NxHxWxC}, str(tmp_path), 3)
  assert [os.path.basename(p) for p in paths] == ["3.png", "3.npz"]
  grid = np.asarray(Image.open(paths[0]))
  assert grid.shape[:2] == (2 * (6 + 2) + 2, 3 * (7 + 2) + 2)  # ceil(sqrt(5)) = 3 columns, 2 rows
  expected = images.image_grid(images.to_uint8(x_NxHxWxC))
  np.testing.assert_array_equal(grid.reshape(expected.shape), expected)
  with np.load(paths[1]) as npz:
    assert list(npz.keys()) == ["images"] and npz["images"].dtype == np.uint8
    np.testing.assert_array_equal(npz["images"], images.to_uint8(x_NxHxWxC))
  assert sorted(os.listdir(tmp_path)) == ["3.npz", "3.png"]  # no temporary files left


def test_text_file_and_echo_as_today(tmp_path, capsys):
  paths = media.write_samples(text_outputs(), str(tmp_path), 4, echo=True)
  assert [os.path.basename(p) for p in paths] == ["4.txt"]  # no npz for text, as today
  expected = "ab\nc" + text.TEXT_SEPARATOR + "ccba"
  assert open(paths[0], encoding="utf-8").read() == expected + "\n"
  assert expected in capsys.readouterr().out


@pytest.mark.parametrize("shape,rates", [((3, 500), None), ((2, 300, 2), np.array([8000, 22050]))])
def test_audio_wavs_spectrograms_and_npz(tmp_path, shape, rates):
  outputs = {"audio": uniform(shape)}
  if rates is not None:
    outputs["audio_sample_rate"] = rates
  paths = media.write_samples(outputs, str(tmp_path), 5)
  n, t, c = shape[0], shape[1], (shape[2] if len(shape) == 3 else 1)
  expected_rates = [16000] * n if rates is None else list(rates)
  pcm_NxTxC = audio.to_int16(outputs["audio"]).reshape(n, t, c)
  assert [os.path.relpath(p, tmp_path) for p in paths] == (
      [f"5_audio/{i:03d}.wav" for i in range(n)] + ["5_spectrograms.png", "5.npz"])
  for path, pcm_TxC, rate in zip(paths, pcm_NxTxC, expected_rates):
    with wave.open(path, "rb") as w:
      assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (c, 2, rate, t)
      read = np.frombuffer(w.readframes(t), "<i2").reshape(t, c)
    np.testing.assert_array_equal(read, pcm_TxC)
  tile = audio.spectrogram(pcm_NxTxC[0] / audio.PCM_SCALE)
  assert tile.shape == (129, 1 + (max(t, 256) - 256) // 64, 1)  # 256-point FFT, hop 64, short clips padded
  spectrograms = np.asarray(Image.open(paths[n]))
  assert spectrograms.shape == images.image_grid(np.stack([tile] * n))[..., 0].shape
  with np.load(paths[-1]) as npz:
    assert npz["audio"].dtype == np.int16 and npz["audio"].shape == shape
    np.testing.assert_array_equal(npz["audio"].reshape(n, t, c), pcm_NxTxC)
    assert npz["audio_sample_rate"].dtype == np.int32 and list(npz["audio_sample_rate"]) == expected_rates


def test_spectrogram_shows_a_tone_at_its_frequency():
  rate, freq = 8000, 1000
  tone_T = 0.5 * np.sin(2 * np.pi * freq * np.arange(2048) / rate)
  image = audio.spectrogram(tone_T[:, None])[::-1, :, 0]  # row 0 = 0 Hz
  assert image.shape == (129, 1 + (2048 - 256) // 64)
  assert abs(int(np.argmax(image.mean(axis=1))) - freq * 256 // rate) <= 1


@pytest.mark.parametrize("channels,fps", [(1, 10), (3, 25)])
def test_video_gifs_frame_strip_and_npz(tmp_path, channels, fps):
  n, t, h, w = 2, 4, 6, 5
  x = uniform((n, t, h, w, channels))
  paths = media.write_samples({"video": x, "video_fps": np.full((n,), fps)}, str(tmp_path), 6)
  assert [os.path.relpath(p, tmp_path) for p in paths] == ["6_video/000.gif", "6_video/001.gif", "6_frames.png",
                                                           "6.npz"]
  frames = video.to_uint8(x)
  for path, frames_TxHxWxC in zip(paths, frames):
    with Image.open(path) as gif:
      assert (gif.n_frames, gif.size, gif.info["loop"]) == (t, (w, h), 0)
      for i in range(t):
        gif.seek(i)
        assert gif.info["duration"] == 1000 // fps
        if channels == 1:  # a grey palette holds every level: lossless
          np.testing.assert_array_equal(np.asarray(gif.convert("L")), frames_TxHxWxC[i, ..., 0])
  strip = np.asarray(Image.open(paths[2]))
  assert strip.shape[:2] == (n * (h + 2) + 2, t * (w + 2) + 2)  # one row per sample, frames left to right
  np.testing.assert_array_equal(strip[2:2 + h, 2 + (w + 2):2 + (w + 2) + w].reshape(h, w, channels), frames[0, 1])
  with np.load(paths[-1]) as npz:
    assert npz["video"].dtype == np.uint8 and npz["video"].shape == x.shape
    assert list(npz["video_fps"]) == [fps, fps]


def test_default_fps_and_one_npz_for_every_medium_and_labels(tmp_path):
  outputs = {"images": uniform((2, 4, 4, 3)), "audio": uniform((2, 100)), "video": uniform((2, 3, 4, 4, 3)),
             "labels": np.array([3, 1], np.int32), **text_outputs()}
  paths = media.write_samples(outputs, str(tmp_path), 7)
  assert sum(p.endswith(".npz") for p in paths) == 1
  with np.load(os.path.join(tmp_path, "7.npz")) as npz:
    assert sorted(npz.keys()) == ["audio", "audio_sample_rate", "images", "labels", "video", "video_fps"]
    assert list(npz["labels"]) == [3, 1] and list(npz["video_fps"]) == [8, 8]
  with Image.open(os.path.join(tmp_path, "7_video", "000.gif")) as gif:
    assert gif.info["duration"] in (120, 130)  # 125 ms in GIF's 1/100 s


def test_unknown_keys_are_one_line_user_errors_before_anything_is_written(tmp_path):
  for outputs, bad in [({"images": uniform((1, 2, 2, 1)), "pointcloud": 0}, "'pointcloud'"),
                       ({"images": uniform((1, 2, 2, 1)), "text_vocab": 0}, "'text_vocab'")]:
    with pytest.raises(UserError) as e:
      media.write_samples(outputs, str(tmp_path / "out"), 1)
    message = str(e.value)
    assert "\n" not in message and bad in message
    assert all(repr(name) in message for name in ("images", "text", "audio", "video", "audio_sample_rate"))
    assert not os.path.exists(tmp_path / "out")
  with pytest.raises(UserError, match="'pointcloud'"):
    media.write_summaries(object(), 1, {"pointcloud": 0})


def test_a_medium_registered_at_test_time_is_written_and_summarised(tmp_path):
  def write_files(outputs, directory, step):
    path = os.path.join(directory, f"{step}.json")
    with open(path, "w") as f:
      json.dump((outputs["landmarks"] * outputs["landmarks_scale"]).tolist(), f)
    return [path]

  summarised = []
  landmarks = media.Medium(name="landmarks", aux_keys=("landmarks_scale",), write_files=write_files,
                           npz_arrays=lambda o: {"landmarks": np.asarray(o["landmarks"], np.float32)},
                           write_summaries=lambda writer, step, o: summarised.append((writer, step)))
  media.register_medium(landmarks)
  try:
    assert media.get_medium("landmarks") is landmarks and "landmarks" in media.known_media()
    with pytest.raises(ValueError):
      media.register_medium(media.Medium(name="landmarks", write_files=write_files))
    outputs = {"landmarks": np.ones((2, 3)), "landmarks_scale": 2.0}
    paths = media.write_samples(outputs, str(tmp_path), 8)
    assert [os.path.basename(p) for p in paths] == ["8.json", "8.npz"]
    assert json.load(open(paths[0])) == [[2.0] * 3] * 2
    assert list(np.load(paths[1]).keys()) == ["landmarks"]
    media.write_summaries("w", 8, outputs)
    assert summarised == [("w", 8)]
  finally:
    media.unregister_medium("landmarks")
  with pytest.raises(UserError, match="'landmarks'"):
    media.write_samples({"landmarks": np.ones((2, 3))}, str(tmp_path), 9)


def test_quantize_is_what_the_files_hold_and_is_idempotent(tmp_path):
  from aigc_jax.data.pipeline import to_model_range
  x = uniform((3, 4, 4, 3))
  q = media.get_medium("images").quantize(x)
  np.testing.assert_array_equal(q, to_model_range(images.to_uint8(x)))  # as evaluation quantises today
  np.testing.assert_array_equal(media.get_medium("images").quantize(q), q)
  assert np.abs(q - x).max() <= 1 / 255 + 1e-6
  a = uniform((2, 50, 2))
  qa = media.get_medium("audio").quantize(a)
  assert qa.dtype == np.float32 and qa.shape == a.shape and np.abs(qa - a).max() <= 0.5 / 32767 + 1e-7
  np.testing.assert_array_equal(media.get_medium("audio").quantize(qa), qa)
  np.testing.assert_array_equal(audio.to_int16(qa), audio.to_int16(a))  # the WAV's levels
  assert audio.to_int16(np.array([-1.0, 1.0, 2.0])).tolist() == [-32767, 32767, 32767]
  v = uniform((1, 2, 3, 3, 1))
  np.testing.assert_array_equal(media.get_medium("video").quantize(v), images.quantize(v))
  ids = text_outputs()["text"]
  assert media.get_medium("text").quantize(ids) is ids


class RecordingWriter:
  """The MetricWriter methods media use, recording their arguments; write_videos takes no fps, as clu's."""

  def __init__(self):
    self.calls = []

  def write_images(self, step, images):  # pylint: disable=redefined-outer-name  clu's parameter name
    self.calls.append(("images", step, images))

  def write_texts(self, step, texts):
    self.calls.append(("texts", step, texts))

  def write_audios(self, step, audios, *, sample_rate):
    self.calls.append(("audios", step, audios, sample_rate))

  def write_videos(self, step, videos):
    self.calls.append(("videos", step, videos))


def test_write_summaries_sends_each_medium_to_its_writer_method():
  writer = RecordingWriter()
  x = uniform((5, 4, 4, 3))
  a = uniform((6, 80))
  outputs = {"images": x, "audio": a, "audio_sample_rate": 8000, "video": uniform((6, 2, 4, 4, 3)),
             **text_outputs()}
  media.write_summaries(writer, 9, outputs)
  calls = {c[0]: c for c in writer.calls}
  np.testing.assert_array_equal(calls["images"][2]["samples"], images.image_grid(images.to_uint8(x))[None])
  assert calls["texts"][2] == {"samples": "```\nab\nc\n```"}
  sent = calls["audios"][2]["audio_samples"]
  assert sent.shape == (4, 80, 1) and calls["audios"][3] == 8000
  np.testing.assert_array_equal(sent[..., 0], audio.quantize(a[:4]))
  sent = calls["videos"][2]["video_samples"]
  assert sent.dtype == np.uint8 and sent.shape == (4, 2, 4, 4, 3)
  writer = RecordingWriter()  # two rates: one write_audios each
  media.write_summaries(writer, 1, {"audio": a[:2], "audio_sample_rate": [8000, 16000]})
  assert [(list(c[2]), c[3]) for c in writer.calls] == [(["audio_samples_8000hz"], 8000),
                                                        (["audio_samples_16000hz"], 16000)]


def read_events(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE})
  acc.Reload()
  return acc


TF_FREE_SCRIPT = textwrap.dedent("""
  import importlib.abc, io, json, os, sys, wave
  import numpy as np
  from PIL import Image

  attempts = []
  class NoTensorFlow(importlib.abc.MetaPathFinder):  # as on a machine without TF: `import tensorflow` fails
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] == "tensorflow":
        attempts.append(name)
        raise ModuleNotFoundError(f"No module named {name!r}")
  sys.meta_path.insert(0, NoTensorFlow())

  from absl import logging
  from aigc_jax import media
  from aigc_jax.media import audio, tensorboard
  logging.set_verbosity(logging.INFO)  # as under absl.app with --verbosity 0
  imported = list(attempts)
  writer = tensorboard.create_writer(sys.argv[1])
  rng = np.random.default_rng(0)
  clips = rng.uniform(-1, 1, (2, 160))
  writer.write_hparams({"lr": 0.1, "name": "x", "sizes": (1, 2)})
  writer.write_scalars(1, {"loss": 0.5, "acc": np.float32(0.25)})
  writer.write_scalars(2, {"loss": 0.25})
  media.write_summaries(writer, 2, {"images": rng.uniform(-1, 1, (3, 4, 6, 3)), "audio": clips,
                                    "audio_sample_rate": 8000, "video": rng.uniform(-1, 1, (1, 3, 4, 6, 1)),
                                    "video_fps": [10]})
  writer.write_texts(2, {"notes": "hello"})
  writer.write_histograms(2, {"weights": rng.normal(size=100)})
  writer.close()
  other_host = tensorboard.create_writer(sys.argv[1] + "/host1", just_logging=True)
  other_host.write_scalars(1, {"loss": 1.0})
  other_host.close()
  written = list(attempts)  # TensorBoard's reader below tries TF itself

  # Read back here too: TensorBoard without TF (its stub reader still checks every record's CRC).
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(sys.argv[1], size_guidance={k: 0 for k in ea.DEFAULT_SIZE_GUIDANCE})
  acc.Reload()
  tags = acc.Tags()
  strings = lambda tag: acc.Tensors(tag)[0].tensor_proto.string_val
  grid = Image.open(io.BytesIO(strings("samples")[2]))
  gif = Image.open(io.BytesIO(strings("video_samples")[2]))
  wav = wave.open(io.BytesIO(strings("audio_samples")[0]))
  print(json.dumps({
      "imported": imported, "attempts": written, "writer": type(writer).__name__,
      "tf": "tensorflow" in sys.modules, "clu": "clu.metric_writers" in sys.modules,
      "host1": os.path.exists(sys.argv[1] + "/host1"),
      "tags": {k: sorted(tags[k]) for k in ("scalars", "images", "audio", "tensors", "histograms")},
      "plugins": {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in tags["tensors"]},
      "loss": [[e.step, e.tensor_proto.float_val[0]] for e in acc.Tensors("loss")],
      "acc": acc.Tensors("acc")[0].tensor_proto.float_val[0],
      "grid": [acc.Tensors("samples")[0].step, *[s.decode() for s in strings("samples")[:2]], *grid.size],
      "gif": [*[s.decode() for s in strings("video_samples")[:2]], len(strings("video_samples")), gif.format,
              gif.n_frames, gif.info["duration"]],
      "audio_shape": [d.size for d in acc.Tensors("audio_samples")[0].tensor_proto.tensor_shape.dim],
      "wav": [wav.getframerate(), wav.getnframes(), wav.getnchannels()],
      "pcm": strings("audio_samples")[0] == audio.encode_wav(audio.to_int16(clips[0])[:, None], 8000),
      "text": [s.decode() for s in strings("notes")],
      "histogram": acc.Histograms("weights")[0].histogram_value.num}))
""")


def test_writer_without_tensorflow_writes_readable_events(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  run = subprocess.run([sys.executable, "-c", TF_FREE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
  assert run.returncode == 0, run.stderr
  report = json.loads(run.stdout.strip().splitlines()[-1])
  # Neither `import aigc_jax.media` nor create_writer tries to import TF.
  assert report["imported"] == [] and report["attempts"] == []
  assert report["writer"] == "EventFileMetricWriter"
  assert not report["tf"] and not report["clu"]
  assert "loss=0.5" in run.stderr  # logged like clu's LoggingWriter
  assert not report["host1"]  # just_logging: no event file
  # The layout tf.summary writes (see the next test): plugin tensors, one tag for all N.
  assert report["tags"] == {"scalars": [], "images": [], "audio": [], "histograms": ["weights"],
                            "tensors": ["_hparams_/session_start_info", "acc", "audio_samples", "loss", "notes",
                                        "samples", "video_samples"]}
  assert report["plugins"] == {"_hparams_/session_start_info": "hparams", "acc": "scalars", "audio_samples": "audio",
                               "loss": "scalars", "notes": "text", "samples": "images", "video_samples": "images"}
  assert report["loss"] == [[1, 0.5], [2, 0.25]] and report["acc"] == 0.25
  assert report["grid"] == [2, "18", "14", 18, 14]  # [width, height, PNG]: a 2x2 grid of 4x6 tiles, pad 2
  assert report["gif"] == ["6", "4", 3, "GIF", 3, 100]  # [width, height, one GIF], 3 frames at video_fps = 10
  assert report["audio_shape"] == [2, 2] and report["wav"] == [8000, 160, 1] and report["pcm"]
  assert report["text"] == ["hello"] and report["histogram"] == 100


def test_writer_with_tensorflow_is_clus_and_also_writes_videos(tmp_path):
  tf = pytest.importorskip("tensorflow")  # imported here: create_writer uses clu's writer only when TF is loaded
  from aigc_jax.media import tensorboard
  writer = tensorboard.create_writer(str(tmp_path))
  rng = np.random.default_rng(0)
  media.write_summaries(writer, 3, {"images": rng.uniform(-1, 1, (4, 4, 6, 3)),
                                    "audio": rng.uniform(-1, 1, (2, 160, 1)), "audio_sample_rate": 8000,
                                    "video": rng.uniform(-1, 1, (2, 3, 4, 6, 3))})
  writer.write_scalars(3, {"loss": 0.5})
  writer.write_texts(3, {"notes": "hello"})
  writer.close()
  acc = read_events(tmp_path)
  plugins = {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in acc.Tags()["tensors"]}
  # clu writes TF2 summaries: every kind is a tensor, told apart by its plugin; the TF-free writer matches.
  assert plugins == {"samples": "images", "audio_samples": "audio", "video_samples": "images", "loss": "scalars",
                     "notes": "text"}
  strings = lambda tag: acc.Tensors(tag)[0].tensor_proto.string_val
  assert strings("samples")[:2] == [b"18", b"14"]  # [width, height, PNG], as EventFileMetricWriter writes
  assert strings("video_samples")[:2] == [b"6", b"4"] and len(strings("video_samples")) == 2 + 2
  assert strings("video_samples")[2].startswith(b"GIF89a")
  audio_shape = [d.size for d in acc.Tensors("audio_samples")[0].tensor_proto.tensor_shape.dim]
  assert audio_shape == [2, 2] and strings("audio_samples")[0].startswith(b"RIFF")  # [clips, (wav, label)]
  # The TF-free writer's records pass TF's own reader too.
  writer = tensorboard.EventFileMetricWriter(str(tmp_path / "no_tf"))
  writer.write_scalars(1, {"loss": 0.75})
  writer.write_images(1, {"grid": np.zeros((4, 6, 1), np.uint8)})
  writer.close()
  acc = read_events(tmp_path / "no_tf")
  assert float(tf.make_ndarray(acc.Tensors("loss")[0].tensor_proto)) == 0.75
  assert strings("grid")[:2] == [b"6", b"4"]
