"""Eight forced CPU devices for every test, so data-parallel code paths run on a laptop (ARCHITECTURE.md).

Must run before jax is imported anywhere.
"""
import os
import shutil
import tempfile

# LLVM at -O0: the tests' tiny programs spend far more time compiling than running (measured: the golden
# ddpm+dcgan steps 79 -> 33 CPU-s, the diffusion bound test 44 -> 29, the VQ-VAE round trip 67 -> 48), and
# the values are the same. And XLA:CPU's older elemental fusion emitter instead of the MLIR fusion emitters:
# about a third less compile time for the same programs (the golden ddpm step's compile 14.9 -> 8.7 CPU-s,
# test_golden.py 81 -> 61, test_parallel.py 97 -> 61), the same run time, and values within the golden
# tolerances. Subprocesses the tests start inherit both.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session, shared by both pytest-xdist workers and every
# subprocess a test starts (they inherit the environment): many tests compile the same tiny train steps.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
_CACHE = os.path.join(tempfile.gettempdir(), f"aigc_jax_tests_xla_cache_{_RUN_ID}")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
  if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), after every worker ended
    shutil.rmtree(_CACHE, ignore_errors=True)


# pytest-xdist (--dist loadfile) hands whole files to the two workers in collection order. Starting with the
# longest files keeps the last minutes from being one worker finishing a long file while the other idles.
# Measured CPU-s per file (one file alone, -n 0), longest first; a file not listed runs after these
# (test_colab.py ~100 CPU-s with the text-to-image notebook, test_autoencoder_kl.py ~20: placed, not re-measured).
_LONGEST_FIRST = ("test_colab.py", "test_evaluation.py", "test_text_diffusion.py", "test_golden.py",
                  "test_parallel.py", "test_multiprocess.py", "test_cli_errors.py", "test_autoregressive.py",
                  "test_checkpointing.py", "test_tf_free.py", "test_dalle.py", "test_diffusion.py", "test_vqvae.py",
                  "test_vae.py", "test_eval_resume.py", "test_reliability.py", "test_clip.py", "test_maskgit.py",
                  "test_vqgan.py", "test_wavenet.py", "test_class_accuracy.py", "test_autoencoder_kl.py",
                  "test_codes.py", "test_text_metrics.py", "test_audio_data.py", "test_data.py", "test_pix2pix.py",
                  "test_extensibility.py", "test_diffwave.py", "test_captions.py", "test_media.py",
                  "test_gan_augment.py", "test_gan_models.py", "test_audio_eval.py", "test_dcgan_model.py",
                  "test_dispatch.py", "test_gan_2d.py", "test_gan_zoo.py", "test_family_defaults.py",
                  "test_architecture.py")


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: keeps order within a file
