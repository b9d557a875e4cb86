"""CLIP — Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin, Clark, Krueger & Sutskever,
"Learning Transferable Visual Models From Natural Language Supervision", ICML 2021 (aigc_jax/families/clip.py).

Paper setting (`paper`, documents the scale-up; it cannot train here): ViT-B/32 image encoder (224x224 images,
32x32 patches, width 768, 12 layers, 12 heads) and a 12-layer, width-512, 8-head causal text transformer over a
lower-cased byte-level BPE of 49,152 merges (49,408 ids with the bytes and specials), captions of at most 76
tokens between start and end tokens, both projected to a 512-d joint space; temperature initialised to 0.07 and
clipped at 100; batch 32,768 for 32 epochs of the 400M-pair WIT set; Adam with decoupled weight decay 0.2, cosine
schedule, 2,000 warm-up iterations. Reported: 63.2% zero-shot ImageNet top-1 for ViT-B/32 (the number OpenCLIP's
README quotes for OpenAI's ViT-B/32; the paper's best, ViT-L/14@336px, 76.2%). Checked: the architecture,
context, temperature init and clip and the 63.2% against public descriptions and OpenCLIP's README; the learning
rate 5e-4 and Adam beta2 0.98 / eps 1e-6 for ViTs are our reading of the paper's Tables 19-21 and were not
re-checked offline, nor was 76.2%. WIT was never released, so the preset trains on `coco_captions` (TFDS; 118k
images, 5 captions each): expect far lower zero-shot numbers at that data scale. Steps: 32 epochs x 400M / 32,768
= 390,625. Ours differs: no lower-casing in the BPE, no random crops; the paper's ResNet image encoders are not
built (the ViT is the default and only encoder).

The CPU presets (offline, each in well under 20 minutes on 2 CPU cores) feed the text-to-image pipeline; CLIP
is its middle stage. The three stages, in the order they must run (each later stage finds the earlier ones at
these workdirs, the defaults of latent_diffusion.py's model.autoencoder and model.clip_workdir):

  python -m aigc_jax.main --config=experiments/autoencoder_kl.py:cpu --workdir=runs/autoencoder_kl_cpu
  python -m aigc_jax.main --config=experiments/clip.py:cpu --workdir=runs/clip_cpu
  python -m aigc_jax.main --config=experiments/latent_diffusion.py:cpu --workdir=runs/latent_diffusion_cpu

and `:cpu_shapes` with the *_cpu_shapes workdirs for captioned_shapes. Other CLIP commands:

  python -m aigc_jax.main --config=experiments/clip.py:cpu --workdir=runs/clip_cpu                 # digits
  python -m aigc_jax.main --config=experiments/clip.py:cpu --workdir=runs/clip_cpu --mode=eval     # card
  python -m aigc_jax.main --config=experiments/clip.py:cpu --workdir=runs/clip_cpu --mode=sample   # figure
  python -m aigc_jax.main --config=experiments/clip.py:cpu_shapes --workdir=runs/clip_cpu_shapes   # shapes

--mode=eval writes eval/<step>.json with zero_shot_accuracy (class prompts from clip_lib.ZERO_SHOT_TEMPLATES:
"a handwritten {}", ... for digits; "a {}", "a small {}", "a large {}" for shapes' 30 colour-shape classes)
and text->image / image->text recall@1/5/10 on the test split. --mode=sample writes the retrieval figure: row
r = the prompt of class r, its columns the nearest test images. Other code reads a run through
`aigc_jax.families.clip.load_clip(workdir)`.

cpu: captioned_digits (8x8, 1,500 train / 297 test), ViT with 2x2 patches (16 tokens), width 64, 2 layers per
tower, 64-d joint space, byte captions of at most 32 tokens (the longest, "a seven written by hand", is 25),
batch 128, 1,500 steps.
cpu_shapes: captioned_shapes (16x16 RGB, 10,000 train / 1,000 test; the size the text-to-image shapes presets
use), 4x4 patches (16 tokens), width 64, 2 layers, BPE of 512 ids (the longest training caption, 111 bytes, is
22 tokens with BOS/EOS) in 32-token captions, batch 128, 2,000 steps. (At 32x32, 4x4 patches, width 96 and 3
layers ran at 0.37 steps/s: over two hours.)

Measured (2 CPU cores shared with other jobs, load average ~7, so slower than a quiet machine; 2026-11):
cpu: 1,500 steps in ~10.5 minutes (1.6-3.2 steps/s), final loss 2.34 (ln 128 = 4.85 at the start; templated
captions repeat within a batch, so the floor is well above 0). Test split (297 digits), eval/1500.json:
zero-shot accuracy 0.842 (chance 0.1; mean per class 0.841), text->image recall@1/5/10 0.259 / 0.771 / 0.919,
image->text 0.205 / 0.226 / 0.391, logit scale 16.7. Image->text is low by construction: each test image has ONE
caption whose template (of 4) was drawn at random, which no image can reveal. The retrieval figure
(--mode=sample) retrieves 96 of 100 images of the prompt's digit.
cpu_shapes (16x16, 2026-11-27, load ~5: 2,000 steps in 24 minutes wall): zero-shot accuracy over the 30
colour-shape classes 0.208 (chance 0.033), text->image recall@1/5/10 0.626 / 0.907 / 0.947, image->text 0.640 /
0.844 / 0.930, logit scale 36.8. (At 32x32 with 8x8 patches it ran at 2.3 steps/s at load ~7.)
"""
from aigc_jax.configs import lock
from aigc_jax.families import clip


