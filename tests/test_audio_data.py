"""Audio data: the AudioSet contract (resampling, padding/cropping, batches, resume), the offline spoken_digits
set (deterministic, disjoint test voices, cached), speech_commands under tfds.testing.mock_data, and
audio_folder with its bad inputs."""
import os

import numpy as np
import pytest

from aigc_jax import data as data_lib
from aigc_jax.configs import base_config
from aigc_jax.data import audio
from aigc_jax.errors import UserError


def audio_config(name, sample_rate=1000, clip_seconds=0.5, batch_size=8, **kw):
  c = base_config()
  c.data.name = name
  c.data.sample_rate = sample_rate
  c.data.clip_seconds = clip_seconds
  c.batch_size = batch_size
  for k, v in kw.items():
    c.data[k] = v
  return c


@pytest.fixture
def tone_source():
  """A registered audio source of 12 sine tones at 2,000 Hz of three lengths (1,000 / 400 / 1,600 samples),
  so loading at another rate and clip length exercises resampling, padding and cropping."""
  seen = {}

  def load(d, split):
    seen["keys"] = sorted(d.keys())
    t = np.arange(1600) / 2000.0
    waves = np.zeros((12, 1600), np.float32)
    for i in range(12):
      waves[i] = 0.5 * np.sin(2 * np.pi * (50 + 10 * i) * t)
    return audio.AudioSet(waves, np.arange(12, dtype=np.int32) % 3, 2000, ("a", "b", "c"))

  data_lib.register_source(audio.audio_source("test_tones", load, splits=("train",), doc="sine tones"))
  yield seen
  data_lib.unregister_source("test_tones")


def test_audio_source_resamples_fits_and_batches_resumably(tone_source):
  config = audio_config("test_tones")
  clips = audio.load_audio_set(config.data)
  # 2,000 -> 1,000 Hz, 1,600 -> 800 samples, then the most energetic 500-sample window.
  assert clips.audio_NxT.shape == (12, 500) and clips.audio_NxT.dtype == np.float32
  assert clips.sample_rate == 1000 and clips.class_names == ("a", "b", "c")
  assert audio.describe(clips) == "12 clips of 0.50 s at 1,000 Hz, 3 classes"
  # The loader saw only the declared keys (name, split, sample_rate, clip_seconds), not image_size.
  assert tone_source["keys"] == ["clip_seconds", "name", "sample_rate", "split"]
  # A tone below the new Nyquist frequency survives resampling: 50 Hz at 1 kHz, amplitude 0.5.
  expected = 0.5 * np.sin(2 * np.pi * 50 * np.arange(800) / 1000.0)
  window = clips.audio_NxT[0]
  start = int(np.argmin([np.abs(expected[s:s + 500] - window).max() for s in range(301)]))
  assert np.abs(expected[start:start + 500] - window)[20:-20].max() < 0.02
  iterator = data_lib.make_train_iterator(config)
  batches = [next(iterator) for _ in range(3)]
  assert batches[0]["audio"].shape == (8, 500) and batches[0]["label"].dtype == np.int32
  resumed = data_lib.make_train_iterator(config, start_batch=2)
  np.testing.assert_array_equal(next(resumed)["audio"], batches[2]["audio"])
  assert data_lib.example_batch(config, 4)["audio"].shape == (4, 500)
  assert "12 clips" in iterator.description


def test_fit_length_pads_at_the_end_and_crops_the_loudest_window():
  x = np.zeros((2, 10), np.float32)
  x[0, 6:9] = 1.0
  x[1, :3] = [0.1, 0.2, 0.3]
  cropped = audio.fit_length(x, 4)
  np.testing.assert_array_equal(cropped[0], [0, 1, 1, 1])  # windows 5..8 and 6..9 tie: the earliest wins
  np.testing.assert_array_equal(cropped[1], np.float32([0.1, 0.2, 0.3, 0]))
  padded = audio.fit_length(x[:, :3], 5)
  np.testing.assert_array_equal(padded[1], np.float32([0.1, 0.2, 0.3, 0, 0]))


