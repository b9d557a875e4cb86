"""models/layers.Dense: the same function and gradients as flax's nn.Dense, row-major and channel-major."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.models.layers import Dense


@pytest.mark.parametrize("channels_first", [False, True])
def test_dense_equals_nn_dense_values_and_gradients(channels_first):
  x_BxTxI = jax.random.normal(jax.random.key(0), (3, 5, 4))
  ours, ref = Dense(6), nn.Dense(6)
  params = ref.init(jax.random.key(1), x_BxTxI)["params"]
  params = {"kernel": params["kernel"], "bias": jax.random.normal(jax.random.key(2), (6,))}
  # Channel-major input [I, B, T]; the output is [B, T, O] either way.
  x_in = jnp.transpose(x_BxTxI, (2, 0, 1)) if channels_first else x_BxTxI
  cotangent = jax.random.normal(jax.random.key(3), (3, 5, 6))

  def loss(module, p, x, **kw):
    return jnp.sum(module.apply({"params": p}, x, **kw) * cotangent)

  np.testing.assert_allclose(ours.apply({"params": params}, x_in, channels_first=channels_first),
                             ref.apply({"params": params}, x_BxTxI), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(lambda p, x: loss(ours, p, x, channels_first=channels_first), argnums=(0, 1))(params, x_in)
  g_ref = jax.grad(lambda p, x: loss(ref, p, x), argnums=(0, 1))(params, x_BxTxI)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(g_ours[0][name], g_ref[0][name], rtol=1e-5, atol=1e-5)
  dx_ref = jnp.transpose(g_ref[1], (2, 0, 1)) if channels_first else g_ref[1]
  np.testing.assert_allclose(g_ours[1], dx_ref, rtol=1e-5, atol=1e-5)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x_in, channels_first=channels_first)["params"]) == \
      {"kernel": (4, 6), "bias": (6,)}
