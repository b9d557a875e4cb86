"""Golden values (nanodo-style): three train steps of every family's `cpu` preset on a fixed synthetic batch give
recorded metrics, so a refactor that changes the math fails loudly.

The batch is generated (seeded numpy), not read from a dataset, and the steps run through the family contract
only (init, train_step on the 8-device data-parallel mesh), so state layouts may change freely; the values
may not. Re-record (GOLDEN below) only for an intended change of the math, and say so in the commit.
"""
import os

import jax
import numpy as np
import pytest

from aigc_jax import parallel
from aigc_jax.configs import load_experiment
from aigc_jax.families import get_family

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
BATCH = 8
# No warm-up, so steps 2 and 3 see real updates; byte vocabulary, so no text is read.
OVERRIDES = {"gpt.py": {"data.tokenizer": "byte", "optimizer.warmup_steps": 0},
             "ddpm.py": {"optimizer.warmup_steps": 0}}

# metrics of steps 1, 2 and 3, recorded with the code as of the commit that added this file.
GOLDEN = {
    'gan.py:cpu': [
        {'d_fake': 0.6005363464355469, 'd_loss': 1.4314229488372803, 'd_real': 0.6056790351867676, 'g_loss': 0.6563482284545898, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.6613950729370117, 'd_loss': 1.6272156238555908, 'd_real': 0.589814305305481, 'g_loss': 0.5140749216079712, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.7621288895606995, 'd_loss': 2.036062240600586, 'd_real': 0.5560623407363892, 'g_loss': 0.4045378863811493, 'learning_rate': 0.00019999999494757503},
    ],
    'dcgan.py:cpu': [
        {'d_fake': 0.4508005678653717, 'd_loss': 1.631771206855774, 'd_real': 0.3829435408115387, 'g_loss': 1.1594371795654297, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.3609107732772827, 'd_loss': 1.4180917739868164, 'd_real': 0.4010491669178009, 'g_loss': 1.1002075672149658, 'learning_rate': 0.00019999999494757503},
        {'d_fake': 0.43077245354652405, 'd_loss': 1.1766917705535889, 'd_real': 0.5709027051925659, 'g_loss': 1.0816166400909424, 'learning_rate': 0.00019999999494757503},
    ],
    'ddpm.py:cpu': [
        {'grad_norm': 4.282127380371094, 'learning_rate': 0.0010000000474974513, 'loss': 0.9785321950912476},
        {'grad_norm': 3.978214740753174, 'learning_rate': 0.0010000000474974513, 'loss': 0.925480842590332},
        {'grad_norm': 3.5519042015075684, 'learning_rate': 0.0010000000474974513, 'loss': 0.9788953065872192},
    ],
    'ddpm.py:cpu_cond': [
        {'grad_norm': 4.282127380371094, 'learning_rate': 0.0010000000474974513, 'loss': 0.9785321950912476},
        {'grad_norm': 3.978198528289795, 'learning_rate': 0.0010000000474974513, 'loss': 0.925480842590332},
        {'grad_norm': 3.542468786239624, 'learning_rate': 0.0010000000474974513, 'loss': 0.9792424440383911},
    ],
    'vae.py:cpu': [
        {'bits_per_dim': 1.0527868270874023, 'kl': 8.059341430664062, 'learning_rate': 0.0010000000474974513, 'neg_elbo': 572.1131591796875, 'recon_nll': 564.0538330078125},
        {'bits_per_dim': 1.0445164442062378, 'kl': 6.124723434448242, 'learning_rate': 0.0010000000474974513, 'neg_elbo': 567.6188354492188, 'recon_nll': 561.494140625},
        {'bits_per_dim': 1.0588231086730957, 'kl': 7.438653469085693, 'learning_rate': 0.0010000000474974513, 'neg_elbo': 575.3934326171875, 'recon_nll': 567.954833984375},
    ],
    'vqvae.py:cpu': [
        {'commitment': 0.10418575257062912, 'dead_code_share': 0.6875, 'learning_rate': 0.0010000000474974513, 'loss': 0.3589286208152771, 'mse': 0.33288219571113586, 'perplexity': 7.710091590881348, 'psnr': 10.804682731628418},
        {'commitment': 0.0328017957508564, 'dead_code_share': 0.421875, 'learning_rate': 0.0010000000474974513, 'loss': 0.3482007682323456, 'mse': 0.3400002717971802, 'perplexity': 14.996074676513672, 'psnr': 10.71125602722168},
        {'commitment': 0.02338629961013794, 'dead_code_share': 0.25, 'learning_rate': 0.0010000000474974513, 'loss': 0.34476232528686523, 'mse': 0.33891576528549194, 'perplexity': 23.214815139770508, 'psnr': 10.727027893066406},
    ],
    'gpt.py:cpu': [
        {'grad_norm': 1.6620872020721436, 'learning_rate': 0.0010000000474974513, 'loss': 5.562255859375},
        {'grad_norm': 1.341475248336792, 'learning_rate': 0.0009999993490055203, 'loss': 5.5776472091674805},
        {'grad_norm': 1.0939592123031616, 'learning_rate': 0.0009999978356063366, 'loss': 5.581938743591309},
    ],
}


def _config(experiment, preset):
  config = load_experiment(os.path.join(EXPERIMENTS, experiment), preset)
  config.batch_size = BATCH
  for key, value in OVERRIDES.get(experiment, {}).items():
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
  mesh = parallel.make_mesh()
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
