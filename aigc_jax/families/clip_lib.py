"""The CLIP family's maths, apart from its config and state: the symmetric contrastive loss with negatives
gathered across devices, zero-shot classification and retrieval recall@k, and embedding a whole split over the
mesh. Pure functions; aigc_jax/families/clip.py builds the family on them.

Loss (Radford et al. 2021, Figure 3): logits_ij = exp(t) <i_i, t_j> of unit-norm image and text embeddings, the
cross-entropy of each image over all texts and of each text over all images with the matching pair as the
target, averaged over both directions. Inside a data-parallel step a device holds b of the B = n b pairs: it
all-gathers every device's embeddings (so the negatives are the GLOBAL batch, whatever n is), scores its b rows
against all B columns in both directions, and the mean over devices (pmean) of its rows' mean is the B x B loss.
Gradients flow back through the gather (its transpose sums each device's contribution into the rows it owns),
so the pmean-ed gradient equals the one-device gradient of the global loss (tests/test_clip.py checks both).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aigc_jax import parallel
from aigc_jax.data.sources import captioned_digits
from aigc_jax.parallel import DATA_AXIS

# Zero-shot prompt templates per data source (class name -> prompts whose text embeddings are averaged, as
# CLIP's prompt ensembling does, Section 3.1.4). Digits: the source's own caption templates. Shapes: the
# grammar's single-object phrases for a class "red circle". Anything else: CLIP's default template.
ZERO_SHOT_TEMPLATES = {
    "captioned_digits": captioned_digits.TEMPLATES,
    "captioned_mnist": captioned_digits.TEMPLATES,
    "captioned_shapes": ("a {}", "a small {}", "a large {}"),
}
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def symmetric_loss(logits_BxB):
  """Mean of the image->text (rows) and text->image (columns) cross-entropies, pair i the target of row i."""
  labels_B = jnp.arange(logits_BxB.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits_BxB, labels_B)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits_BxB.T, labels_B)
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def gathered_loss(img_bxE, txt_bxE, scale, axis_name: str = DATA_AXIS):
  """(loss, image->text top-1 accuracy) of this device's b rows against the global batch's B embeddings, both
  pmean-ed over `axis_name` (the B x B symmetric_loss of the gathered batch). One device's view in shard_map."""
  b = img_bxE.shape[0]
  all_img_BxE = jax.lax.all_gather(img_bxE, axis_name, tiled=True)
  all_txt_BxE = jax.lax.all_gather(txt_bxE, axis_name, tiled=True)
  labels_b = jax.lax.axis_index(axis_name) * b + jnp.arange(b)
  i2t_bxB = scale * img_bxE @ all_txt_BxE.T
  t2i_bxB = scale * txt_bxE @ all_img_BxE.T
  loss = 0.5 * (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(i2t_bxB, labels_b))
                + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(t2i_bxB, labels_b)))
  accuracy = jnp.mean((jnp.argmax(i2t_bxB, axis=-1) == labels_b).astype(jnp.float32))
  return jax.lax.pmean(loss, axis_name), jax.lax.pmean(accuracy, axis_name)


def clip_logit_scale(log_scale, max_scale: float):
  """The stored log scale kept in [0, log max_scale]: the paper clips the scale at 100 'to prevent scaling the
  logits by more than 100'; the released code also keeps it >= 0 (temperature <= 1)."""
  return jnp.clip(log_scale, 0.0, np.log(max_scale))


def normalize(x_NxE: np.ndarray) -> np.ndarray:
  return x_NxE / np.maximum(np.linalg.norm(x_NxE, axis=-1, keepdims=True), 1e-12)


def class_embeddings(prompt_emb_KTxE: np.ndarray, num_classes: int) -> np.ndarray:
  """Per class, the renormalised mean of its T templates' unit text embeddings (rows class-major)."""
  e = normalize(np.asarray(prompt_emb_KTxE, np.float64)).reshape(num_classes, -1, prompt_emb_KTxE.shape[-1])
  return normalize(e.mean(axis=1))


