"""WaveNet: mu-law closed forms, causality (exact, by perturbation and by gradient), cached == naive generation
(same mu-law indices for the same keys), a 2-step CLI run on a tiny registered audio source that writes WAVs
and a test-split NLL, and one-line config errors. Tiny widths and clips of 32-256 samples."""
import json
import math
import os
import sys
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import configs, data, parallel
from aigc_jax.data.audio import AudioSet, audio_source
from aigc_jax.errors import UserError
from aigc_jax.families import wavenet, wavenet_lib
from aigc_jax.models.wavenet import WaveNet, receptive_field

TINY = {"model.residual_channels": 8, "model.dilation_channels": 8, "model.skip_channels": 16,
        "model.layers_per_stack": 2, "model.stacks": 2, "model.num_classes": 3, "data.sample_rate": 8000}


def tiny_config(clip_samples: int, **overrides):
  c = wavenet.default_config()
  configs.override(c, {**TINY, "data.clip_seconds": clip_samples / 8000, **overrides})
  return configs.lock(c)


def test_mu_law_round_trip_and_known_bins():
  mu = 255
  known, ends = jax.jit(lambda v, i: (wavenet_lib.mu_law_encode(v), wavenet_lib.mu_law_decode(i)))(
      jnp.array([-1.0, 0.0, 1.0, -2.0, 2.0]), jnp.array([0, 255, 128]))
  assert np.asarray(known).tolist() == [0, 128, 255, 0, 255]
  # decode(128) is the centre f = 1/255 of the bin holding 0: x = (256^(1/255) - 1) / 255.
  np.testing.assert_allclose(np.asarray(ends), [-1.0, 1.0, (256 ** (1 / 255) - 1) / 255], rtol=1e-5, atol=1e-7)
  x = jnp.linspace(-1.0, 1.0, 20001)
  round_trip = lambda v: (wavenet_lib.mu_law_encode(v), wavenet_lib.mu_law_decode(wavenet_lib.mu_law_encode(v)))
  index, x_hat = jax.jit(round_trip)(x)
  f = lambda v: np.sign(v) * np.log1p(mu * np.abs(v)) / np.log1p(mu)
  # Within half a bin (1/255 in the companded domain) of the input, and the nearest bin centre.
  assert np.max(np.abs(f(np.asarray(x_hat, np.float64)) - f(np.asarray(x, np.float64)))) <= 1 / mu + 1e-6
  np.testing.assert_array_equal(np.asarray(index), np.rint((f(np.asarray(x, np.float64)) + 1) / 2 * mu).astype(int))
  assert np.all(np.diff(np.asarray(index)) >= 0) and set(np.asarray(index).tolist()) == set(range(256))


def test_logistic_mixture_is_a_distribution_over_the_bins_and_the_loss_is_one_of_its_entries():
  k = 4
  params_Nx3K = jnp.concatenate([jax.random.normal(jax.random.key(0), (6, k)),            # mixture logits
                                 jax.random.uniform(jax.random.key(1), (6, k), minval=-1.2, maxval=1.2),  # means
                                 jax.random.uniform(jax.random.key(2), (6, k), minval=-8, maxval=0)], -1)
  logits_Nx256 = np.asarray(wavenet_lib.logistic_mixture_bin_logits(params_Nx3K), np.float64)
  assert logits_Nx256.shape == (6, 256)
  np.testing.assert_allclose(np.exp(logits_Nx256).sum(-1), 1.0, atol=2e-4)  # the bins tile [-inf, inf]
  index_N = jnp.array([0, 255, 17, 128, 200, 3])
  np.testing.assert_allclose(np.asarray(wavenet_lib.logistic_mixture_log_probs(params_Nx3K, index_N)),
                             logits_Nx256[np.arange(6), np.asarray(index_N)], rtol=1e-5, atol=1e-6)

  def one_component(mean, log_scale):  # one logistic that carries all the weight (3 others at -inf odds)
    return jnp.array([[30.0, -30, -30, -30, mean, 0, 0, 0, log_scale, 0, 0, 0]])

  # A logistic's mass on the bin [c - w, c + w]: sigmoid((c + w - m)/s) - sigmoid((c - w - m)/s).
  w = 1 / 255
  sig = lambda v: 1 / (1 + math.exp(-v))
  centre_77 = 2 * 77 / 255 - 1
  p = np.exp(np.asarray(wavenet_lib.logistic_mixture_bin_logits(one_component(centre_77, -7.0)))[0])
  assert p.argmax() == 77 and p[77] == pytest.approx(2 * sig(w / math.exp(-7.0)) - 1, rel=1e-4)  # 0.973
  s = math.exp(-2.0)
  p = np.exp(np.asarray(wavenet_lib.logistic_mixture_bin_logits(one_component(0.1, -2.0)))[0])
  c = 2 * 140 / 255 - 1
  assert p[140] == pytest.approx(sig((c + w - 0.1) / s) - sig((c - w - 0.1) / s), rel=1e-4)
  assert p[0] == pytest.approx(sig((-1 + w - 0.1) / s), rel=1e-4)          # the left tail
  assert p[255] == pytest.approx(1 - sig((1 - w - 0.1) / s), rel=1e-3)     # the right tail
  # Far from every bin's mass (a sharp component at one end, the target at the other): finite loss and gradient.
  loss = lambda q: -wavenet_lib.logistic_mixture_log_probs(q, jnp.array([200]))[0]
  value, grad = jax.value_and_grad(loss)(one_component(-0.9, -7.0))
  assert np.isfinite(float(value)) and float(value) > 50 and np.all(np.isfinite(np.asarray(grad)))


