"""DALL-E — Ramesh et al., "Zero-Shot Text-to-Image Generation", ICML 2021 (arXiv:2102.12092): a transformer
prior over the discrete codes of an image autoencoder, one token stream of [condition tokens, image codes].

Paper setting (Section 2): a dVAE compresses 256x256 RGB images to a 32x32 grid of tokens from a codebook of
8192; up to 256 BPE text tokens (vocabulary 16,384) are concatenated with the 1024 image tokens in raster order
and a 12-billion-parameter sparse transformer (64 layers, 62 heads of 64 dimensions) models the stream
autoregressively, trained on 250 million text-image pairs; the cross-entropy weights text 1/8 and image 7/8.
Reported (Section 3.2, Figure 9(a)): zero-shot FID on MS-COCO captions within about 2 points of the best prior
approach (DF-GAN), which was trained on MS-COCO; the exact values are the bars of Figure 9(a), not restated
here because this file cannot check them against the paper. Samples are reranked by CLIP (512 candidates).

Here (autoregressive family, data.name=codes, families/code_prior_ar_lib.py): the condition is one class token
(or a null token, trained with probability model.label_dropout, for classifier-free guidance at sampling time,
sample.guidance_scale), then the VQ codes in raster order; the loss is the codes' cross-entropy only (a class
is one given token, so DALL-E's text/image weighting has nothing to weigh); no CLIP reranking. Metrics:
bits per code on the test codes (eval_step) and FID/IS against the VQ run's own test images.

cpu: a class-conditional prior over the 8x8 codes (64-code codebook) that experiments/vqgan.py:cpu writes for
the 16x16 digits; GPT of 4 layers, 4 heads, width 128, context 64, batch 32, AdamW 1e-3, 1,500 steps. In order:
  python -m aigc_jax.main --config=experiments/vqgan.py:cpu --workdir=runs/vqgan_cpu                # VQ model
  python -m aigc_jax.main --config=experiments/vqgan.py:cpu --workdir=runs/vqgan_cpu --mode=encode   # train codes
  python -m aigc_jax.main --config=experiments/vqgan.py:cpu --workdir=runs/vqgan_cpu --mode=encode \\
      --config.data.split=test                                                                       # test codes
  python -m aigc_jax.main --config=experiments/dalle.py:cpu --workdir=runs/dalle_cpu                 # the prior
  python -m aigc_jax.main --config=experiments/dalle.py:cpu --workdir=runs/dalle_cpu --mode=sample \\
      --config.sample.label=3 [--config.sample.guidance_scale=2]                                     # one class
  python -m aigc_jax.main --config=experiments/dalle.py:cpu --workdir=runs/dalle_cpu --mode=eval     # bits/code, FID
(The same with experiments/vqvae.py:cpu --workdir=runs/vqvae_cpu and --config.data.vq_workdir=runs/vqvae_cpu.)
Measured (2-core VM, quiet, 2026-11-26; the comparison with maskgit.py:cpu is in bench/RESULTS.md, "Token-based
images"): the cpu preset trains in 448 s after vqgan.py:cpu (236 s) and --mode=encode (16 s); --mode=eval on 1,000
samples (100 per class): FID 7.95 and IS 8.29 on the digits classifier against the VQ run's 297 test images,
class accuracy 0.891 (lowest: digit 8, 0.78; the classifier gets 97.3% of real test digits), test bits per code
1.98 (train 1.45); generating 750 samples with the compiled sampler took 5.8 s.
"""
from aigc_jax.configs import lock
from aigc_jax.families import autoregressive


def get_config(preset: str = "cpu"):
  c = autoregressive.default_config()
  c.data.name = "codes"
  c.data.vq_workdir = "runs/vqgan_cpu"
  c.data.num_codes = 64
  c.data.grid_size = 8
  c.data.image_size = 16
  c.data.channels = 1

  c.batch_size = 32
  c.num_train_steps = 1500
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500

  c.model.block_size = 64            # grid_size ** 2: the class token and all codes but the last
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.width = 128
  c.model.dropout = 0.0
  c.model.num_classes = 10
  c.model.label_dropout = 0.1        # null-token training for classifier-free guidance

  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.min_learning_rate = 1e-4
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 1500
  c.optimizer.grad_clip_norm = 1.0

  c.sample.num = 100                 # 10x10 grid: one class per row
  c.sample.temperature = 1.0
  c.sample.top_k = 0
  c.eval.metrics = ("eval_step", "fid", "is", "class_accuracy")
  c.eval.reference_split = "test"    # test codes for bits/code; the VQ run's test images for FID
  c.eval.num_samples = 1000
  if preset != "cpu":
    raise ValueError(f"unknown preset {preset!r}; use cpu (the paper's text-to-image setting needs captions)")
  return lock(c)