def zero_shot(img_NxE: np.ndarray, class_KxE: np.ndarray, labels_N: np.ndarray) -> dict:
  """Top-1 accuracy (and its mean over classes) of argmax_k <image, class k>."""
  pred_N = np.argmax(np.asarray(img_NxE, np.float64) @ class_KxE.T, axis=1)
  hit_N = pred_N == labels_N
  per_class = [hit_N[labels_N == k].mean() for k in np.unique(labels_N)]
  return {"zero_shot_accuracy": float(hit_N.mean()), "zero_shot_mean_per_class_accuracy": float(np.mean(per_class))}


def _top(sims_QxG: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest entries of each row, best first; ties go to the lower index."""
  return np.argsort(-sims_QxG, axis=1, kind="stable")[:, :k]


def retrieval_recalls(img_NxE, txt_CxE, caption_text_ids_C, owner_C, ks=(1, 5, 10), chunk: int = 1024) -> dict:
  """Text->image and image->text recall@k over a split's images and every caption of them.

  Caption c (text id caption_text_ids_C[c]: equal strings share an id) belongs to image owner_C[c]. An image is
  relevant to a caption when the caption's TEXT is one of the image's captions, so on templated data ("a
  handwritten seven" for many sevens) any image with that caption counts, and on COCO (distinct captions) this
  is the usual protocol (Karpathy & Fei-Fei 2015): text->image recall@k is the share of captions whose image
  is among the k nearest images; image->text, the share of images with one of their captions among the k
  nearest captions."""
  img_NxE, txt_CxE = np.asarray(img_NxE, np.float32), np.asarray(txt_CxE, np.float32)
  n = len(img_NxE)
  text_ids_C, owner_C = np.asarray(caption_text_ids_C, np.int64), np.asarray(owner_C, np.int64)
  relevant = np.unique(text_ids_C * n + owner_C)  # (text, image) pairs that hold, as sorted codes
  k_max = min(max(ks), n, len(txt_CxE))
  t2i_hits, i2t_hits = [], []
  for s in range(0, len(txt_CxE), chunk):
    top_QxK = _top(txt_CxE[s:s + chunk] @ img_NxE.T, k_max)
    t2i_hits.append(np.isin(text_ids_C[s:s + chunk, None] * n + top_QxK, relevant))
  for s in range(0, n, chunk):
    top_QxK = _top(img_NxE[s:s + chunk] @ txt_CxE.T, k_max)
    i2t_hits.append(np.isin(text_ids_C[top_QxK] * n + np.arange(s, min(s + chunk, n))[:, None], relevant))
  out = {}
  for name, hits in (("text_to_image", np.concatenate(t2i_hits)), ("image_to_text", np.concatenate(i2t_hits))):
    for k in ks:
      out[f"{name}_recall@{k}"] = float(np.mean(np.any(hits[:, :k], axis=1)))
  return out


def text_ids(captions_per_example) -> tuple:
  """(text id per caption, owning example per caption) of a CaptionedSet's captions, in its token order."""
  ids, text_C, owner_C = {}, [], []
  for i, caps in enumerate(captions_per_example):
    for c in caps:
      text_C.append(ids.setdefault(c, len(ids)))
      owner_C.append(i)
  return np.asarray(text_C, np.int64), np.asarray(owner_C, np.int64)


def embed_rows(fn, state, mesh, rows: dict, batch_size: int) -> np.ndarray:
  """fn(state, rng, batch) -> [b, E] over every row of the host arrays `rows` (each [N, ...]), data-parallel:
  global batches of batch_size rounded up to the device count, the last padded with repeats and cut off."""
  mapped = parallel.data_parallel_map(fn, mesh)
  n = len(next(iter(rows.values())))
  size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  local = size // jax.process_count()
  first = jax.process_index() * local
  out = []
  for start in range(0, n, size):
    idx = np.arange(start, start + size) % n
    batch = {k: v[idx][first:first + local] for k, v in rows.items()}
    emb = mapped(state, jax.random.key(0), parallel.shard_batch(batch, mesh))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      emb = multihost_utils.process_allgather(emb, tiled=True)
    out.append(np.asarray(jax.device_get(emb))[:min(size, n - start)])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
