"""The SC09 protocol on audio: closed forms of IS, modified IS, AM and FID; the log-mel front end against a numpy
reference; the project's log-mel classifier learning tones of four pitches; and a whole evaluation through the
runner (FID/KID/IS/PR/mIS/AM/class_accuracy through the same evaluators as images) whose card records the
protocol. A "generator" that replays the training clips must score FID 0, a zero KL term in AM and the
classifier's own train accuracy; bad setups are one-line errors.

A source of tones is registered here through aigc_jax.data.audio.audio_source, so this file needs no audio data on
disk.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.configs import base_config
from aigc_jax.data import audio as audio_data
from aigc_jax.data.audio import AudioSet
from aigc_jax.errors import UserError
from aigc_jax.evaluation import inputs, logmel, metrics, runner
from aigc_jax.evaluation.registry import check_eval_config
from aigc_jax.families import Family

RATE, T, K = 8000, 1024, 4
PITCHES_HZ = (300.0, 600.0, 1200.0, 2400.0)
SOURCE = "test_tones"
STEPS = 30


def tones(split: str) -> AudioSet:
  """Class k = a tone near PITCHES_HZ[k] (+-3%), random phase and level, faint noise; stored at 16-bit levels so
  eval.quantize leaves them unchanged."""
  n = {"train": 64, "test": 32}[split]
  rng = np.random.default_rng({"train": 0, "test": 1}[split])
  labels = (np.arange(n) % K).astype(np.int32)
  freq = np.asarray(PITCHES_HZ)[labels] * (1 + 0.03 * rng.uniform(-1, 1, n))
  t = np.arange(T) / RATE
  audio = rng.uniform(0.3, 0.8, (n, 1)) * np.sin(2 * np.pi * freq[:, None] * t + rng.uniform(0, 2 * np.pi, (n, 1)))
  audio = audio + 0.005 * rng.standard_normal((n, T))
  return AudioSet(np.asarray(np.rint(audio * 32767) / 32767, np.float32), labels, RATE,
                 tuple(f"{p:g}hz" for p in PITCHES_HZ))


@pytest.fixture(scope="module")
def tone_source():
  sets = {split: tones(split) for split in ("train", "test")}
  data_lib.register_source(audio_data.audio_source(SOURCE, lambda data, split: sets[split], splits=tuple(sets)))
  yield sets
  data_lib.unregister_source(SOURCE)


def audio_config(cache_dir, **eval_overrides):
  c = base_config()
  c.family = "replay"
  c.data.name = SOURCE
  c.data.sample_rate = RATE
  c.data.clip_seconds = T / RATE
  c.model.num_classes = K
  c.eval.cache_dir = str(cache_dir)
  c.eval.classifier_steps = STEPS
  c.eval.num_samples = 64
  c.eval.batch_size = 32
  c.eval.kid_subsets = 4
  c.eval.kid_subset_size = 16
  for k, v in eval_overrides.items():
    c.eval[k] = v
  return c


def replay_family(train: AudioSet):
  """Sample i is training clip i mod N with its label: its FID against the train split is 0."""

  def sample(state, rng, ids_B):
    rows = ids_B % state["audio"].shape[0]
    return {"audio": state["audio"][rows], "labels": state["labels"][rows],
            "audio_sample_rate": jnp.full(ids_B.shape, RATE, jnp.int32)}

  state = {"audio": jnp.asarray(train.audio_NxT), "labels": jnp.asarray(train.labels_N)}
  return Family(init=None, train_step=None, sample=sample), state


# ------------------------------------------------------------------------------------------------- closed forms

def one_hot_logits(labels, k, scale=60.0):
  return scale * np.eye(k)[labels]


def test_inception_score_closed_forms():
  labels = np.arange(200) % K  # each of the 10 splits holds every class equally often
  assert metrics.inception_score(one_hot_logits(labels, K))[0] == pytest.approx(K, rel=1e-9)
  assert metrics.inception_score(np.tile([[0.3, -1.0, 2.0, 0.5]], (200, 1)))[0] == pytest.approx(1.0, abs=1e-12)
  # Samples ordered by class (as class-conditional generation makes them): every split holds one class, so
  # the unshuffled score is 1; shuffled first, the splits see the classes again.
  by_class = one_hot_logits(np.repeat(np.arange(10), 20), 10)  # 10 classes x 20 samples = 10 splits of 20
  assert metrics.inception_score(by_class)[0] == pytest.approx(1.0, abs=1e-9)
  shuffled = metrics.inception_score(by_class, seed=0)[0]
  assert 7.0 < shuffled < 10.0
  assert metrics.inception_score(by_class, seed=0) == metrics.inception_score(by_class, seed=0)  # deterministic


def test_modified_inception_score_against_hand_computed_pairs():
  # Two samples p1 = (1/2, 1/2), p2 = (1/4, 3/4): the four ordered pairs average (KL12 + KL21) / 4.
  kl12 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
  kl21 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
  logits = np.log([[0.5, 0.5], [0.25, 0.75]])
  assert metrics.modified_inception_score(logits) == pytest.approx(math.exp((kl12 + kl21) / 4), rel=1e-12)
  # A random table against the definition's double loop; a constant prediction scores 1 (no diversity).
  p = np.random.default_rng(0).dirichlet(np.ones(5), size=7)
  pairs = [np.sum(a * np.log(a / b)) for a in p for b in p]
  assert metrics.modified_inception_score(np.log(p)) == pytest.approx(math.exp(np.mean(pairs)), rel=1e-10)
  assert metrics.modified_inception_score(np.zeros((6, 3))) == pytest.approx(1.0, abs=1e-12)


def test_am_score_against_hand_computed_values():
  p_train = np.array([0.5, 0.5])
  logits = np.log([[0.5, 0.5], [0.25, 0.75]])  # p_gen = (0.375, 0.625)
  kl = 0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)
  entropy = (math.log(2) - 0.25 * math.log(0.25) - 0.75 * math.log(0.75)) / 2
  score, kl_term, entropy_term = metrics.am_score(logits, p_train)
  assert (kl_term, entropy_term) == (pytest.approx(kl, rel=1e-12), pytest.approx(entropy, rel=1e-12))
  assert score == pytest.approx(kl + entropy, rel=1e-12)
  # Confident samples with the training class frequencies score 0.
  assert metrics.am_score(one_hot_logits(np.arange(8) % 4, 4), np.full(4, 0.25))[0] == pytest.approx(0, abs=1e-9)


def test_fid_of_identical_sets_is_zero():
  x = np.random.default_rng(0).standard_normal((300, 6)) @ np.diag([1.0, 2.0, 3.0, 0.5, 1.0, 4.0])
  assert metrics.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
  assert metrics.fid_from_features(x, x + 1.0) == pytest.approx(6.0, rel=1e-9)  # the mean term alone


# ----------------------------------------------------------------------------------------------- log-mel front end

def numpy_log_mel(audio_T, params):
  """The same definition, written independently: explicit frames, numpy's rfft."""
  pad = params.n_fft // 2
  x = np.pad(np.asarray(audio_T, np.float64), (pad, pad))
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(params.n_fft) / params.n_fft)
  frames = np.stack([x[i * params.hop:i * params.hop + params.n_fft] for i in range(params.num_frames(len(audio_T)))])
  power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 / (window.sum() / 2) ** 2
  return 10 * np.log10(np.maximum(power @ logmel.mel_filterbank(params), 1e-8))