def get_config(preset: str = "paper"):
  c = clip.default_config()
  c.batch_size = 32_768
  c.num_train_steps = 390_625
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  c.sample_every_steps = 0
  c.data.name = "coco_captions"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.random_flip = False
  c.data.tokenizer = "bpe"
  c.data.bpe_vocab_size = 49_408
  c.data.caption_length = 77        # 76 tokens between start and end, as the paper caps them
  m = c.model
  m.embed_dim = 512
  m.patch_size = 32
  m.vision_width = 768
  m.vision_layers = 12
  m.vision_heads = 12
  m.text_width = 512
  m.text_layers = 12
  m.text_heads = 8
  m.init_temperature = 0.07
  m.max_logit_scale = 100.0
  o = c.optimizer
  o.name = "adamw"
  o.learning_rate = 5e-4
  o.b1, o.b2, o.eps = 0.9, 0.98, 1e-6
  o.weight_decay = 0.2
  o.schedule = "cosine"
  o.warmup_steps = 2_000
  o.decay_steps = 390_625
  o.min_learning_rate = 0.0
  c.eval.metrics = ("eval_step",)
  c.eval.reference_split = "validation"
  c.eval.batch_size = 1_024

  if preset == "paper":
    pass
  elif preset in ("cpu", "cpu_shapes"):
    c.batch_size = 128
    c.log_every_steps = 100
    c.data.tokenizer = "byte"
    c.data.bpe_vocab_size = 0
    c.data.caption_length = 32
    c.eval.reference_split = "test"
    c.eval.batch_size = 256
    m.embed_dim = 64
    m.vision_heads = m.text_heads = 4
    o.weight_decay = 0.1
    o.learning_rate = 1e-3
    o.warmup_steps = 100
    c.sample.num = 100             # 10 prompts x the 10 nearest test images
    c.sample_every_steps = 1_500   # the retrieval figure at the last step (cpu_shapes: 2,000)
    if preset == "cpu":
      c.num_train_steps = o.decay_steps = 1_500
      c.checkpoint_every_steps = c.eval.every_steps = 1_500
      c.data.name = "captioned_digits"
      c.data.image_size = 8
      c.data.channels = 1
      m.patch_size = 2
      m.vision_width = m.text_width = 64
      m.vision_layers = m.text_layers = 2
    else:
      c.num_train_steps = o.decay_steps = 2_000
      c.checkpoint_every_steps = c.eval.every_steps = 2_000
      c.sample_every_steps = 2_000
      c.data.name = "captioned_shapes"
      c.data.image_size = 16
      c.data.tokenizer = "bpe"
      c.data.bpe_vocab_size = 512
      m.patch_size = 4
      m.vision_width = m.text_width = 64
      m.vision_layers = m.text_layers = 2
  else:
    raise ValueError(f"unknown preset {preset!r}; use paper, cpu or cpu_shapes")
  return lock(c)
