"""DiffWave through the diffusion family: the family's closed forms on 1-D signals [B, T], the fast sampler's
step alignment against Kong et al.'s formula, the network's receptive field and zero-initialised output,
a 2-step CLI run on a small registered audio source that writes WAVs of the digit asked for, and the
one-line config errors. Tiny shapes (clips of 64-256 samples, C = 8, 2-4 layers)."""
import math
import os
import sys
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import data as data_lib
from aigc_jax.configs import load_experiment
from aigc_jax.data.audio import AudioSet, audio_source
from aigc_jax.errors import UserError
from aigc_jax.families import get_family
from aigc_jax.families.diffusion import build_model
from aigc_jax.families.diffusion_lib import likelihood, objectives, samplers
from aigc_jax.families.diffusion_lib.schedules import make_schedule, q_sample, take
from aigc_jax.models.diffwave import DiffWave, DilatedConv, receptive_field

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments", "diffwave.py")
RATE, CLIP_T, NUM_CLASSES = 256, 256, 10


def tone_digits(rate, clip_seconds) -> AudioSet:
  """8 clips per class, class k a tone at 8 (k + 1) Hz with a per-clip phase, in [-1, 1], at `rate`."""
  labels_N = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), 8)
  phase_N = np.random.default_rng(0).uniform(0, 2 * np.pi, len(labels_N))
  time_T = np.arange(round(rate * clip_seconds)) / rate
  audio_NxT = 0.6 * np.sin(2 * np.pi * 8 * (labels_N[:, None] + 1) * time_T + phase_N[:, None])
  return AudioSet(audio_NxT.astype(np.float32), labels_N, rate, tuple(str(k) for k in range(NUM_CLASSES)))


@pytest.fixture(scope="module")
def tone_source():
  data_lib.register_source(audio_source("test_tone_digits", lambda d, split: tone_digits(d.sample_rate,
                                                                                          d.clip_seconds)))
  yield "test_tone_digits"
  data_lib.unregister_source("test_tone_digits")


def perturbed(params):
  """Params plus N(0, 0.1^2) noise, drawn on the host (no program to compile): zero-initialised output convs
  make a fresh DiffWave's output 0, which would hide what the tests look at."""
  rng = np.random.default_rng(7)
  return jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)


def tiny_config(**overrides):
  """experiments/diffwave.py:cpu shrunk: C = 8, 2 layers on single samples (no patches), 256-sample clips at
  256 Hz on the tone source."""
  values = {"data.name": "test_tone_digits", "data.sample_rate": RATE, "data.clip_seconds": 1.0,
            "model.residual_channels": 8, "model.residual_layers": 2, "model.dilation_cycle": 2, "model.patch_size": 1,
            "batch_size": 8, "sample.num": 4}
  values.update(overrides)
  return load_experiment(EXPERIMENT, "cpu", values)


@pytest.fixture(scope="module")
def tiny_family(tone_source):
  """(config, family, state) of the tiny class-conditional model, initialised once for the tests below."""
  config = tiny_config(**{"sample.label": 7})
  family = get_family(config)
  # As runtime.init_state calls it, so the CLI run below finds this program in the compilation cache.
  return config, family, jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config))


# --- the family's closed forms on [B, T] ---------------------------------------------------------------------

def test_forward_process_moments_and_exact_predictor_on_signals():
  s = make_schedule("linear", 200, 1e-4, 0.02)
  x0 = jnp.full((512, 64), -0.4)
  t = jnp.full((512,), 120)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  t_B = jnp.arange(0, 200, 25)

  @jax.jit
  def check(x0, noise):  # x_t at t = 120; per parametrisation: loss of the exact target, (x0, eps) from it
    x0_B, eps_B = x0[:8], noise[:8]
    xt_B = q_sample(s, x0_B, t_B, eps_B)
    out = {}
    for prediction in objectives.PREDICTIONS:
      target = objectives.training_target(prediction, s, x0_B, eps_B, t_B)
      out[prediction] = (objectives.loss(prediction, "simple", s, target, x0_B, eps_B, t_B),
                         *objectives.to_x0_and_eps(prediction, s, target, xt_B, t_B))
    return q_sample(s, x0, t, noise), out
  xt, per_prediction = check(x0, noise)
  xt = np.asarray(xt)
  abar = s.alphas_cumprod[120]
  assert xt.mean() == pytest.approx(math.sqrt(abar) * -0.4, abs=0.01)
  assert xt.var() == pytest.approx(1 - abar, rel=0.02)
  assert take(s.betas, t, x0).shape == (512, 1)
  x0_B, eps_B = x0[:8], noise[:8]
  for prediction, (loss, x0_hat, eps_hat) in per_prediction.items():
    assert float(loss) == 0.0, prediction
    np.testing.assert_allclose(x0_hat, x0_B, atol=2e-3)
    np.testing.assert_allclose(eps_hat, eps_B, atol=2e-3)


