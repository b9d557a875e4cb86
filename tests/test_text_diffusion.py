"""Text-conditional diffusion: an all-masked (or empty) caption makes the cross-attention U-Net exactly the U-Net
without text; guidance 0 is the unconditional and 1 the conditional network (and 3 their extrapolation); a
data-parallel train step on captioned digits, then sampling a prompts file row by row (prompts.txt, prompt_ids, prompts_of) and the guidance
figure; latent mode on a stand-in autoencoder; bad text settings are one-line errors. Tiny: 8x8 digits, width 32, batch 8."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import configs
from aigc_jax import data as data_lib
from aigc_jax.data import captions
from aigc_jax.errors import UserError
from aigc_jax.families import diffusion, get_family
from aigc_jax.families.diffusion_lib import samplers
from aigc_jax.families.diffusion_lib import text as text_lib
from aigc_jax.models.unet import UNet

NO_TEXT = {"model.text_encoder": "none", "model.text_width": 128, "model.text_layers": 2, "model.text_heads": 4,
           "diffusion.caption_dropout": 0.0}
UNET = dict(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, out_channels=1)


def tiny_config(**overrides):
  c = diffusion.default_config()
  captions.add_caption_keys(c.data)
  c.data.name, c.data.image_size, c.data.channels, c.data.random_flip = "captioned_digits", 8, 1, False
  c.data.caption_length = 32
  c.batch_size = 8
  m = c.model
  m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout = 32, (1,), 1, (8,), 0.0
  m.text_encoder, m.text_width, m.text_layers, m.text_heads = "joint", 16, 1, 2
  c.diffusion.num_timesteps, c.diffusion.caption_dropout = 20, 0.2
  c.sample.sampler, c.sample.steps, c.sample.guidance_scale = "ddim", 2, 3.0
  configs.lock(c)
  return configs.override(c, overrides)


def _perturbed_params(model, *args):
  params = jax.jit(model.init)(jax.random.key(0), *args)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))  # zero-initialised projections must not hide anything
  return jax.tree.unflatten(tree, [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


def test_a_masked_caption_is_exactly_the_network_without_text_and_guidance_0_1_are_its_branches():
  x, t = jax.random.normal(jax.random.key(2), (2, 8, 8, 1)), jnp.array([3, 17])
  ctx = jax.random.normal(jax.random.key(3), (2, 5, 16))
  with_text, without = UNet(**UNET, context_dim=16), UNet(**UNET)
  params = _perturbed_params(with_text, x, t, None, ctx, jnp.ones((2, 5), bool))
  plain = {"params": {k: v for k, v in params["params"].items() if not k.startswith("CrossAttnBlock")}}
  reference = jax.jit(without.apply)(plain, x, t)
  net = jax.jit(lambda p, x, t_B, c: with_text.apply(p, x, t_B, None, c["ctx"], c["mask"]))
  apply = lambda x, t_B, c: net(params, x, t_B, c)  # noqa: E731
  cond = {"ctx": ctx, "mask": jnp.ones((2, 5), bool)}
  null = {"ctx": ctx, "mask": jnp.zeros((2, 5), bool)}
  # Same compiled program: with every token masked, neither the context nor the cross-attention weights can
  # change a single bit; against the separately compiled no-text network, equal up to XLA's fusion rounding.
  other = {"params": {k: jax.tree.map(lambda v: -3 * v, v) if k.startswith("CrossAttnBlock") else v
                      for k, v in params["params"].items()}}
  masked = np.asarray(apply(x, t, null))
  assert np.array_equal(masked, np.asarray(net(other, x, t, {**null, "ctx": 5 * ctx})))
  np.testing.assert_allclose(masked, reference, rtol=0, atol=1e-6)
  assert not np.allclose(apply(x, t, cond), reference)  # a caption does change the output: not vacuous
  # Classifier-free guidance: scale 0 is the unconditional branch, 1 the conditional one.
  np.testing.assert_allclose(samplers.guided(apply, cond, null, 0.0)(x, t), reference, atol=1e-5)
  np.testing.assert_array_equal(samplers.guided(apply, cond, null, 1.0)(x, t), apply(x, t, cond))
  g3 = samplers.guided(apply, cond, null, 3.0)(x, t)
  np.testing.assert_allclose(g3, reference + 3 * (apply(x, t, cond) - reference), atol=1e-4)
  # The empty prompt encodes to the null caption: all masked, whatever its BOS/EOS tokens.
  text = text_lib.build(tiny_config(), jnp.float32)
  tokens, mask = text_lib.encode(text, ["", "a handwritten two"])
  assert not mask[0].any() and mask[1].sum() == len("a handwritten two") + 2


def test_a_train_step_then_prompt_rows_and_the_guidance_figure(tmp_path):
  """A data-parallel train step with caption dropout, then what --mode=sample does (trainer.sample: the
  data-parallel sampler, then write_figures) from a prompts file."""
  from aigc_jax import parallel, runtime
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a handwritten seven\n\nthe digit two\n")
  config = tiny_config(num_devices=2, **{"sample.num": 8, "sample.prompts_file": str(prompts),
                                         "sample.guidance_scale": 1.0, "sample.guidance_grid": (0.0, 7.0)})
  family, mesh = get_family(config), parallel.make_mesh(config)
  batch = {k: jnp.asarray(v) for k, v in data_lib.example_batch(config, 8).items()}
  batch["caption_tokens"], batch["caption_mask"] = text_lib.encode(text_lib.build(config, jnp.float32),
                                                                   ["a handwritten seven"] * 8)
  state = family.init(jax.random.key(0), batch)
  step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
  state, metrics = step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh), jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 1
  samples = runtime.make_sampler(family, mesh)(state, jax.random.key(config.sample.seed), 8)
  assert samples["images"].shape == (8, 8, 8, 1) and np.isfinite(samples["images"]).all()
  np.testing.assert_array_equal(samples["prompt_ids"], [0, 0, 0, 1, 1, 1, 0, 0])  # 3 columns: a row per prompt
  assert family.prompts_of(samples) == ["a handwritten seven"] * 3 + ["the digit two"] * 3 + [
      "a handwritten seven"] * 2
  # One step barely moves the zero-initialised cross-attention: perturb the sampled weights so guidance matters.
  state = jax.device_get(state)
  rng = np.random.default_rng(0)
  state["ema_params"] = jax.tree.map(lambda v: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype),
                                     state["ema_params"])
  paths = family.write_figures(state, str(tmp_path / "samples"), 1)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["1_prompts.txt", "1_guidance.png", "1_guidance.txt"]
  rows = (tmp_path / "samples" / "1_prompts.txt").read_text().splitlines()
  assert rows == ["row 0: a handwritten seven", "row 1: the digit two", "row 2: a handwritten seven"]
  from PIL import Image
  grid = np.asarray(Image.open(tmp_path / "samples" / "1_guidance.png"))
  assert grid.shape[:2] == (2 * (8 + 2) + 2, 8 * (8 + 2) + 2)  # 2 guidance rows x 8 samples, 2-pixel padding
  assert not np.array_equal(grid[2:10], grid[12:20])  # same noise, different guidance: different images
  assert (tmp_path / "samples" / "1_guidance.txt").read_text().splitlines() == [
      "prompt: a handwritten seven", "row 0: guidance_scale 0.0", "row 1: guidance_scale 7.0"]


@pytest.mark.parametrize("overrides, message", [
    ({"model.text_encoder": "none", "diffusion.caption_dropout": 0.1, "sample.guidance_scale": 1.0},
     "is only read by a text-conditional model"),
    ({"model.text_encoder": "none", "sample.prompt": "a seven", "sample.guidance_scale": 1.0},
     "is only read by a text-conditional model"),
    ({"model.text_encoder": "clip"}, "model.text_width is not read by model.text_encoder='clip'"),
    ({"model.text_encoder": "bert"}, "unknown model.text_encoder"),
    ({"diffusion.caption_dropout": 0.0}, "needs the null caption"),
    ({"data.name": "digits"}, "has no captions"),
    ({"model.num_classes": 10}, "not both"),
    ({"sample.prompt": "a handwritten seven " * 3}, "more than the data.caption_length=32"),
    ({"sample.prompts_file": "/nonexistent/prompts.txt"}, "does not exist"),
])
def test_bad_text_settings_are_one_line_errors(overrides, message):
  with pytest.raises(UserError, match=message) as error:
    diffusion.make_family(tiny_config(**overrides))
  assert "\n" not in str(error.value)


def test_clip_encoder_errors_name_the_key(tmp_path):
  config = tiny_config(**{"model.text_encoder": "clip", "model.text_width": 128, "model.text_layers": 2,
                          "model.text_heads": 4})
  with pytest.raises(UserError, match="model.clip_workdir"):
    diffusion.make_family(config)
  config = configs.override(config, {"model.clip_workdir": str(tmp_path)})
  with pytest.raises(UserError, match="model.clip_workdir=.* has no checkpoints"):
    diffusion.make_family(config)


def test_an_empty_prompts_file_is_an_error(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n  \n")
  with pytest.raises(UserError, match="has no prompts"):
    diffusion.make_family(tiny_config(**{"sample.prompts_file": str(empty)}))


def test_latent_mode_diffuses_the_autoencoders_latents_and_decodes_samples(monkeypatch):
  """The process on a stand-in autoencoder's 4x4 latents (2x2 average pooling, nearest upsampling): one
  data-parallel train step and the sampler, with images of the data's shape coming out (text off: cheaper, and
  the conditioning does not touch the latent plumbing)."""
  import sys
  import types
  from aigc_jax import parallel
  pool = lambda x: x.reshape(x.shape[0], 4, 2, 4, 2, 1).mean((2, 4))  # noqa: E731
  fake = types.SimpleNamespace(load_autoencoder=lambda path, key, expect_image_shape: types.SimpleNamespace(
      params={}, jax_encode=lambda p, x: pool(x), jax_decode=lambda p, z: jnp.repeat(jnp.repeat(z, 2, 1), 2, 2),
      latent_shape=(4, 4, 1), scale_factor=1.0, fingerprint="0" * 16, checkpoint=path))
  monkeypatch.setitem(sys.modules, "aigc_jax.families.autoencoder_kl", fake)
  with pytest.raises(UserError, match="clip_denoised=false"):
    diffusion.make_family(tiny_config(**{"model.autoencoder": "runs/ae"}))
  config = tiny_config(**{"model.autoencoder": "runs/ae", "diffusion.clip_denoised": False,
                          "model.attn_resolutions": (4,), "sample.guidance_scale": 1.0, **NO_TEXT})
  family = diffusion.make_family(config)
  assert family.eval_step is None  # latent bits/dim would not compare with pixels
  mesh = parallel.make_mesh(config)
  batch = {k: jnp.asarray(v) for k, v in data_lib.example_batch(config, 8).items()}
  state = family.init(jax.random.key(0), batch)
  assert state["params"]["Conv_0"]["kernel"].shape[2] == 1  # the U-Net reads 1-channel 4x4 latents
  step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
  _, metrics = step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh), jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))
  out = parallel.data_parallel_map(family.sample, mesh)(state, jax.random.key(2), jnp.arange(8, dtype=jnp.int32))
  assert out["images"].shape == (8, 8, 8, 1)
  # Decoded by nearest upsampling: every 2x2 block of a sample is one latent value.
  images = np.asarray(out["images"])
  assert np.array_equal(images[:, ::2, ::2], images[:, 1::2, 1::2])