def test_log_mel_matches_numpy_and_a_tone_lands_in_its_band():
  params = logmel.LogMelParams.for_rate(RATE)
  assert (params.n_fft, params.hop, params.num_frames(T)) == (256, 80, 13)
  assert logmel.LogMelParams.for_rate(16000).n_fft == 512 and logmel.LogMelParams.for_rate(16000).hop == 160
  centres_hz = logmel.mel_to_hz(np.linspace(logmel.hz_to_mel(params.fmin), logmel.hz_to_mel(params.fmax),
                                            params.num_mels + 2))[1:-1]
  t = np.arange(T) / RATE
  bands = (5, 20, 33)
  audio = np.stack([np.sin(2 * np.pi * centres_hz[b] * t) for b in bands]).astype(np.float32)
  db = np.asarray(jax.jit(lambda x: logmel.log_mel(x, params))(audio))
  assert db.shape == (3, 13, params.num_mels)
  for i, b in enumerate(bands):
    np.testing.assert_allclose(db[i], numpy_log_mel(audio[i], params), atol=2e-3)
    assert np.all(np.argmax(db[i, 2:-2], axis=-1) == b)  # every full frame peaks in the tone's band
    assert -1.0 < db[i, 6, b] < 2.0  # a full-scale sine: ~0 dB in its band (its main lobe spans 3 bins)
  assert np.all(np.asarray(logmel.log_mel(np.zeros((1, T)), params)) == -logmel.DB_RANGE)  # silence: the floor


