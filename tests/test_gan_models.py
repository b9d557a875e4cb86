"""The WGAN-GP / SNGAN networks (aigc_jax/models/gan_resnet.py): spectral norm against an SVD, the projection
head against its formula, conditional batch norm's label dependence, initialisation, shapes, ValueErrors.

Cheap by construction: XLA:CPU compiles a jitted `init` of a spectrally normalised net in ~4 CPU-s (the
applies in ~1 s), so the value tests fill the variables from numpy (`_variables`) and compile one jitted
function per test; shapes are checked by tracing only (`jax.eval_shape`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.models.gan_resnet import (ConditionalBatchNorm, DiscriminatorBlock, DiscriminatorHead,
                                        ResNetDiscriminator, ResNetGenerator, SNGANDiscriminator, SNGANGenerator)

B, Z = 4, 16
KEY = jax.random.key(0)


def _variables(module, *args, seed=0):
  """Variables of `module` for args, drawn in numpy: kernels/embeddings ~ N(0, 1/fan_in), biases and BN means
  ~ N(0, 0.1), scales/gammas/variances ~ 1 + N(0, 0.1) (> 0), SN vectors u ~ N(0, 1) and sigma = 1."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = jax.tree_util.keystr(path), leaf.shape
    if name.endswith("sigma']"):
      return np.ones(shape, np.float32)
    if name.endswith("u']"):
      return rng.standard_normal(shape).astype(np.float32)
    if any(k in name for k in ("'scale'", "'var'", "'gammas'")):
      return (1.0 + 0.1 * np.abs(rng.standard_normal(shape))).astype(np.float32)
    if len(shape) >= 2 and "'betas'" not in name:
      return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)

  shapes = jax.eval_shape(lambda *a: module.init(KEY, *a, train=False), *args)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _images(size, batch=B):
  return jax.random.uniform(jax.random.key(1), (batch, size, size, 3), minval=-1.0, maxval=1.0)


def _top_singular_value(kernel):
  return np.linalg.svd(np.asarray(kernel).reshape(-1, kernel.shape[-1]), compute_uv=False)[0]


@pytest.fixture(scope="module")
def projection_run():
  """A spectrally normalised projection discriminator applied 150 times in training mode (150 power
  iterations), to the same 4 images twice over with two label vectors; what the last application saw."""
  disc = ResNetDiscriminator(width=8, num_classes=5, head="projection")
  x = jnp.concatenate([_images(8)] * 2)
  labels = jnp.array([0, 1, 2, 3, 4, 4, 0, 1])
  variables = _variables(disc, x, labels)

  @jax.jit
  def run(stats):
    def step(_, carry):
      (logits, aux), updates = disc.apply({"params": variables["params"], "batch_stats": carry["stats"]}, x, labels,
                                          train=True, mutable=["batch_stats", "intermediates"],
                                          capture_intermediates=True)
      assert aux is None
      seen = updates["intermediates"]
      return dict(stats=updates["batch_stats"], logits=logits, phi=seen["head"]["phi"][0],
                  conv1_out=seen["block1"]["conv1"]["__call__"][0])

    init = dict(stats=stats, logits=jnp.zeros((2 * B,)), phi=jnp.zeros((2 * B, 8)),
                conv1_out=jnp.zeros((2 * B, 8, 8, 8)))
    return jax.lax.fori_loop(0, 150, step, init)

  return dict(x=x, labels=labels, params=variables["params"], **run(variables["batch_stats"]))


def test_spectral_norm_converges_to_the_largest_singular_value(projection_run):
  """Every stored sigma is the SVD's top singular value of its layer's reshaped kernel (embedding
  included), and the first conv really computes with kernel / sigma."""
  params, stats = projection_run["params"], projection_run["stats"]
  layers = [(block, name, "kernel") for block in ("block1", "block2", "block3", "block4")
            for name in ("conv1", "conv2", "shortcut") if f"{name}_sn" in stats[block]]
  assert len(layers) == 10  # 2 convs per block + the two down-blocks' 1x1 shortcuts
  for module, name, kind in layers + [("head", "embed", "embedding")]:
    kernel = params[module][name][kind]
    sigma = stats[module][f"{name}_sn"][f"{name}/{kind}/sigma"]
    assert not np.isclose(_top_singular_value(kernel), 1.0, rtol=0.05)  # normalising has work to do
    np.testing.assert_allclose(sigma, _top_singular_value(kernel), rtol=1e-3, err_msg=f"{module}/{name}")
    np.testing.assert_allclose(_top_singular_value(kernel / sigma), 1.0, rtol=1e-3)
  # The first conv sees the image itself: its output is conv(x, kernel / sigma) + bias, sigma as stored.
  conv1 = params["block1"]["conv1"]
  sigma = stats["block1"]["conv1_sn"]["conv1/kernel/sigma"]
  expected = nn.Conv(8, (3, 3), padding="SAME").apply(
      {"params": {"kernel": conv1["kernel"] / sigma, "bias": conv1["bias"]}}, projection_run["x"])
  np.testing.assert_allclose(projection_run["conv1_out"], expected, rtol=1e-5, atol=1e-5)