@pytest.mark.parametrize("std", [0.2, 1e-5])
def test_16bit_decoder_sums_to_one_over_the_pcm_levels(std):
  """Both branches: bins much narrower than the decoder's std (density x width) and much wider (CDF)."""
  levels = np.arange(-32767, 32768, dtype=np.float32) / 32767
  total = jax.jit(lambda x, log_std: jnp.sum(jnp.exp(likelihood.discretized_gaussian_log_likelihood(
      x, 0.0137, log_std, likelihood.AUDIO_16BIT))))(levels, np.float32(np.log(std)))
  assert float(total) == pytest.approx(1.0, abs=1e-4)


def noise_level_oracle(schedule, point_T):
  """The exact eps predictor for a dataset holding one clip, at any (fractional) step t: the noise level is
  sqrt(abar) interpolated linearly in t, which is what the fast sampler's alignment inverts."""
  sqrt_abar = jnp.asarray(np.sqrt(schedule.alphas_cumprod), jnp.float32)

  def denoise(x_BxT, t_B):
    t = t_B.astype(jnp.float32)
    lo = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, schedule.num_timesteps - 1)
    hi = jnp.minimum(lo + 1, schedule.num_timesteps - 1)
    a_B = sqrt_abar[lo] + (t - lo) * (sqrt_abar[hi] - sqrt_abar[lo])
    return (x_BxT - a_B[:, None] * point_T) / jnp.sqrt(1 - a_B ** 2)[:, None]
  return denoise


def test_every_sampler_with_an_oracle_returns_the_one_training_clip():
  s = make_schedule("linear", 200, 1e-4, 0.02)
  point_T = jax.random.uniform(jax.random.key(3), (64,), minval=-1, maxval=1)
  x_T = jax.random.normal(jax.random.key(4), (3, 64))
  keys = jax.random.split(jax.random.key(5), 3)
  seen = []  # the steps the network is called at

  def denoise(x, t_B):
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), t_B)
    return noise_level_oracle(s, point_T)(x, t_B)
  common = dict(prediction="eps", clip_denoised=False)
  run = {"ddpm": lambda: samplers.ddpm(denoise, s, samplers.sampling_timesteps(200, 50), x_T, keys,
                                       variance="fixedsmall", **common),
         "fast": lambda: samplers.fast(denoise, s, samplers.FAST_SCHEDULE_T200, x_T, keys, variance="fixedsmall",
                                       **common)}
  for name, sample in run.items():
    seen.clear()
    np.testing.assert_allclose(jax.jit(sample)(), jnp.broadcast_to(point_T, (3, 64)), atol=2e-4, err_msg=name)
  # The fast sampler called the network at the aligned fractional steps, last step first.
  np.testing.assert_allclose([t[0] for t in seen[::-1]], samplers.fast_alignment(s, samplers.FAST_SCHEDULE_T200),
                             rtol=1e-6)


def test_clip_denoised_bounds_the_scaled_data_range():
  """diffusion.data_scale s runs the process on s x: the samplers then clip x0_hat to [-s, s], not [-1, 1]."""
  s = make_schedule("cosine", 50)
  point_T = 4.0 * jax.random.uniform(jax.random.key(3), (64,), minval=-1, maxval=1)  # data x 4
  x_T = jax.random.normal(jax.random.key(4), (2, 64))
  run = jax.jit(lambda clip: samplers.ddim(noise_level_oracle(s, point_T), s, samplers.sampling_timesteps(50, 10),
                                           x_T, None, eta=0.0, prediction="eps", clip_denoised=clip),
                static_argnums=0)
  np.testing.assert_allclose(run(4.0), jnp.broadcast_to(point_T, (2, 64)), atol=1e-3)
  assert float(jnp.max(jnp.abs(run(True)))) <= 1.0 + 1e-5  # True: the unscaled data range


@pytest.mark.parametrize("num_timesteps, beta_end, fast_betas", [(200, 0.02, samplers.FAST_SCHEDULE_T200),
                                                                 (50, 0.05, samplers.FAST_SCHEDULE_T50)])
