"""GPT — Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019, at the
character-level Shakespeare scale of Karpathy's nanoGPT (github.com/karpathy/nanoGPT, README "quick start").

nanoGPT's reference runs on tiny Shakespeare (1.1M characters, 65-character vocabulary, first 90% train):
  shakespeare_char: 6 layers, 6 heads, width 384, context 256, batch 64, dropout 0.2 (attention probabilities
    too: nanoGPT's attn_dropout / flash dropout_p), no biases, AdamW lr 1e-3
    (beta2 0.99, weight decay 0.1, warm-up 100, cosine to 1e-4 at 5,000), 5,000 iterations. Reported: best
    validation loss 1.4697 after ~3 minutes on one A100.
      python train.py config/train_shakespeare_char.py
  cpu: 4 layers, 4 heads, width 128, context 64, batch 12, dropout 0, 2,000 iterations decaying over 2,000.
    Reported: validation loss ~1.88 after ~3 minutes on a CPU.
      python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
Ours (same text as a file; bench/RESULTS.md has the measured numbers and times):
  python -m aigc_jax.main --config=experiments/gpt.py --workdir=runs/gpt_shakespeare     # TFDS, online
  python -m aigc_jax.main --config=experiments/gpt.py:cpu --workdir=runs/gpt_cpu \\
      --config.data.name=text_file --config.data.path=input.txt                          # nanoGPT's CPU run
  python -m aigc_jax.main --config=experiments/gpt.py:cpu --workdir=runs/gpt_cpu \\
      --mode=sample --config.sample.prompt="ROMEO:"                                       # samples/<step>.txt
  python bench/text.py val --workdir=runs/gpt_cpu --preset=cpu [--set data.path=...]      # validation loss
Side by side with nanoGPT's own train.py on 2 cores (`python bench/nanogpt.py --nanogpt=<checkout>
--data=input.txt`, 2026-11-27, medians of 3 alternating rounds): on a 2-core AMD EPYC VM 161.0 s vs 161.1 s wall;
on a 2-core Intel Xeon VM 103.4 s vs 96.9 s (0.94x; 0.74x before models/layers.Dense); validation 1.8928 vs
1.8871 (nanoGPT's checkpoint on our windows).
Measured on one H200 (bench/RESULTS.md, 2026-11-27, bf16, this preset): 5,000 iterations in 243 s with a
validation every 250 steps; best validation loss 1.455 at step 2,000 (nanoGPT's best: 1.4697; ours without
attention-probability dropout: 1.496 at 1,000), then overfitting to 1.703 at 5,000. Like nanoGPT, the preset keeps
the best validation loss's checkpoint (eval.keep_best; sample it with `--config.load_checkpoint=best`).
Presets: shakespeare_char (default), cpu. Without data.name the cpu preset trains offline on the Python
standard library's own source files.
"""
from aigc_jax.configs import lock
from aigc_jax.families import autoregressive


def get_config(preset: str = "shakespeare_char"):
  c = autoregressive.default_config()
  c.batch_size = 64
  c.num_train_steps = 5000
  c.log_every_steps = 250
  c.checkpoint_every_steps = 1000
  c.sample_every_steps = 1000

  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "char"

  c.model.block_size = 256
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.width = 384
  c.model.dropout = 0.2
  c.model.attention_dropout = 0.2    # nanoGPT drops attention probabilities with the same rate
  c.model.use_bias = False

  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.min_learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 5000
  c.optimizer.grad_clip_norm = 1.0

  c.sample.max_new_tokens = 500      # nanoGPT's sample.py
  c.sample.temperature = 0.8
  c.sample.top_k = 200

  # nanoGPT evaluates every 250 iterations and writes a checkpoint only when the validation loss improves: the
  # best step's checkpoint is kept beside the latest (`--config.load_checkpoint=best` samples from it).
  c.eval.every_steps = 250
  c.eval.keep_best = "loss"

  if preset == "shakespeare_char":
    pass
  elif preset == "cpu":
    c.data.name = "python_stdlib"
    c.batch_size = 12
    c.num_train_steps = 2000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.sample_every_steps = 1000
    c.model.block_size = 64
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.width = 128
    c.model.dropout = 0.0
    c.model.attention_dropout = 0.0
    c.optimizer.decay_steps = 2000
    c.eval.every_steps = 0           # the timed CPU run (bench/nanogpt.py): `bench/text.py val` scores it after
    c.eval.keep_best = ""
    c.steps_per_dispatch = 10        # a small model: one jitted call per 10 steps (1.06x steps/s, bench/RESULTS.md)
  else:
    raise ValueError(f"unknown preset {preset!r}; use shakespeare_char or cpu")
  return lock(c)