def test_projection_head_equals_its_formula(projection_run):
  """logits = psi(phi) + <embed(y), phi> with the spectrally normalised psi and embedding (Miyato & Koyama
  2018, eq. 3). The batch holds the same images twice with two label vectors: phi and psi agree between
  the halves, the logits differ by the projection term alone. (Both discriminators share the head.)"""
  head, sn = projection_run["params"]["head"], projection_run["stats"]["head"]
  phi, logits, labels = projection_run["phi"], projection_run["logits"], projection_run["labels"]
  assert "bias" not in head["psi"] and logits.shape == (2 * B,)  # SNGAN's psi has no bias
  psi = phi @ head["psi"]["kernel"][:, 0] / sn["psi_sn"]["psi/kernel/sigma"]
  embed = head["embed"]["embedding"][labels] / sn["embed_sn"]["embed/embedding/sigma"]
  np.testing.assert_allclose(logits, psi + jnp.sum(embed * phi, axis=-1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(phi[:B], phi[B:], rtol=1e-6)
  assert np.all(np.abs(logits[:B] - logits[B:]) > 1e-4)


@pytest.mark.parametrize("arch", [ResNetGenerator, SNGANGenerator])
def test_conditional_batch_norm_depends_on_the_label_only_through_its_gammas_and_betas(arch):
  """Distinct per-class gammas/betas: relabelling example 0 changes its image and no other; every class
  given the same rows: it changes nothing. Running statistics (train=False), so examples are independent
  and both label vectors fit in one batch [z; z]."""
  gen = arch(image_size=8, width=8, num_classes=3)
  z = jnp.concatenate([jax.random.normal(jax.random.key(2), (B, Z))] * 2)
  labels = jnp.array([0, 0, 1, 2, 1, 0, 1, 2])  # the second half relabels example 0 only
  distinct = _variables(gen, z, labels)
  tables = lambda path: any(k in jax.tree_util.keystr(path) for k in ("'gammas'", "'betas'"))
  shared = jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.broadcast_to(leaf[:1], leaf.shape) if tables(path) else leaf, distinct)

  images_distinct, images_shared = jax.jit(lambda vs: [gen.apply(v, z, labels, train=False) for v in vs])(
      (distinct, shared))
  assert images_distinct.shape == (2 * B, 8, 8, 3) and float(jnp.max(jnp.abs(images_distinct))) <= 1.0
  assert float(jnp.std(images_distinct[:B], axis=0).min()) > 1e-3  # examples differ: not a constant map
  assert float(jnp.max(jnp.abs(images_distinct[0] - images_distinct[B]))) > 1e-3
  np.testing.assert_allclose(images_distinct[1:B], images_distinct[B + 1:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(images_shared[:B], images_shared[B:], rtol=1e-6, atol=1e-6)


def test_initialisation_follows_the_reference():
  """Glorot-uniform bounds (sngan_projection): gain sqrt(2) on residual 3x3 convs, 1 on 1x1 shortcuts and
  psi; conditional gammas start at 1 and betas at 0."""
  @jax.jit
  def init():
    block = DiscriminatorBlock(8, downsample=True, spectral_norm=False).init(KEY, _images(8), False)
    head = DiscriminatorHead(spectral_norm=False).init(KEY, jnp.ones((B, 8)), None, False)
    norm = ConditionalBatchNorm(3).init(KEY, jnp.ones((B, 2, 2, 8)), jnp.zeros((B,), jnp.int32), False)
    return block["params"], head["params"], norm["params"]

  block, head, norm = init()
  for kernel, gain in ((block["conv1"]["kernel"], np.sqrt(2.0)), (block["shortcut"]["kernel"], 1.0),
                       (head["psi"]["kernel"], 1.0)):
    fan_in, fan_out = np.prod(kernel.shape[:-1]), np.prod(kernel.shape[:-2]) * kernel.shape[-1]
    limit = gain * np.sqrt(6.0 / (fan_in + fan_out))
    assert limit * 0.8 < float(jnp.max(jnp.abs(kernel))) <= limit
  assert norm["gammas"]["embedding"].shape == (3, 8) and np.all(norm["gammas"]["embedding"] == 1)
  assert np.all(norm["betas"]["embedding"] == 0) and "BatchNorm_0" not in norm  # no scale/offset of its own


@pytest.mark.parametrize("size,num_classes", [(16, 0), (32, 10)])
def test_shapes_and_table_structure(size, num_classes):
  """Output shapes/dtypes for both archs (traced only), plus the structure the papers' tables fix."""
  z = jax.ShapeDtypeStruct((B, Z), jnp.float32)
  x = jax.ShapeDtypeStruct((B, size, size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((B,), jnp.int32) if num_classes else None
  heads = ("projection", "acgan") if num_classes else ("plain",)
  steps = {16: 2, 32: 3}[size]
  for g_arch, d_arch in ((ResNetGenerator, ResNetDiscriminator), (SNGANGenerator, SNGANDiscriminator)):
    gen = g_arch(image_size=size, width=8, num_classes=num_classes)
    images, g_vars = jax.eval_shape(lambda z, y: gen.init_with_output(KEY, z, y, train=True), z, labels)
    assert (images.shape, images.dtype) == ((B, size, size, 3), jnp.float32)
    norm = g_vars["params"]["block1"]["bn1"] if g_arch is ResNetGenerator else g_vars["params"]["bn1"]
    assert ("gammas" in norm and "betas" in norm) == bool(num_classes)
    for head, spectral_norm in [(h, True) for h in heads] + [(heads[0], False)]:
      disc = d_arch(width=8, num_classes=num_classes, head=head, spectral_norm=spectral_norm)
      (logits, aux), d_vars = jax.eval_shape(lambda x, y: disc.init_with_output(KEY, x, y, train=True), x, labels)
      assert (logits.shape, logits.dtype) == ((B,), jnp.float32)
      assert (None if aux is None else aux.shape) == ((B, num_classes) if head == "acgan" else None)
      assert ("batch_stats" in d_vars) == spectral_norm  # no batch norm in D: without SN no batch_stats
    if g_arch is ResNetGenerator:  # one up-block per doubling from 4x4 (Table 4: three at 32x32)
      assert sorted(k for k in g_vars["params"] if k.startswith("block")) == [f"block{i + 1}" for i in range(steps)]
    else:  # Table 3: dense to 4x4x(8w) at 32x32, deconvs halve the width; D flattens 4x4x(8w) at 32x32
      assert g_vars["params"]["dense_in"]["kernel"].shape == (Z, 16 * 8 * 2 ** steps)
      assert [g_vars["params"][f"deconv{i + 1}"]["kernel"].shape[-1] for i in range(steps)] == \
          [8 * 2 ** (steps - 1 - i) for i in range(steps)]
      assert d_vars["params"]["head"]["psi"]["kernel"].shape == ((size // 8) ** 2 * 64, 1)


@pytest.mark.parametrize("build,match", [
    (lambda: ResNetGenerator(16, width=8, num_classes=3).init(KEY, jnp.zeros((B, Z))), "labels_B"),
    (lambda: SNGANGenerator(16, width=8, num_classes=3).init(KEY, jnp.zeros((B, Z))), "labels_B"),
    (lambda: ResNetGenerator(24, width=8).init(KEY, jnp.zeros((B, Z))), "bottom \\* 2\\^k"),
    (lambda: SNGANGenerator(4, width=8).init(KEY, jnp.zeros((B, Z))), "k >= 1"),
    (lambda: ResNetDiscriminator(8, 3, "projection").init(KEY, jnp.zeros((B, 8, 8, 3))), "labels_B"),
    (lambda: SNGANDiscriminator(8, 0, "acgan").init(KEY, jnp.zeros((B, 8, 8, 3))), "needs num_classes > 0"),
    (lambda: ResNetDiscriminator(8, 0, "projection").init(KEY, jnp.zeros((B, 8, 8, 3))), "needs num_classes"),
    (lambda: ResNetDiscriminator(8, 3, "plain").init(KEY, jnp.zeros((B, 8, 8, 3)), jnp.zeros(B, int)), "ignore"),
    (lambda: ResNetDiscriminator(8, 0, "concat").init(KEY, jnp.zeros((B, 8, 8, 3))), "unknown discriminator head"),
    (lambda: ResNetDiscriminator(8, pool="max").init(KEY, jnp.zeros((B, 8, 8, 3))), "unknown pool"),
])
def test_bad_configurations_raise_value_errors(build, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(build)