def test_audio_keys_errors(tone_source):
  with pytest.raises(UserError, match="data.clip_seconds must be a positive"):
    audio.load_audio_set(audio_config("test_tones", clip_seconds=0.0).data)
  with pytest.raises(UserError, match="data.sample_rate must be a positive integer"):
    audio.load_audio_set(audio_config("test_tones", sample_rate=-5).data)
  with pytest.raises(UserError, match="data.image_size is not used by data source .test_tones."):
    data_lib.check_set_keys(audio_config("test_tones").data, ["data.image_size"])
  with pytest.raises(UserError, match="holds images, not audio"):
    audio.load_audio_set(audio_config("digits").data)
  with pytest.raises(UserError, match="test_tones has splits 'train', not 'test'"):
    audio.load_audio_set(audio_config("test_tones").data, "test")


def test_spoken_digits_deterministic_disjoint_voices_and_cached(tmp_path, monkeypatch):
  from aigc_jax.data.sources import audio_spoken_digits as sd
  train = sd.load_arrays(str(tmp_path / "a"), "train", 8000, num_examples=20)
  test = sd.load_arrays(str(tmp_path / "a"), "test", 8000, num_examples=10)
  again = sd.load_arrays(str(tmp_path / "b"), "train", 8000, num_examples=20)  # another fresh generation
  for key in ("audio", "labels", "voices"):
    np.testing.assert_array_equal(train[key], again[key])
  assert train["audio"].shape == (20, 8000) and train["audio"].dtype == np.int16  # 1 s at 8 kHz
  np.testing.assert_array_equal(train["labels"], np.arange(20) % 10)
  np.testing.assert_array_equal(test["labels"], np.arange(10) % 10)
  train_variants = {v.split("+")[1] for v in train["voices"]}
  test_variants = {v.split("+")[1] for v in test["voices"]}
  assert train_variants <= set(sd.TRAIN_VARIANTS) and test_variants <= set(sd.TEST_VARIANTS)
  assert not set(sd.TRAIN_VARIANTS) & set(sd.TEST_VARIANTS) and len(train_variants) > 5
  # Not silent: loud peaks, and the loudest 50 ms frame stands >= 3x (RMS) above the quietest (SNR >= 10 dB).
  clips = np.concatenate([train["audio"], test["audio"]]).astype(np.float32) / 32767
  frames = np.sqrt(np.mean(clips.reshape(30, 20, 400) ** 2, axis=-1))
  assert np.all(np.abs(clips).max(axis=1) > 0.15) and np.all(frames.max(1) > 3 * frames.min(1))
  assert len({c.tobytes() for c in clips}) == 30
  # The cache is read, not regenerated: no subprocess may run now; through the registry with a 0.5 s clip.
  monkeypatch.setattr(sd.subprocess, "run", lambda *a, **k: pytest.fail("regenerated a cached split"))
  monkeypatch.setattr(sd, "SPLIT_SIZES", {"train": 20, "test": 10})
  config = audio_config("spoken_digits", sample_rate=8000, clip_seconds=0.5, data_dir=str(tmp_path / "a"))
  clips_set = audio.load_audio_set(config.data)
  assert clips_set.class_names == sd.WORDS and clips_set.sample_rate == 8000
  np.testing.assert_array_equal(clips_set.audio_NxT, audio.fit_length(train["audio"] / np.float32(32767), 4000))
  assert audio.describe(clips_set) == "20 clips of 0.50 s at 8,000 Hz, 10 classes"
  with pytest.raises(UserError, match="spoken_digits has splits 'train', 'test', not 'validation'"):
    audio.load_audio_set(config.data, "validation")
  with pytest.raises(UserError, match="data.path is not used by data source 'spoken_digits'"):
    data_lib.check_set_keys(config.data, ["data.path"])


