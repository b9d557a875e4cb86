"""Golden values (nanodo-style): three train steps of every family's `cpu` preset on a fixed synthetic batch give
recorded metrics, so a refactor that changes the math fails loudly.

The batch is generated (seeded numpy), not read from a dataset, and the steps run through the family contract
only (init, train_step through the data-parallel wrapper on one device, which compiles fastest; the values
were recorded on 8 and tests/test_parallel.py checks 8 == 1), so state layouts may change freely; the values
may not. Re-record (GOLDEN below) only for an intended change of the math, and say so in the commit.
"""
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import parallel
from aigc_jax.configs import load_experiment
from aigc_jax.families import get_family

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
BATCH = 8
# No warm-up, so steps 2 and 3 see real updates; byte vocabulary, so no text is read.
# Shrunk models keep the suite fast; the math is the same code at any width.
OVERRIDES = {"gpt.py": {"data.tokenizer": "byte", "optimizer.warmup_steps": 0, "model.num_layers": 2,
                        "model.num_heads": 2, "model.width": 32, "model.block_size": 16},
             "ddpm.py": {"optimizer.warmup_steps": 0},
             "ddpm.py:cpu_cond": {"optimizer.warmup_steps": 0, "model.ch_mult": (1,), "model.attn_resolutions": ()},
             "gan.py": {"model.g_hidden": (64, 64), "model.d_hidden": (32, 32)},
             "dcgan.py": {"model.g_width": 8, "model.d_width": 8, "data.image_size": 16},
             "vqvae.py": {"model.hidden": 16, "model.residual_hidden": 8, "model.num_codes": 16,
                          "model.code_dim": 4}}

# metrics of steps 1, 2 and 3, recorded with the code before the registries refactor (commit b004159).
GOLDEN = {
    'gan.py:cpu': [
        {'d_fake': 0.22297751903533936, 'd_loss': 2.350714683532715, 'd_real': 0.1291067898273468, 'g_loss': 1.404363751411438, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.2309238165616989, 'd_loss': 2.292306423187256, 'd_real': 0.14099173247814178, 'g_loss': 1.5304588079452515, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.23901569843292236, 'd_loss': 2.2837624549865723, 'd_real': 0.1402786821126938, 'g_loss': 1.491243839263916, 'learning_rate': 0.00019999999494757503},
    ],
    'dcgan.py:cpu': [
        {'d_fake': 0.4755241274833679, 'd_loss': 1.342550277709961, 'd_real': 0.4996519088745117, 'g_loss': 0.7261340022087097, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.4860509932041168, 'd_loss': 1.4100173711776733, 'd_real': 0.4776831567287445, 'g_loss': 0.7089464068412781, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.49748578667640686, 'd_loss': 1.4317821264266968, 'd_real': 0.47583508491516113, 'g_loss': 0.7009144425392151, 'learning_rate': 0.00019999999494757503},
    ],
    'ddpm.py:cpu': [
        {'grad_norm': 4.282127380371094, 'learning_rate': 0.0010000000474974513, 'loss': 0.9785321950912476},
        {'grad_norm': 3.978214740753174, 'learning_rate': 0.0010000000474974513, 'loss': 0.925480842590332},
        {'grad_norm': 3.5519042015075684, 'learning_rate': 0.0010000000474974513, 'loss': 0.9788953065872192},
    ],
    'ddpm.py:cpu_cond': [
        {'grad_norm': 4.9782233238220215, 'learning_rate': 0.0010000000474974513, 'loss': 0.9785321950912476},
        {'grad_norm': 4.5456929206848145, 'learning_rate': 0.0010000000474974513, 'loss': 0.9162342548370361},
        {'grad_norm': 4.751735210418701, 'learning_rate': 0.0010000000474974513, 'loss': 0.9305787682533264},
    ],
    'vae.py:cpu': [
        {'bits_per_dim': 1.0527868270874023, 'kl': 8.059341430664062, 'learning_rate': 0.0010000000474974513, 'neg_elbo': 572.1131591796875, 'recon_nll': 564.0538330078125},
        {'bits_per_dim': 1.0445164442062378, 'kl': 6.124723434448242, 'learning_rate': 0.0010000000474974513, 'neg_elbo': 567.6188354492188, 'recon_nll': 561.494140625},
        {'bits_per_dim': 1.0588231086730957, 'kl': 7.438653469085693, 'learning_rate': 0.0010000000474974513, 'neg_elbo': 575.3934326171875, 'recon_nll': 567.954833984375},
    ],
    'vqvae.py:cpu': [
        {'commitment': 0.04312090203166008, 'dead_code_share': 0.4375, 'learning_rate': 0.0010000000474974513, 'loss': 0.3481389880180359, 'mse': 0.3373587727546692, 'perplexity': 4.812790870666504, 'psnr': 10.745058059692383},
        {'commitment': 0.029687361791729927, 'dead_code_share': 0.375, 'learning_rate': 0.0010000000474974513, 'loss': 0.35242295265197754, 'mse': 0.34500110149383545, 'perplexity': 5.08506965637207, 'psnr': 10.648639678955078},
        {'commitment': 0.02425391599535942, 'dead_code_share': 0.5, 'learning_rate': 0.0010000000474974513, 'loss': 0.3518994152545929, 'mse': 0.3458358943462372, 'perplexity': 4.927733898162842, 'psnr': 10.637941360473633},
    ],
    'gpt.py:cpu': [
        {'grad_norm': 0.8171776533126831, 'learning_rate': 0.0010000000474974513, 'loss': 5.542365074157715},
        {'grad_norm': 0.7965269684791565, 'learning_rate': 0.0009999993490055203, 'loss': 5.564040660858154},
        {'grad_norm': 0.805660605430603, 'learning_rate': 0.0009999978356063366, 'loss': 5.532196998596191},
    ],
}


