"""TFDS image datasets: the common ones by name, and any other TFDS builder with an `image` feature through
a resolver (TensorFlow is imported only when such a dataset is used)."""
from aigc_jax.data.pipeline import image_source
from aigc_jax.data.registry import register_resolver, register_source

COMMON = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped", "celeb_a")


def tfds_image_source(name: str):
  def load(d, split):
    from aigc_jax.data import tfds_source
    return tfds_source.load_tfds_images(name, split, d.image_size, d.channels, data_dir=d.get("data_dir") or None)
  return image_source(name, load, keys=("data_dir",),
                      doc=f"TFDS {name} (downloaded on first use into data.data_dir or ~/tensorflow_datasets)")


for _name in COMMON:
  register_source(tfds_image_source(_name))


@register_resolver
def _any_tfds_builder(name: str):
  try:
    from aigc_jax.data import tfds_source
    exists = tfds_source.tfds_builder_exists(name)
  except ImportError:  # no tensorflow / tensorflow-datasets in this environment
    return None
  return tfds_image_source(name) if exists else None
