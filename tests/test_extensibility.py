"""A new medium's family, data source and metric plug in from this file alone: no library file is edited.

A toy audio family (one learned waveform), a toy source of sine tones (through the library's audio_source
helper) and a toy RMS evaluator are registered here at test time, trained 5 steps through the CLI entry point,
and leave WAV files, TensorBoard audio and a metric card behind.
"""
import json
import os
import sys
import wave

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aigc_jax import data, families, optim
from aigc_jax.data.audio import AudioSet, audio_source
from aigc_jax.evaluation import registry as evaluators
from aigc_jax.parallel import DATA_AXIS, keys_for_ids

NUM_SAMPLES_T = 400
SAMPLE_RATE = 8000


def tones() -> AudioSet:
  """64 unlabelled clips of sine tones at 8 frequencies, float32 [N, T] in [-1, 1]."""
  t_T = np.arange(NUM_SAMPLES_T) / SAMPLE_RATE
  freqs_N = 200.0 * (1 + np.arange(64) % 8)
  audio_NxT = (0.5 * np.sin(2 * np.pi * freqs_N[:, None] * t_T[None])).astype(np.float32)
  return AudioSet(audio_NxT, np.full(64, -1, np.int32), SAMPLE_RATE)


def make_toy_audio_family(config):
  tx = optax.adam(1e-2)

  def init(rng, example_batch):
    params = {"wave": 0.1 * jax.random.normal(rng, example_batch["audio"].shape[1:])}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  def train_step(state, batch, rng):
    loss_fn = lambda p: jnp.mean((jnp.tanh(p["wave"])[None] - batch["audio"]) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    grads = jax.lax.pmean(grads, DATA_AXIS)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    return new_state, {"loss": jax.lax.pmean(loss, DATA_AXIS)}

  def sample(state, rng, ids_B):
    noise_BxT = jax.vmap(lambda k: 0.01 * jax.random.normal(k, (NUM_SAMPLES_T,)))(keys_for_ids(rng, ids_B))
    audio_BxT = jnp.clip(jnp.tanh(state["params"]["wave"])[None] + noise_BxT, -1, 1)
    return {"audio": audio_BxT, "audio_sample_rate": jnp.full(ids_B.shape, SAMPLE_RATE, jnp.int32)}

  return families.Family(init=init, train_step=train_step, sample=sample)


class RMS:
  def __init__(self, ctx):
    self.sum_sq, self.count = 0.0, 0

  def consume(self, samples):
    audio = np.asarray(samples["audio"], np.float64)
    self.sum_sq += float(np.sum(audio ** 2))
    self.count += audio.size

  def finish(self):
    return {"rms": (self.sum_sq / self.count) ** 0.5}, {"rms": {"num_values": self.count}}


CONFIG_FILE = """
from aigc_jax.configs import base_config, lock

def get_config():
  c = base_config()
  c.family = "toy_audio"
  c.data.name = "toy_tones"
  c.data.sample_rate = %d
  c.data.clip_seconds = %d / %d
  c.batch_size = 8
  c.num_train_steps = 5
  c.log_every_steps = 5
  c.checkpoint_every_steps = 5
  c.sample_every_steps = 5
  c.sample.num = 3
  c.eval.every_steps = 5
  c.eval.metrics = ("rms",)
  c.eval.num_samples = 16
  c.eval.batch_size = 8
  return lock(c)
""" % (SAMPLE_RATE, NUM_SAMPLES_T, SAMPLE_RATE)


@pytest.fixture
def toy_plugins():
  clips = tones()
  # The audio helper a new source uses (resampling, clip length, batching); the loader is this file's.
  data.register_source(audio_source("toy_tones", lambda d, split: clips))
  families.register_family("toy_audio", make_toy_audio_family)
  evaluators.register_evaluator(evaluators.Evaluator(name="rms", media=("audio",), start=RMS))
  yield clips
  data.unregister_source("toy_tones")
  families.unregister_family("toy_audio")
  evaluators.unregister_evaluator("rms")


def run_cli(argv, monkeypatch):
  from aigc_jax import main
  monkeypatch.setattr(sys, "argv", ["aigc_jax"] + argv)
  with pytest.raises(SystemExit) as exit_info:
    main.run()
  return exit_info.value.code


def test_toy_audio_family_trains_through_the_cli_with_no_library_edit(toy_plugins, tmp_path, monkeypatch,
                                                                      capsys):
  config_path = tmp_path / "toy_audio.py"
  config_path.write_text(CONFIG_FILE)
  workdir = tmp_path / "run"
  assert run_cli([f"--config={config_path}", f"--workdir={workdir}"], monkeypatch) in (0, None)
  out = capsys.readouterr().out
  assert "family toy_audio" in out and "toy_tones/train: 64 clips" in out and "--mode=sample" in out

  wavs = sorted(os.listdir(workdir / "samples" / "5_audio"))
  assert wavs == ["000.wav", "001.wav", "002.wav"]
  with wave.open(str(workdir / "samples" / "5_audio" / "000.wav")) as w:
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (SAMPLE_RATE, 1, 2,
                                                                                      NUM_SAMPLES_T)
  assert (workdir / "samples" / "5_spectrograms.png").is_file()

  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0, "audio": 0})
  events.Reload()
  tags = events.Tags()
  assert any("audio" in t for t in tags.get("tensors", []) + tags.get("audio", [])), tags

  with open(workdir / "eval" / "5.json") as f:
    card = json.load(f)
  assert card["family"] == "toy_audio" and card["num_generated"] == 16
  assert 0 < card["metrics"]["rms"] < 1 and card["protocol"]["rms"]["num_values"] == 16 * NUM_SAMPLES_T


def test_a_metric_for_another_medium_is_a_one_line_error_at_train_start(toy_plugins, tmp_path, monkeypatch,
                                                                        capsys):
  config_path = tmp_path / "toy_audio.py"
  config_path.write_text(CONFIG_FILE)
  code = run_cli([f"--config={config_path}", f"--workdir={tmp_path / 'run'}", "--config.eval.metrics=('parzen',)"],
                 monkeypatch)
  err = capsys.readouterr().err
  ours = [line for line in err.splitlines() if line.startswith("error: ")]
  assert code == 2 and len(ours) == 1 and "'parzen'" in ours[0] and "audio" in ours[0] and "rms" in ours[0], err
  assert not (tmp_path / "run" / "checkpoints").exists()