def test_fast_alignment_matches_the_papers_formula(num_timesteps, beta_end, fast_betas):
  """Kong et al. 2021, Appendix B: t_s^align = t + (sqrt(abar_t) - sqrt(gbar_s)) / (sqrt(abar_t) -
  sqrt(abar_{t+1})) for the 1-based t with sqrt(gbar_s) in [sqrt(abar_{t+1}), sqrt(abar_t)], written out."""
  s = make_schedule("linear", num_timesteps, 1e-4, beta_end)
  abar = {t: np.prod(1 - s.betas[:t]) for t in range(1, num_timesteps + 1)}  # 1-based, as in the paper
  expected = []
  for k in range(1, len(fast_betas) + 1):
    gbar = np.prod(1 - np.asarray(fast_betas[:k]))
    t = next(t for t in range(1, num_timesteps) if abar[t + 1] <= gbar <= abar[t] * (1 + 1e-15))
    expected.append(t + (np.sqrt(abar[t]) - np.sqrt(gbar)) / (np.sqrt(abar[t]) - np.sqrt(abar[t + 1])))
  aligned = samplers.fast_alignment(s, fast_betas)
  np.testing.assert_allclose(aligned + 1, expected, rtol=1e-10)  # our steps are 0-based
  assert aligned[0] == pytest.approx(0.0, abs=1e-9)  # eta_1 = beta_1: the first training step exactly
  assert np.all(np.diff(aligned) > 0)
  with pytest.raises(UserError, match=r"sample.fast_schedule step 6.*outside") as info:
    samplers.check_fast_schedule(s, fast_betas[:5] + (0.99,))
  assert "\n" not in str(info.value)


# --- the network -------------------------------------------------------------------------------------------

def test_dilated_conv_is_the_stacked_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 37, 3))
  x_IxBxT = x.transpose(2, 0, 1)  # the network's channel-major layout
  params = DilatedConv(5, dilation=1).init(jax.random.key(1), x_IxBxT)["params"]
  apply = lambda d: jax.jit(DilatedConv(5, dilation=d).apply)({"params": params}, x_IxBxT).transpose(1, 2, 0)
  stacked = jax.jit(lambda: [jax.lax.conv_general_dilated(x, params["kernel"], (1,), "SAME", rhs_dilation=(k,),
                                                          dimension_numbers=("NWC", "WIO", "NWC"))
                             + params["bias"] for k in (1, 2, 8)])()  # nn.Conv's function, per dilation
  for d, ref in zip((1, 2, 8), stacked):
    np.testing.assert_allclose(apply(d), ref, atol=1e-5)