def tiny_model(kernel_size=2):
  return WaveNet(residual_channels=8, dilation_channels=8, skip_channels=16, layers_per_stack=2, stacks=2,
                 kernel_size=kernel_size, num_classes=3)


def test_causality_exact_by_perturbation_and_gradient():
  kernel_size = 3  # the family's default is 2 (the CLI test); 3 taps check the shifts beyond one dilation
  model = tiny_model(kernel_size)
  t_len, b = 48, 2
  audio_BxT = 0.5 * jax.random.uniform(jax.random.key(0), (b, t_len), minval=-1, maxval=1)
  labels_B = jnp.array([0, 2])
  targets = wavenet_lib.mu_law_encode(audio_BxT)
  variables = jax.jit(model.init)(jax.random.key(1), targets, labels_B)
  params = variables["params"]

  t, p = 29, 40

  def logits_of(audio, perturbations):
    x = wavenet_lib.teacher_forcing_inputs(wavenet_lib.mu_law_encode(audio))
    return model.apply({"params": params, "perturbations": perturbations}, x, labels_B)

  # One compiled forward run on both inputs: the same instructions on the same prefix, so "exactly" means
  # exactly (two copies of the forward inside one program may be fused differently, a few ulps apart).
  zeros = jax.tree.map(jnp.zeros_like, variables["perturbations"])
  forward = jax.jit(logits_of)
  base, changed = forward(audio_BxT, zeros), forward(audio_BxT.at[:, t].set(-audio_BxT[:, t] - 0.3), zeros)
  grads = jax.jit(jax.grad(lambda pert: jnp.sum(logits_of(audio_BxT, pert)[:, p])))(zeros)["input_h"]
  np.testing.assert_array_equal(np.asarray(changed[:, :t + 1]), np.asarray(base[:, :t + 1]))  # exactly
  assert np.all(np.abs(np.asarray(changed[:, t + 1] - base[:, t + 1])).max(-1) > 1e-4)

  # d logits[:, p] / d h[:, q] (h: the input layer's output) is exactly 0 for q > p and for q at or beyond the
  # stack's receptive field, and nonzero at q = p and at the oldest position it reaches.
  reach = receptive_field(2, 2, kernel_size) - kernel_size + 1  # positions of h one prediction reads
  nonzero_q = np.nonzero(np.abs(np.asarray(grads)).max(axis=(0, 1)) > 0)[0]  # input_h is channel-major [R, B, T]
  assert nonzero_q.max() == p and nonzero_q.min() == p - reach + 1, nonzero_q


@pytest.mark.parametrize("overrides", [{}, {"model.position_frames": 5, "model.label_dropout": 0.1,
                                            "sample.guidance_scale": 3.0},
                                       {"model.output_distribution": "logistic_mixture",
                                        "model.mixture_components": 3}])
