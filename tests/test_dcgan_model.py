"""The DCGAN generator's UpConv4x4 is nn.ConvTranspose((4, 4), strides 2, SAME) computed another way: same
params, same outputs, same gradients; and the generator keeps its param tree and output shapes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.models.dcgan import DCGANDiscriminator, DCGANGenerator
from aigc_jax.models.layers import UpConv4x4

TOL = dict(rtol=1e-5, atol=1e-5)


def reference(features, use_bias=True):
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=use_bias)


@pytest.mark.parametrize("shape,features,use_bias", [((2, 4, 4, 8), 5, True), ((3, 3, 5, 2), 1, False)])
def test_upconv_equals_conv_transpose(shape, features, use_bias):
  """Forward and gradients (input and params) of every impl equal nn.ConvTranspose's, with its params."""
  x = jax.random.normal(jax.random.key(0), shape)
  ref = reference(features, use_bias)
  params = jax.eval_shape(ref.init, jax.random.key(1), x)["params"]
  params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.ndim), p.shape), params)  # bias non-zero too
  cot = jax.random.normal(jax.random.key(3), (shape[0], 2 * shape[1], 2 * shape[2], features))

  def forward_and_grads(module):
    fn = lambda p, x: jnp.sum(module.apply({"params": p}, x) * cot)
    return module.apply({"params": params}, x), jax.grad(fn, (0, 1))(params, x)

  impls = ("matmul", "auto", "conv")
  modules = [UpConv4x4(features, use_bias=use_bias, impl=impl) for impl in impls]
  for ours in modules:
    assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, jax.random.key(1), x)["params"]) == \
        jax.tree.map(jnp.shape, params)
  (y_ref, grads_ref), *results = jax.jit(lambda: [forward_and_grads(m) for m in [ref] + modules])()
  for impl, (y, grads) in zip(impls, results):
    assert y.shape == y_ref.shape == cot.shape
    np.testing.assert_allclose(y, y_ref, **TOL, err_msg=impl)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
      np.testing.assert_allclose(a, b, **TOL, err_msg=impl)


def test_auto_lowers_to_the_matmul_on_cpu():
  x = jnp.ones((2, 4, 4, 3))
  layer = UpConv4x4(2)
  params = layer.init(jax.random.key(0), x)
  lowered = jax.jit(lambda p: layer.apply(p, x)).lower(params).as_text()
  assert "convolution" not in lowered and "dot_general" in lowered
  conv = UpConv4x4(2, impl="conv")
  assert "convolution" in jax.jit(lambda p: conv.apply(p, x)).lower(params).as_text()
  with pytest.raises(ValueError, match="impl"):
    UpConv4x4(2, impl="fft").init(jax.random.key(0), x)


@pytest.mark.parametrize("image_size,channels,width", [(8, 1, 4), (16, 3, 4), (32, 1, 8), (64, 3, 2)])
def test_generator_shapes_and_param_tree(image_size, channels, width):
  z = jax.ShapeDtypeStruct((3, 10), jnp.float32)
  g = DCGANGenerator(image_size, channels, width)
  variables = jax.eval_shape(lambda k, z: g.init(k, z, train=False), jax.random.key(1), z)
  steps = int(np.log2(image_size // 4))
  top = width * 2 ** (steps - 1)
  shapes = jax.tree.map(lambda p: p.shape, variables["params"])
  # The tree nn.ConvTranspose layers had: ConvTranspose_i, [4, 4, in, out] kernels, a bias on the last only.
  expected = {"Dense_0": {"kernel": (10, 16 * top)}}
  for i in range(steps):
    out = top // 2 ** (i + 1) if i < steps - 1 else channels
    expected[f"ConvTranspose_{i}"] = {"kernel": (4, 4, top // 2 ** i, out)}
    if i == steps - 1:
      expected[f"ConvTranspose_{i}"]["bias"] = (channels,)
  assert {k: v for k, v in shapes.items() if not k.startswith("BatchNorm")} == expected
  images, _ = jax.eval_shape(lambda v, z: g.apply(v, z, train=True, mutable=["batch_stats"]), variables, z)
  assert images.shape == (3, image_size, image_size, channels) and images.dtype == jnp.float32
  d = DCGANDiscriminator(image_size, width)
  logits, _ = jax.eval_shape(lambda k, x: d.init_with_output(k, x, train=False), jax.random.key(2), images)
  assert logits.shape == (3,)


def test_generator_matmul_equals_conv_in_training():
  """A whole generator: train-mode outputs, batch stats and param gradients agree between the two forms."""
  z = jax.random.normal(jax.random.key(0), (4, 16))
  conv, ours = DCGANGenerator(16, 1, 4, upconv_impl="conv"), DCGANGenerator(16, 1, 4)
  variables = jax.jit(lambda k: conv.init(k, z, train=False))(jax.random.key(1))

  def run(g):
    def loss(params):
      images, stats = g.apply({**variables, "params": params}, z, train=True, mutable=["batch_stats"])
      return jnp.mean(images ** 2), (images, stats)
    return jax.value_and_grad(loss, has_aux=True)(variables["params"])

  ((l_ref, (y_ref, s_ref)), g_ref), ((l, (y, s)), g) = jax.jit(lambda: (run(conv), run(ours)))()
  np.testing.assert_allclose(y, y_ref, **TOL)
  np.testing.assert_allclose(l, l_ref, **TOL)
  for a, b in zip(jax.tree.leaves((g, s)), jax.tree.leaves((g_ref, s_ref))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