# ------------------------------------------------------------------------------------------- the whole protocol

@pytest.fixture(scope="module")
def card(tone_source, tmp_path_factory):
  """One evaluation of the replay "generator" through the runner: trains the classifier (cached), then every
  sample metric on audio."""
  tmp = tmp_path_factory.mktemp("audio_eval")
  config = audio_config(tmp / "cache", metrics=("fid", "kid", "is", "pr", "mis", "am", "class_accuracy"))
  family, state = replay_family(tone_source["train"])
  logs = []
  out = runner.evaluate_state(config, str(tmp / "run"), family, parallel.make_mesh(), state, step=0,
                              log=logs.append)
  return out, logs


def test_the_classifier_learns_four_pitches_and_the_card_records_the_protocol(card):
  out, logs = card
  backbone = out["backbone"]
  assert backbone["name"] == f"audio-classifier:{SOURCE}" and any("training the" in m for m in logs)
  assert backbone["test_accuracy"] >= 0.9 and backbone["num_test"] == 32 and backbone["steps"] == STEPS
  assert len(backbone["weights_sha256"]) == 64 and backbone["sample_rate"] == RATE
  assert backbone["front_end"]["n_fft"] == 256 and backbone["feature_dim"] == 128
  assert out["reference"]["sample_rate"] == RATE and out["reference"]["num_clips"] == 64
  assert out["quantization"].startswith("16-bit") and out["num_generated"] == 64
  for name in ("mis", "am"):
    assert out["protocol"][name]["classifier"]["test_accuracy"] == backbone["test_accuracy"]
    assert out["protocol"][name]["classifier"]["weights_sha256"] == backbone["weights_sha256"]


def test_replayed_training_clips_score_the_closed_forms(card):
  out, _ = card
  m, backbone = out["metrics"], out["backbone"]
  assert abs(m["fid"]) < 1e-3  # identical sets (up to float summation order)
  assert m["am_kl"] == pytest.approx(0.0, abs=1e-9) and m["am"] == pytest.approx(m["am_entropy"], abs=1e-9)
  assert m["class_accuracy"] == pytest.approx(backbone["train_accuracy"], abs=1e-9)
  assert m["precision"] == m["recall"] == 1.0
  assert 1.0 < m["is"] <= K + 1e-6 and 1.0 < m["mis"]
  per_class = out["protocol"]["class_accuracy"]["per_class"]
  assert [e["count"] for e in per_class] == [16] * K
  assert "real test_tones test clips" in out["protocol"]["class_accuracy"]["compare_with"]


def test_bad_audio_setups_are_one_line_errors(tone_source, tmp_path, card):
  family, _ = replay_family(tone_source["train"])
  with pytest.raises(UserError, match=r"eval.backbone='inception' scores \['images'\].*audio.*classifier"):
    check_eval_config(audio_config(tmp_path, backbone="inception", metrics=("fid",)), family)
  config = audio_config(tmp_path)
  with pytest.raises(UserError, match=r"16000.*data.sample_rate=8000"):
    inputs.audio_of({"audio": np.zeros((2, T)), "audio_sample_rate": 16000}, config)
  config.model.num_classes = 0
  config.eval.metrics = ("class_accuracy",)
  with pytest.raises(UserError, match="class_accuracy.*unconditional"):
    check_eval_config(config, family)