def test_cached_generation_equals_naive_and_is_per_id(overrides):
  # Receptive field 8 < 24 samples, so the naive window slides (and must pass its clip position to the
  # position code); conditional, temperature 1; the second case also runs the guided (2B-row) generators.
  build = wavenet.build(tiny_config(24, **overrides))
  assert build.receptive_field == 8 and build.length == 24
  example = {"audio": jnp.zeros((2, 24)), "label": jnp.zeros((2,), jnp.int32)}
  state = jax.jit(build.family.init)(jax.random.key(0), example)
  ids = jnp.arange(4, dtype=jnp.int32)
  sample = jax.jit(build.family.sample, static_argnames="cached")
  cached = sample(state, jax.random.key(5), ids, cached=True)
  naive = sample(state, jax.random.key(5), ids, cached=False)
  np.testing.assert_array_equal(np.asarray(cached["audio"]), np.asarray(naive["audio"]))
  assert cached["audio"].shape == (4, 24) and np.asarray(cached["labels"]).tolist() == [0, 1, 2, 0]
  assert int(cached["audio_sample_rate"][0]) == 8000
  indices = np.asarray(wavenet_lib.mu_law_encode(cached["audio"]))
  assert len(np.unique(indices)) > 15  # real draws from a near-uniform untrained model, not a constant
  # Sample i depends on its id only (any device split gives the same samples).
  swapped = sample(state, jax.random.key(5), ids[::-1], cached=True)
  np.testing.assert_array_equal(np.asarray(swapped["audio"]), np.asarray(cached["audio"][::-1]))


def test_position_code_is_linear_between_frame_centres_and_per_class():
  # T = 12, F = 4: frame centres at t = 1, 4, 7, 10; constant before the first and after the last.
  model = WaveNet(residual_channels=4, dilation_channels=4, skip_channels=4, layers_per_stack=2, stacks=1,
                  num_classes=3, position_frames=4, clip_samples=12)
  x_BxT, labels_B = jnp.zeros((2, 12), jnp.int32), jnp.array([2, 0])
  params = model.init(jax.random.key(0), x_BxT, labels_B)["params"]
  table = np.asarray(params["position_embed"])  # [class, frame, layer, 2G]
  code = np.asarray(model.apply({"params": params}, labels_B, jnp.arange(12),
                                method=lambda m, l, t: m._position_terms(l, t)))
  assert code.shape == (2, 12, 2, 8)
  for b, k in enumerate([2, 0]):
    np.testing.assert_allclose(code[b, [0, 1, 4, 7, 10, 11]], table[k, [0, 0, 1, 2, 3, 3]], rtol=1e-6)
    np.testing.assert_allclose(code[b, 2], table[k, 0] * 2 / 3 + table[k, 1] / 3, rtol=1e-5, atol=1e-6)
  # The code moves the logits: the same inputs at another position give other outputs.
  logits = np.asarray(model.apply({"params": params}, x_BxT, labels_B))
  assert np.abs(logits[:, 1] - logits[:, 10]).max() > 1e-3


def test_label_dropout_trains_the_null_class_and_guidance_moves_samples():
  build = wavenet.build(tiny_config(24, **{"model.label_dropout": 0.5}))
  example = {"audio": 0.3 * jnp.sin(jnp.arange(8 * 24.0) / 3).reshape(8, 24), "label": jnp.arange(8) % 3}
  state = jax.jit(build.family.init)(jax.random.key(0), example)
  before = np.asarray(state["params"]["label_embed"])
  assert before.shape[:2] == (4, 4)  # [layer, 3 classes + the null class]
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  step = parallel.data_parallel(build.family.train_step, mesh)
  new_state, _ = step(parallel.replicate(state, mesh), example, jax.random.key(1))
  new_state = jax.device_get(new_state)
  moved = np.abs(np.asarray(new_state["params"]["label_embed"]) - before).max(axis=(0, 2))
  assert np.all(moved > 0), moved  # some clips trained as the null class, the others as their own
  # Guided draws differ from plain conditional ones with the same keys (the null branch enters the logits).
  guided = wavenet.build(tiny_config(24, **{"model.label_dropout": 0.5, "sample.guidance_scale": 4.0}))
  ids = jnp.arange(3, dtype=jnp.int32)
  plain_audio = jax.jit(build.family.sample)(new_state, jax.random.key(2), ids)["audio"]
  guided_audio = jax.jit(guided.family.sample)(new_state, jax.random.key(2), ids)["audio"]
  assert np.mean(np.asarray(plain_audio) != np.asarray(guided_audio)) > 0.3


# --- a 2-step run through the CLI on a tiny registered audio source --------------------------------------------

CLIP_T = 64


