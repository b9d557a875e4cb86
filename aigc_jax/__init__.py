"""aigc_jax: a JAX/Flax research codebase for generative models."""

__version__ = "0.1.0"
