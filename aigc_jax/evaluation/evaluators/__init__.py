"""Built-in evaluators, one module per metric family; each registers its metrics with
`aigc_jax.evaluation.registry` when imported, and every module here is imported on the first lookup."""