def test_speech_commands_sc09_through_tfds_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  from aigc_jax.data import tfds_source
  from aigc_jax.data.sources import audio_speech_commands as sc
  monkeypatch.setattr(tfds_source, "network_unreachable", lambda: False)  # mock_data stands in for the network
  config = audio_config("speech_commands", sample_rate=8000, clip_seconds=1.0, data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=6):
    raw = sc.load_sc09(str(tmp_path), "test")
    clips = audio.load_audio_set(config.data, "test")
  # Mock clips are a few dozen samples long: zero-padded at the end to 1 s at 16 kHz, labels in 0..9.
  assert raw.sample_rate == 16000 and raw.audio_NxT.shape == (6, 16000) and raw.class_names == sc.WORDS
  assert np.all(raw.audio_NxT[:, 1000:] == 0) and np.all(np.abs(raw.audio_NxT).max(axis=1) > 0)
  assert set(raw.labels_N.tolist()) <= set(range(10)) and raw.labels_N.dtype == np.int32
  # Through the registry at 8 kHz: the polyphase resampling of the same clips, same labels.
  assert clips.audio_NxT.shape == (6, 8000) and clips.class_names == sc.WORDS
  np.testing.assert_array_equal(clips.labels_N, raw.labels_N)
  np.testing.assert_allclose(clips.audio_NxT, audio.resample(raw.audio_NxT, 16000, 8000), atol=1e-7)
  # Nothing prepared and no network: the one-line offline error naming the fix, within seconds.
  monkeypatch.setattr(tfds_source, "network_unreachable", lambda: True)
  with pytest.raises(UserError, match="could not download TFDS dataset 'speech_commands_digits'.*spoken_digits"):
    audio.load_audio_set(config.data, "test")


def write_wav(path, samples, rate, width, channels=1):
  """Integer samples [T] or [T, C] as a `width`-byte PCM WAV (8-bit is unsigned, as the format says)."""
  import wave
  samples = np.asarray(samples, np.int64).reshape(len(samples), channels)
  if width == 1:
    raw = (samples + 128).astype(np.uint8).tobytes()
  elif width == 3:
    raw = samples.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
  else:
    raw = samples.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(str(path), "wb") as w:
    w.setnchannels(channels)
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(raw)


def test_audio_folder_reads_pcm_widths_rates_and_channels(tmp_path):
  rng = np.random.default_rng(0)
  tone = np.round(12000 * np.sin(2 * np.pi * 100 * np.arange(2000) / 2000)).astype(np.int64)
  write_wav(tmp_path / "a" / "1.wav", tone, 2000, 2)                       # 16-bit, 2 kHz, 1 s
  left, right = rng.integers(-128, 128, 500), rng.integers(-128, 128, 500)
  write_wav(tmp_path / "a" / "2.wav", np.stack([left, right], 1), 1000, 1, channels=2)  # 8-bit stereo
  deep = rng.integers(-2**23, 2**23, 800)
  write_wav(tmp_path / "b" / "3.wav", deep, 1000, 3)                       # 24-bit, 0.8 s
  short = rng.integers(-2**31, 2**31, 300)
  write_wav(tmp_path / "b" / "4.wav", short, 1000, 4)                      # 32-bit, 0.3 s
  (tmp_path / "b" / "notes.txt").write_text("skipped")
  (tmp_path / "a" / ".hidden.wav").write_bytes(b"skipped")
  clips = audio.load_audio_set(audio_config("audio_folder", sample_rate=1000, clip_seconds=0.5,
                                            path=str(tmp_path)).data)
  assert clips.class_names == ("a", "b") and clips.labels_N.tolist() == [0, 0, 1, 1]
  assert clips.audio_NxT.shape == (4, 500) and clips.sample_rate == 1000
  # Exact decoding where no resampling happens: stereo averaged, 24-bit cropped to its loudest window,
  # 32-bit zero-padded at the end.
  np.testing.assert_array_equal(clips.audio_NxT[1], ((left + right) / 256.0).astype(np.float32))
  np.testing.assert_array_equal(clips.audio_NxT[2], audio.fit_length((deep / 2.0**23)[None], 500)[0].astype(np.float32))
  np.testing.assert_allclose(clips.audio_NxT[3], np.pad(short / 2.0**31, (0, 200)), atol=1e-7)
  # The 2 kHz file: resampled once to 1 kHz (a 100 Hz tone survives), then its loudest half second.
  expected = audio.fit_length(audio.resample(tone[None] / 32768.0, 2000, 1000), 500)[0]
  np.testing.assert_allclose(clips.audio_NxT[0], expected, atol=1e-6)
  assert abs(np.sqrt(np.mean(clips.audio_NxT[0] ** 2)) - 12000 / 32768 / np.sqrt(2)) < 0.003  # amplitude kept


