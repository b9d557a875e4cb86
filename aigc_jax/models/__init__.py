"""Flax Linen modules only: pure init/apply, no optimiser, no loss."""
