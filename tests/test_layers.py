"""models/layers.Dense: the same function and gradients as flax's nn.Dense, row-major and channel-major;
models/layers.Embed: nn.Embed's lookup, with the bfloat16 lookup's gradient accumulated in float32, and a
one-hot lookup (no scatter-add) in programs lowered for GPUs and TPUs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from aigc_jax.models.layers import Dense, Embed


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


@pytest.mark.parametrize("lookup", ["gather", "one_hot"])
def test_embed_values_match_nn_embed_and_bf16_gradient_accumulates_in_float32(lookup):
  # 4 rows, 4,096 lookups: the frequent rows sum ~1,000 cotangents each, where bfloat16 sums drift.
  ids_BxT = jax.random.choice(jax.random.key(0), 4, (16, 256), p=jnp.array([0.5, 0.3, 0.15, 0.05]))
  cotangent = jax.random.normal(jax.random.key(1), (16, 256, 8)) * 1e-3
  ours, ref_bf16 = Embed(4, 8, dtype=jnp.bfloat16, lookup=lookup), nn.Embed(4, 8, dtype=jnp.bfloat16)
  params = ref_bf16.init(jax.random.key(2), ids_BxT)["params"]
  out = ours.apply({"params": params}, ids_BxT)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, ref_bf16.apply({"params": params}, ids_BxT))
  np.testing.assert_array_equal(Embed(4, 8, lookup=lookup).apply({"params": params}, ids_BxT),
                                nn.Embed(4, 8).apply({"params": params}, ids_BxT))

  def grad(module):
    loss = lambda p: jnp.sum(module.apply({"params": p}, ids_BxT).astype(jnp.float32) * cotangent)
    return jax.grad(loss)(params)["embedding"]

  # Reference: the float32 sum of the very cotangents the bf16 model sees (rounded to bf16 once).
  exact = jax.grad(lambda p: jnp.sum(nn.Embed(4, 8).apply({"params": p}, ids_BxT) *
                                     cotangent.astype(jnp.bfloat16).astype(jnp.float32)))(params)["embedding"]
  rel_err = lambda g: float(jnp.max(jnp.linalg.norm(g - exact, axis=1) / jnp.linalg.norm(exact, axis=1)))
  # gather: the float32 sum; one_hot: a bf16 matmul's float32 sum, rounded to bf16 once (~2^-9 relative).
  assert rel_err(grad(ours)) < (1e-5 if lookup == "gather" else 4e-3)
  assert rel_err(grad(ref_bf16)) > 1e-2  # what Embed fixes: flax's bf16 table sums in bf16


def test_embed_auto_lookup_is_a_gather_on_cpu_and_a_matmul_on_gpu_and_tpu():
  ids_BxT = jnp.zeros((2, 16), jnp.int32)
  small, large = Embed(65, 8, dtype=jnp.bfloat16), Embed(4096, 8, dtype=jnp.bfloat16)
  for module, one_hot_off_cpu in ((small, True), (large, False)):
    params = module.init(jax.random.key(0), ids_BxT)["params"]
    grad = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, ids_BxT).astype(jnp.float32))))
    for platform in ("cpu", "cuda", "tpu"):
      mlir = export.export(grad, platforms=[platform])(params).mlir_module()
      matmul = platform != "cpu" and one_hot_off_cpu
      assert ("scatter" in mlir) != matmul and ("dot_general" in mlir) == matmul, (module.num_embeddings, platform)
  with pytest.raises(ValueError, match="integer ids"):
    small.init(jax.random.key(0), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="lookup='dense'"):
    Embed(4, 8, lookup="dense").init(jax.random.key(0), ids_BxT)