def clips(n, offset) -> AudioSet:
  """n clips of class k = a 300 (k + 1) Hz tone (+ 7 Hz per offset), 3 classes."""
  t = np.arange(CLIP_T) / 8000.0
  labels_N = (np.arange(n) % 3).astype(np.int32)
  freq = 300.0 * (1 + labels_N) + 7.0 * offset
  return AudioSet((0.6 * np.sin(2 * np.pi * freq[:, None] * t[None])).astype(np.float32), labels_N, 8000,
                  ("a", "b", "c"))


CONFIG_FILE = f"""
from aigc_jax.configs import lock, override
from aigc_jax.families import wavenet

def get_config():
  c = wavenet.default_config()
  override(c, {dict(TINY, **{"data.clip_seconds": CLIP_T / 8000, "model.stacks": 1})!r})
  c.data.name = "toy_clips"
  c.batch_size = 8
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.sample_every_steps = 2
  c.sample.num = 3
  c.eval.every_steps = 2
  c.eval.batch_size = 8
  return lock(c)
"""


@pytest.fixture
def toy_clips():
  splits = {"train": clips(16, 0), "test": clips(5, 1)}
  data.register_source(audio_source("toy_clips", lambda d, split: splits[split], splits=tuple(splits)))
  yield splits
  data.unregister_source("toy_clips")


def test_two_steps_through_the_cli_write_wavs_and_the_test_nll(toy_clips, tmp_path, monkeypatch, capsys):
  from aigc_jax import main
  config_path = tmp_path / "wavenet_toy.py"
  config_path.write_text(CONFIG_FILE)
  workdir = tmp_path / "run"
  monkeypatch.setattr(sys, "argv", ["aigc_jax", f"--config={config_path}", f"--workdir={workdir}"])
  with pytest.raises(SystemExit) as exit_info:
    main.run()
  assert exit_info.value.code in (0, None), capsys.readouterr()
  out = capsys.readouterr().out
  assert "bits_per_sample" in out
  wavs = sorted(os.listdir(workdir / "samples" / "2_audio"))
  assert wavs == ["000.wav", "001.wav", "002.wav"]
  with wave.open(str(workdir / "samples" / "2_audio" / "001.wav")) as w:
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (8000, 1, 2, CLIP_T)
  with open(workdir / "eval" / "2.json") as f:
    card = json.load(f)
  metrics = card["metrics"]
  # Two steps from a near-uniform start: close to log2(256) = 8 bits, and nats = bits * ln 2.
  assert 5.0 < metrics["bits_per_sample"] < 8.5, metrics
  assert metrics["loss"] == pytest.approx(metrics["bits_per_sample"] * math.log(2), rel=1e-5)


@pytest.mark.parametrize("overrides, match", [
    ({"model.layers_per_stack": 9}, "model.layers_per_stack=9 gives dilation 256, not shorter than the 256-sample clip"),
    ({"model.output_distribution": "mixture"}, "unknown model.output_distribution 'mixture'"),
    ({"model.mixture_components": 5}, "model.mixture_components=5 applies to model.output_distribution="),
    ({"model.num_classes": 0, "sample.label": 2}, "sample.label=2 needs a class-conditional model"),
    ({"sample.label": 3}, "sample.label=3 is out of range"),
    ({"model.kernel_size": 1}, "model.kernel_size=1"),
    ({"model.position_frames": 257}, r"model.position_frames=257 must be in \[0, 256\]"),
    ({"sample.guidance_scale": 2.0}, "sample.guidance_scale=2.0 needs the null class"),
    ({"model.num_classes": 0, "model.label_dropout": 0.1}, "model.label_dropout > 0 needs a class-conditional"),
    ({"model.label_dropout": 1.0}, r"model.label_dropout=1.0 must be in \[0, 1\)"),
])
def test_bad_settings_are_one_line_errors(overrides, match):
  with pytest.raises(UserError, match=match) as info:
    wavenet.make_family(tiny_config(256, **overrides))
  assert "\n" not in str(info.value)


def test_labels_outside_the_classes_are_one_line_errors():
  with pytest.raises(UserError, match=r"label 3 outside \[0, 3\) \(model.num_classes=3\)"):
    wavenet.check_labels(np.array([0, 1, 3]), 3, "toy/test")
  with pytest.raises(UserError, match="label -1 outside"):
    wavenet.check_labels(np.array([-1, 0]), 3, "toy/test")
  wavenet.check_labels(np.array([-1, 7]), 0, "toy/test")  # unconditional: labels unused