def test_receptive_field_zero_output_and_label_conditioning(tiny_family):
  config, _, state = tiny_family
  net = build_model(config)  # C = 8, 2 layers with dilations 1, 2, 10 classes
  r = receptive_field(config.model.residual_layers, config.model.dilation_cycle)
  assert r == 2 * (1 + 2) + 1 and receptive_field(36, 12) == 24571  # the paper's SC09 model
  x = jax.random.normal(jax.random.key(0), (2, 77))  # any length: no downsampling
  t, y = jnp.array([3, 150]), jnp.array([0, 10])     # label 10 = the null class
  apply = jax.jit(lambda p, x1, labels: net.apply({"params": p}, x1, t, labels))  # one compile for every call
  out = apply(state["params"], x, y)
  assert out.shape == (2, 77) and float(jnp.max(jnp.abs(out))) == 0.0  # zero-initialised output conv
  params = perturbed(state["params"])
  j = 40  # moving input sample j moves exactly the outputs within (r - 1) / 2 of it
  before = apply(params, x, y)
  moved = np.flatnonzero(np.any(np.asarray(apply(params, x.at[:, j].add(1.0), y) != before), axis=0))
  np.testing.assert_array_equal(moved, np.arange(j - (r - 1) // 2, j + (r - 1) // 2 + 1))
  assert not np.allclose(apply(params, x, jnp.array([1, 2])), before, atol=1e-3)


def test_patched_network_sees_whole_frames():
  """patch_size P: the layers run on frames of P samples, so moving one input sample moves exactly the outputs
  of the frames within (r_frames - 1) / 2 frames of its own: receptive_field(..., P) samples, frame-aligned."""
  net = DiffWave(residual_channels=16, num_layers=2, dilation_cycle=2, patch_size=4)
  x = jax.random.normal(jax.random.key(0), (1, 64))
  t = jnp.array([5])
  params = perturbed(jax.jit(net.init)(jax.random.key(1), x, t)["params"])
  apply = jax.jit(lambda x1: net.apply({"params": params}, x1, t))
  r = receptive_field(2, 2, patch_size=4)
  assert r == (2 * (1 + 2) + 1) * 4
  j = 30  # in frame 7 (samples 28..31); frames 4..10 see it
  moved = np.flatnonzero(np.asarray(apply(x.at[:, j].add(1.0)) != apply(x))[0])
  np.testing.assert_array_equal(moved, np.arange(28 - (r // 4 - 1) // 2 * 4, 32 + (r // 4 - 1) // 2 * 4))
  assert moved.size == r


# --- the family on audio -----------------------------------------------------------------------------------

def test_two_cli_steps_write_wavs_of_the_digit_asked_for(tiny_family, tmp_path, monkeypatch, capsys):
  """`--config.sample.label=7` of the conditional cpu preset, 2 steps through the trainer on 1 device: the
  samples (guided DDIM) are 16-bit WAVs at data.sample_rate, all labelled 7, and not silent."""
  from aigc_jax import main
  workdir = tmp_path / "run"
  flags = {"data.name": tiny_family[0].data.name, "data.sample_rate": RATE, "data.clip_seconds": 1.0, "sample.label": 7,
           "model.residual_channels": 8, "model.residual_layers": 2, "model.dilation_cycle": 2, "model.patch_size": 1,
           "num_train_steps": 2, "log_every_steps": 1,
           "checkpoint_every_steps": 2, "sample_every_steps": 2, "sample.num": 3, "num_devices": 1}
  argv = ["aigc_jax", f"--config={EXPERIMENT}:cpu", f"--workdir={workdir}"]
  argv += [f"--config.{k}={v}" for k, v in flags.items()]
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(SystemExit) as exit_info:
    main.run()
  assert exit_info.value.code in (0, None), capsys.readouterr().err
  wavs = sorted(os.listdir(workdir / "samples" / "2_audio"))
  assert wavs == ["000.wav", "001.wav", "002.wav"]
  with wave.open(str(workdir / "samples" / "2_audio" / "000.wav")) as w:
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (RATE, 1, 2, CLIP_T)
  assert (workdir / "samples" / "2_spectrograms.png").is_file()
  arrays = np.load(workdir / "samples" / "2.npz")
  assert arrays["audio"].shape == (3, CLIP_T) and arrays["audio"].dtype == np.int16
  np.testing.assert_array_equal(arrays["labels"], [7, 7, 7])
  np.testing.assert_array_equal(arrays["audio_sample_rate"], [RATE] * 3)
  assert np.std(arrays["audio"]) > 30  # not silence: about 1e-3 of full scale


@pytest.mark.parametrize("overrides, message", [
    ({"model.arch": "unet"}, r"model.arch='unet' models images, but data.name='test_tone_digits' is audio; "
                             r"set --config.model.arch=diffwave"),
    ({"model.ch": 64}, r"model.ch is not read by model.arch='diffwave'"),
    ({"sample.label": 10}, r"sample.label=10 is out of range for a model of 10 classes"),
    ({"sample.sampler": "fast", "sample.steps": 50}, r"sample.steps=50 is not read by sample.sampler=fast"),
    ({"sample.sampler": "ddpm", "sample.fast_schedule": (0.1, 0.2)}, r"sample.fast_schedule is read by "),
    ({"sample.sampler": "fast", "sample.steps": 0, "diffusion.schedule": "linear", "diffusion.num_timesteps": 20},
     r"sample.fast_schedule step 5: .* outside"),
    ({"model.patch_size": 3}, r"a clip of 256 samples .* is not a multiple of model.patch_size=3"),
    ({"model.patch_size": 0}, r"model.patch_size must be a positive integer"),
    ({"diffusion.data_scale": 0.0}, r"diffusion.data_scale must be a number in \[0.01, 100\]"),
])
def test_bad_audio_settings_are_one_line_errors(tone_source, overrides, message):
  with pytest.raises(UserError, match=message) as info:
    get_family(tiny_config(**overrides))
  assert "\n" not in str(info.value)


def test_diffwave_keys_on_an_image_unet_are_an_error():
  config = load_experiment(os.path.join(os.path.dirname(EXPERIMENT), "ddpm.py"), "cpu",
                           {"model.residual_layers": 4})
  with pytest.raises(UserError, match=r"model.residual_layers is not read by model.arch='unet'"):
    get_family(config)
  config = load_experiment(os.path.join(os.path.dirname(EXPERIMENT), "ddpm.py"), "cpu", {"model.arch": "diffwave"})
  with pytest.raises(UserError, match=r"model.arch='diffwave' models audio, but data.name='digits' is images"):
    get_family(config)
