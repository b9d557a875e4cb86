"""Each family module owns `default_config()`: the shared keys plus every key the family reads. Experiments
start from it and only override values, so an experiment has exactly its family's keys."""
import importlib
import os

import pytest

from aigc_jax import configs
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.families import available_families, get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {"gan.py": "gan", "dcgan.py": "gan", "diffaugment.py": "gan", "gan_2d.py": "gan", "wgan_gp.py": "gan",
               "sngan.py": "gan", "cgan_projection.py": "gan", "ddpm.py": "diffusion", "vae.py": "vae",
               "vqvae.py": "vqvae", "vqgan.py": "vqvae", "gpt.py": "autoregressive", "dalle.py": "autoregressive",
               "maskgit.py": "maskgit", "pix2pix.py": "pix2pix", "clip.py": "clip",
               "autoencoder_kl.py": "autoencoder_kl",
               "wavenet.py": "wavenet", "diffwave.py": "diffusion"}


def test_every_family_module_has_an_experiment():
  # diffusion_lib is a helper package that available_families() lists too; it has no make_family.
  modules = [n for n in available_families() if hasattr(importlib.import_module(f"aigc_jax.families.{n}"),
                                                         "make_family")]
  assert sorted(modules) == sorted(set(EXPERIMENTS.values()))


def flat_keys(config):
  def walk(d, prefix):
    for k, v in d.items():
      yield from walk(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
  return set(walk(config.to_dict(), ""))


@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS.values())))
def test_default_config_extends_base_and_builds(name):
  config = importlib.import_module(f"aigc_jax.families.{name}").default_config()
  assert config.family == name
  assert flat_keys(configs.base_config()) <= flat_keys(config)
  get_family(configs.lock(config))  # every key the family reads is there, with values it accepts


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_overrides_values_only(experiment):
  config = load_experiment(os.path.join(ROOT, "experiments", experiment))
  family = importlib.import_module(f"aigc_jax.families.{EXPERIMENTS[experiment]}")
  assert config.is_locked
  assert flat_keys(config) == flat_keys(family.default_config())


def test_decay_schedule_without_decay_steps_is_a_user_error():
  from aigc_jax import optim
  with pytest.raises(UserError, match="optimizer.decay_steps"):
    optim.make_optimizer(optim.optimizer_config(schedule="cosine", warmup_steps=100))
