"""The diffusion family's pieces, one room per concern: noise schedules and the forward process
(`schedules`), what the network predicts and how it is trained (`objectives`), the variational bound
(`likelihood`) and the compiled samplers (`samplers`). `aigc_jax.families.diffusion` wires them to the
family contract."""
