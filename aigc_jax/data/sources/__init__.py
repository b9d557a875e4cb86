"""Built-in data sources, one module per kind; each registers its sources with `aigc_jax.data.registry` when
imported. Every module here is imported on the registry's first lookup, so a new source is one new module."""
