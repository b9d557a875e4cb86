"""MaskGIT — Chang, Zhang, Jiang, Liu & Freeman, "MaskGIT: Masked Generative Image Transformer", CVPR 2022.

Stage 2 of a two-stage model: a bidirectional transformer over the code grids of a VQGAN (stage 1,
experiments/vqgan.py), trained to fill in randomly masked codes, sampled by scheduled parallel decoding
(aigc_jax/families/maskgit.py). The authors released inference code and configs but no training code.

Paper setting (ImageNet 256x256, class-conditional), as the released config
(google-research/maskgit, maskgit/configs/maskgit_class_cond_config.py) records it: VQGAN with K = 1024 codes
on a 16x16 grid; transformer of 24 layers, width 768, MLP 3072, 16 heads, dropout 0.1, learned positions; the
class is a token in front of the 256 codes; cosine mask schedule, loss on the masked codes only with label
smoothing 0.1; AdamW lr 1e-4, betas (0.9, 0.96), weight decay 4.5e-2, 5,000 warm-up steps, batch 256,
2,000,000 steps; decoding with choice temperature 4.5 (their decoder anneals it by (1 - (t+1)/T)).
Reported: ImageNet 256x256 class-conditional FID 6.18 with T = 8 decoding steps (Table 1; the FID checked
against Besnier & Chen's reproduction report, which quotes it; the paper's IS of 182.1 is from our reading of
Table 1 and was not re-checked offline).

What our code differs in (the default preset is "as far as our code supports it"): our transformer blocks are
pre-LayerNorm (the GPT's; the release is BERT-style post-LN); the warm-up is followed by a constant rate (the
release names no decay); our VQGAN stage is experiments/vqgan.py's conv stack, not the authors' tokenizer, so
FID is not comparable; no EMA of the weights. Classifier-free guidance (`maskgit.label_dropout`,
`sample.guidance_scale`) is an option the paper does not use.

Every stage, in order (cpu preset: offline, bundled 8x8 digits upsampled to 16x16, minutes on 2 cores):

  python -m aigc_jax.main --config=experiments/vqgan.py:cpu --workdir=runs/vqgan_cpu                 # 1. VQGAN
  python -m aigc_jax.main --config=experiments/vqgan.py:cpu --workdir=runs/vqgan_cpu --mode=encode   # 2. codes
  python -m aigc_jax.main --config=experiments/vqgan.py:cpu --workdir=runs/vqgan_cpu --mode=encode \\
      --config.data.split=test                                                                       #    (eval)
  python -m aigc_jax.main --config=experiments/maskgit.py:cpu --workdir=runs/maskgit_cpu             # 3. MaskGIT
  python -m aigc_jax.main --config=experiments/maskgit.py:cpu --workdir=runs/maskgit_cpu --mode=sample \\
      --config.sample.label=3                                                                        # 4. a class
  python -m aigc_jax.main --config=experiments/maskgit.py:cpu --workdir=runs/maskgit_cpu --mode=eval # 5. metrics

The paper preset is the same with experiments/vqgan.py (ImageNet, workdir runs/vqgan_imagenet) and
experiments/maskgit.py --workdir=runs/maskgit_imagenet. `--mode=eval` reports eval_step's masked-token
cross-entropy and accuracy at a fixed mask ratio (maskgit.eval_mask_ratio; NOT a likelihood) and, with
samples decoded by the VQ run, the image metrics of eval.metrics.
cpu: class-conditional over the 8x8 grids of 64 codes of experiments/vqgan.py:cpu (10 digit classes); a
4-layer, width-128 transformer; batch 32, 1,500 steps (as dalle.py:cpu); label dropout 0.1 so
--config.sample.guidance_scale works; decoded with T = 8 steps.
Measured on 2 CPU cores (2026-11-26, otherwise quiet VM; bench/RESULTS.md "Token-based images"), the whole
pipeline from scratch: vqgan.py:cpu 1,000 steps 236 s, --mode=encode train + test 16 s, dalle.py:cpu 448 s,
maskgit.py:cpu 462 s (so VQGAN -> codes -> either prior in 12-12.5 minutes). --mode=eval, 1,000 samples
(100 per class), FID and class accuracy on the digits classifier (97.3% on real test digits), reference =
the VQ run's 297 test images:
  prior                      FID    IS    class accuracy (lowest class)  network passes  generation (s)*
  dalle.py:cpu (AR, cached)  7.95   8.29  0.891 (8: 0.78)                64 (1 token)    5.8
  maskgit.py:cpu, T = 8      9.20   -     0.961 (8: 0.82)                 8 (65 tokens)  13.9
  maskgit.py:cpu, T = 12    10.01   -     0.967 (8: 0.86)                12 (65 tokens)  17.1
  * card sampling.generation_seconds_after_first_chunk: 750 samples, compiled sampler, 2 CPU devices.
MaskGIT needs 8x fewer network passes but each sees the whole grid, so on a CPU at 64 tokens the cached AR
prior generates faster; its samples are more often the asked-for class and less diverse (FID higher at the
paper's choice temperature 4.5). dalle test bits/code: 1.98 (train 1.45).
"""
from aigc_jax.configs import lock
from aigc_jax.families import maskgit


def get_config(preset: str = "paper"):
  c = maskgit.default_config()
  c.batch_size = 256
  c.num_train_steps = 2_000_000
  c.log_every_steps = 500
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000

  c.data.vq_workdir = "runs/vqgan_imagenet"   # experiments/vqgan.py's paper preset
  c.data.num_codes = 1024
  c.data.grid_size = 16
  c.data.image_size = 256
  c.data.channels = 3

  c.model.num_classes = 1000
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.width = 768
  c.model.dropout = 0.1

  c.maskgit.mask_schedule = "cosine"
  c.maskgit.label_smoothing = 0.1

  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.96
  c.optimizer.weight_decay = 4.5e-2
  c.optimizer.warmup_steps = 5000

  c.sample.steps = 8
  c.sample.temperature = 1.0
  c.sample.choice_temperature = 4.5
  c.eval.metrics = ("fid", "is", "eval_step")
  c.eval.backbone = "inception"
  c.eval.num_samples = 50_000
  c.eval.reference_split = "validation"

  if preset == "paper":
    pass
  elif preset == "cpu":
    c.batch_size = 32                          # as dalle.py:cpu, so the two priors see the same data
    c.num_train_steps = 1500
    c.log_every_steps = 100
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
    c.data.vq_workdir = "runs/vqgan_cpu"      # experiments/vqgan.py:cpu
    c.data.num_codes = 64
    c.data.grid_size = 8
    c.data.image_size = 16
    c.data.channels = 1
    c.model.num_classes = 10
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.width = 128
    c.maskgit.label_dropout = 0.1
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.sample.num = 100                         # 10x10 grid: row r is digit r
    c.eval.metrics = ("fid", "eval_step", "class_accuracy")
    c.eval.backbone = "classifier"
    c.eval.num_samples = 1000
    c.eval.reference_split = "test"
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper or cpu")
  return lock(c)