def test_audio_folder_bad_inputs_are_one_line_errors(tmp_path):
  def error(path):
    with pytest.raises(UserError) as info:
      audio.load_audio_set(audio_config("audio_folder", path=str(path)).data)
    assert "\n" not in str(info.value)
    return str(info.value)

  assert "does not exist; set --config.data.path" in error(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  assert "no WAV files found" in error(tmp_path / "empty") and "data.path" in error(tmp_path / "empty")
  write_wav(tmp_path / "ok" / "digit" / "1.wav", np.zeros(10), 1000, 2)
  (tmp_path / "ok" / "digit" / "2.wav").write_bytes(b"RIFF\x00\x00garbage")
  assert "cannot read WAV file" in error(tmp_path / "ok") and "2.wav" in error(tmp_path / "ok")
  (tmp_path / "ok" / "digit" / "2.wav").unlink()
  write_wav(tmp_path / "float" / "f.wav", np.zeros(10), 1000, 4)
  raw = bytearray((tmp_path / "float" / "f.wav").read_bytes())
  raw[20:22] = (3).to_bytes(2, "little")  # WAVE_FORMAT_IEEE_FLOAT
  (tmp_path / "float" / "f.wav").write_bytes(bytes(raw))
  assert "integer PCM WAV" in error(tmp_path / "float")
  (tmp_path / "ok" / "digit" / "3.mp3").write_bytes(b"ID3")
  assert "3.mp3 is not a WAV file" in error(tmp_path / "ok")
  (tmp_path / "ok" / "digit" / "3.mp3").unlink()
  write_wav(tmp_path / "ok" / "loose.wav", np.zeros(10), 1000, 2)
  assert "lies directly in data.path next to class sub-folders" in error(tmp_path / "ok")
  (tmp_path / "ok" / "loose.wav").unlink()
  write_wav(tmp_path / "ok" / "digit" / "deeper" / "4.wav", np.zeros(10), 1000, 2)
  assert "2 folders deep" in error(tmp_path / "ok")


def test_speech_commands_builder_splits_the_archive_by_its_own_lists(tmp_path):
  """The builder's own example generation (mock_data skips it) on a small archive shaped like Speech
  Commands: digit folders only, validation/testing lists decide the split, the rest trains."""
  import io
  import tarfile
  import wave
  tfds = pytest.importorskip("tensorflow_datasets")
  from aigc_jax.data.sources import audio_speech_commands as sc
  rng = np.random.default_rng(0)
  files = {"zero/a_nohash_0.wav": 16000, "zero/b_nohash_0.wav": 9000, "one/c_nohash_0.wav": 16000,
           "nine/d_nohash_1.wav": 12000, "bed/e_nohash_0.wav": 16000, "_background_noise_/f.wav": 100}
  samples = {name: rng.integers(-999, 999, n).astype("<i2") for name, n in files.items()}
  archive = tmp_path / "speech_commands_v0.02.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    entries = {"validation_list.txt": b"one/c_nohash_0.wav\nbed/e_nohash_0.wav\n",
               "testing_list.txt": b"nine/d_nohash_1.wav\n"}
    for name, x in samples.items():
      buf = io.BytesIO()
      with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(x.tobytes())
      entries[name] = buf.getvalue()
    for name, data in entries.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))

  class LocalDownloads:  # stands in for TFDS's download manager: no network
    def download(self, url):
      assert url == sc.ARCHIVE_URL
      return str(archive)

    def iter_archive(self, path):
      return tfds.download.iter_archive(path, tfds.download.ExtractMethod.TAR_GZ)

  builder = sc.builder_class()(data_dir=str(tmp_path / "tfds"))
  splits = {name: dict(gen) for name, gen in builder._split_generators(LocalDownloads()).items()}
  assert {k: sorted(v) for k, v in splits.items()} == {
      "train": ["zero/a_nohash_0.wav", "zero/b_nohash_0.wav"], "validation": ["one/c_nohash_0.wav"],
      "test": ["nine/d_nohash_1.wav"]}
  for examples in splits.values():
    for key, example in examples.items():
      np.testing.assert_array_equal(example["audio"], samples[key])
      assert example["label"] == key.split("/")[0] and example["label"] in sc.WORDS
