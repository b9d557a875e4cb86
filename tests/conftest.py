"""Eight forced CPU devices for every test, so data-parallel code paths run on a laptop (ARCHITECTURE.md).

Must run before jax is imported anywhere.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