def _config(experiment, preset):
  config = load_experiment(os.path.join(EXPERIMENTS, experiment), preset)
  config.batch_size = BATCH
  for key, value in OVERRIDES.get(f"{experiment}:{preset}", OVERRIDES.get(experiment, {})).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _batch(config, example, batches_per_step, index):
  """Fixed synthetic batch `index` shaped like the family's training batch."""
  rng = np.random.default_rng([1234, index])
  out = {}
  for name, x in example.items():
    shape = (BATCH,) + ((batches_per_step,) if batches_per_step > 1 else ()) + x.shape[1:]
    if name == "tokens":
      out[name] = rng.integers(0, 256, shape).astype(np.int32)
    elif name == "label":
      out[name] = (np.arange(BATCH) % 10).astype(np.int32).reshape(BATCH, *([1] * (len(shape) - 1))) * \
          np.ones(shape, np.int32)
    else:
      out[name] = rng.uniform(-1, 1, shape).astype(np.float32)
  return out


def run_steps(experiment, preset):
  from aigc_jax import data as data_lib
  config = _config(experiment, preset)
  family = get_family(config)
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))  # one device: compiles fastest
  example = data_lib.example_batch(config)
  state = parallel.replicate(jax.jit(family.init)(jax.random.key(0), example), mesh)
  step_fn = parallel.data_parallel(family.train_step, mesh)
  history = []
  for i in range(3):
    batch = parallel.shard_batch(_batch(config, example, family.batches_per_step, i), mesh)
    state, metrics = step_fn(state, batch, jax.random.fold_in(jax.random.key(7), i))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return history


CASES = [("gan.py", "cpu"), ("dcgan.py", "cpu"), ("ddpm.py", "cpu"), ("ddpm.py", "cpu_cond"), ("vae.py", "cpu"),
         ("vqvae.py", "cpu"), ("gpt.py", "cpu")]


@pytest.mark.parametrize("experiment,preset", CASES)
def test_three_steps_match_recorded_values(experiment, preset):
  history = run_steps(experiment, preset)
  expected = GOLDEN[f"{experiment}:{preset}"]
  assert [sorted(h) for h in history] == [sorted(e) for e in expected], "metric names changed"
  for got, want in zip(history, expected):
    for k in want:
      assert got[k] == pytest.approx(want[k], rel=2e-4, abs=1e-6), f"{experiment}:{preset} {k}"
