"""TensorBoard writers that work with or without TensorFlow.

`create_writer(workdir, just_logging=False)` returns a clu-MetricWriter-compatible writer:
  * TensorFlow already imported by this process (a TFDS source, a notebook): clu's default writer (console
    log + TF summary file), wrapped so that write_videos lands in the event file too (as animated GIFs on the
    images dashboard; clu's own SummaryWriter drops videos).
  * otherwise (TF not imported, missing or broken): `EventFileMetricWriter`, which logs like clu's
    LoggingWriter and writes standard event files with the `tensorboard` package only, laid out as
    tf.summary lays them out (plugin tensors under the same tags), so either writer continues the other's
    series. Importing TensorFlow only to write events would cost every run ~9 s of start-up (measured on a
    2-core VM), so the writer never imports it.
    `clu.metric_writers` imports TF in its package __init__ (and so does clu.periodic_actions), so this
    writer duck-types clu's interface instead of subclassing it.
Importing this module never imports TensorFlow.
"""
import functools
import itertools
import os
import socket
import sys
import threading
import time
from typing import Any, Mapping, Optional

import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.audio import metadata as audio_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.text import metadata as text_metadata
# record_writer frames records with a pure-Python CRC; tensorboard's EventFileWriter would reach for
# tf.io.gfile (importing TF whenever it is installed) and flush on a background thread.
from tensorboard.summary.writer.record_writer import RecordWriter

from aigc_jax.media import audio, video
from aigc_jax.media.images import encode_png

_FILE_IDS = itertools.count()


def create_writer(workdir: Optional[str], just_logging: bool = False):
  """A MetricWriter for `workdir` (events next to the checkpoints); `just_logging` (hosts > 0): console only."""
  if "tensorflow" not in sys.modules:
    return EventFileMetricWriter(None if just_logging else workdir)
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except  a broken TF install (e.g. CUDA mismatch)
    logging.info("TensorBoard events without TensorFlow (%s: %s)", type(e).__name__, e)
    return EventFileMetricWriter(None if just_logging else workdir)
  return _clu_with_videos_class()(metric_writers.create_default_writer(workdir, just_logging=just_logging))


def _uint8_images(x) -> np.ndarray:
  """TF's image convention: uint8 as is, floats in [0, 1] scaled to 255."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  return np.rint(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _gifs(videos: Mapping[str, Any], fps: float):
  """{key: (H, W, [gif bytes per video])} for [N, T, H, W, C] or [T, H, W, C] uint8 / [0, 1] float videos."""
  out = {}
  for key, v in videos.items():
    v = _uint8_images(v)
    v = v[None] if v.ndim == 4 else v
    video.check_shape(v)
    out[key] = (v.shape[2], v.shape[3], [video.encode_gif(frames, fps) for frames in v])
  return out


@functools.lru_cache(maxsize=None)
def _clu_with_videos_class():
  """Defined on first use: clu's interface module can only be imported where TF imports."""
  from clu.metric_writers import interface  # pylint: disable=g-import-not-at-top

  class CluWithVideos(interface.MetricWriter):
    """Delegates to a clu writer; videos go through write_summaries as the image plugin's tensor
    [width, height, gif, ...], which TensorBoard shows (animated) on the images dashboard."""

    def __init__(self, inner):
      self.inner = inner

    def write_videos(self, step, videos, *, fps: float = video.DEFAULT_FPS):
      meta = image_metadata.create_summary_metadata(display_name=None, description=None).SerializeToString()
      values, metadata = {}, {}
      for key, (h, w, gifs) in _gifs(videos, fps).items():
        values[key] = np.array([str(w).encode(), str(h).encode(), *gifs], dtype=object)
        metadata[key] = meta
      self.inner.write_summaries(step, values, metadata=metadata)

    def write_summaries(self, step, values, metadata=None):
      self.inner.write_summaries(step, values, metadata=metadata)

    def write_scalars(self, step, scalars):
      self.inner.write_scalars(step, scalars)

    def write_images(self, step, images):
      self.inner.write_images(step, images)

    def write_audios(self, step, audios, *, sample_rate):
      self.inner.write_audios(step, audios, sample_rate=sample_rate)

    def write_texts(self, step, texts):
      self.inner.write_texts(step, texts)

    def write_histograms(self, step, arrays, num_buckets=None):
      self.inner.write_histograms(step, arrays, num_buckets=num_buckets)

    def write_hparams(self, hparams):
      self.inner.write_hparams(hparams)

    def flush(self):
      self.inner.flush()

    def close(self):
      self.inner.close()

  return CluWithVideos


def _strings(shape: tuple, values: list) -> tensor_pb2.TensorProto:
  """A DT_STRING tensor of `shape` holding `values` (row-major)."""
  dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
  shape_proto = tensor_shape_pb2.TensorShapeProto(dim=dims)
  return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape_proto, string_val=values)


_SCALAR_METADATA = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
    plugin_name="scalars"))


def _float_scalar(v) -> tensor_pb2.TensorProto:
  return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                float_val=[float(np.asarray(v))])


def _image_tensor(width: int, height: int, encoded: list) -> tensor_pb2.TensorProto:
  """The image plugin's tensor, as tf.summary.image writes it: [width, height, image 0, image 1, ...]."""
  return _strings((len(encoded) + 2,), [str(width).encode(), str(height).encode(), *encoded])


def _hparam_value(v):
  v = v.item() if isinstance(v, np.generic) else v
  return v if isinstance(v, (bool, int, float, str)) else str(v)


class EventFileMetricWriter:
  """clu's MetricWriter methods without TensorFlow: scalars (float tensors, scalars plugin), images and videos
  (PNG / GIF in the image plugin's tensor), audio (WAV, audio plugin), text (text plugin), histograms (HistogramProto),
  hparams (hparams plugin), raw tensors; every call also logged like clu's LoggingWriter.
  `logdir=None`: log only. Synchronous: each call is in the file (unflushed) when it returns."""

  def __init__(self, logdir: Optional[str] = None):
    self.path = None
    self._records = None
    self._lock = threading.Lock()
    if logdir:
      os.makedirs(logdir, exist_ok=True)
      # TensorBoard reads files whose names hold "tfevents"; host, pid and a counter keep writers apart.
      name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
      self.path = os.path.join(logdir, f"{name}.{next(_FILE_IDS)}.v2")
      self._records = RecordWriter(open(self.path, "wb"))  # pylint: disable=consider-using-with
      self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event: event_pb2.Event):
    if self._records is not None:
      with self._lock:
        self._records.write(event.SerializeToString())

  def _summary(self, step: int, values: list):
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items())))
    # As tf.summary.scalar writes them in TF2 (and so clu): a float32 scalar tensor of the scalars plugin,
    # so readers (EventAccumulator.Tensors, the notebooks) see one layout whichever writer ran.
    self._summary(step, [summary_pb2.Summary.Value(tag=k, tensor=_float_scalar(v), metadata=_SCALAR_METADATA)
                         for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Any]):
    """[N, H, W, C] or [H, W, C], uint8 or float in [0, 1] (TF's convention); all N under one tag."""
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})
    meta = image_metadata.create_summary_metadata(display_name=None, description=None)
    values = []
    for key, x in images.items():
      x = _uint8_images(x)
      x = x[None] if x.ndim == 3 else x
      tensor = _image_tensor(x.shape[2], x.shape[1], [encode_png(i) for i in x])
      values.append(summary_pb2.Summary.Value(tag=key, metadata=meta, tensor=tensor))
    self._summary(step, values)

  def write_videos(self, step: int, videos: Mapping[str, Any], *, fps: float = video.DEFAULT_FPS):
    """[N, T, H, W, C] or [T, H, W, C] like images; animated GIFs on the images dashboard."""
    logging.info("[%d] Got videos: %s.", step, {k: np.shape(v) for k, v in videos.items()})
    meta = image_metadata.create_summary_metadata(display_name=None, description=None)
    self._summary(step, [summary_pb2.Summary.Value(tag=key, metadata=meta, tensor=_image_tensor(w, h, gifs))
                         for key, (h, w, gifs) in _gifs(videos, fps).items()])

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    """[N, T, C] floats in [-1, 1] as 16-bit WAVs in the audio plugin's [N, (wav, label)] tensor."""
    logging.info("[%d] Got audios: %s.", step, {k: np.shape(v) for k, v in audios.items()})
    meta = audio_metadata.create_summary_metadata(display_name=None, description=None,
                                                  encoding=audio_metadata.Encoding.Value("WAV"))
    values = []
    for key, x in audios.items():
      wavs = [audio.encode_wav(pcm_TxC, sample_rate) for pcm_TxC in audio.to_int16(audio.as_NxTxC(x))]
      tensor = _strings((len(wavs), 2), [s for wav in wavs for s in (wav, b"")])
      values.append(summary_pb2.Summary.Value(tag=key, metadata=meta, tensor=tensor))
    self._summary(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    logging.info("[%d] Got texts: %s.", step, texts)
    meta = text_metadata.create_summary_metadata(display_name=None, description=None)
    self._summary(step, [summary_pb2.Summary.Value(tag=k, metadata=meta, tensor=_strings((), [v.encode("utf-8")]))
                         for k, v in texts.items()])

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Optional[Mapping[str, int]] = None):
    logging.info("[%d] Got histograms: %s.", step, sorted(arrays))
    values = []
    for key, x in arrays.items():
      x = np.asarray(x, np.float64).ravel()
      if not x.size:
        continue
      counts, edges = np.histogram(x, bins=max(2, (num_buckets or {}).get(key) or 30))
      values.append(summary_pb2.Summary.Value(tag=key, histo=summary_pb2.HistogramProto(
          min=x.min(), max=x.max(), num=x.size, sum=x.sum(), sum_squares=np.square(x).sum(),
          bucket_limit=edges[1:].tolist(), bucket=counts.astype(np.float64).tolist())))
    self._summary(step, values)

  def write_hparams(self, hparams: Mapping[str, Any]):
    logging.info("[Hyperparameters] %s", hparams)
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top  lazy: rarely used
    summary = summary_v2.hparams_pb({k: _hparam_value(v) for k, v in hparams.items()})
    self._write(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

  def write_summaries(self, step: int, values: Mapping[str, Any], metadata: Optional[Mapping[str, Any]] = None):
    """Raw tensors with optional SummaryMetadata (proto or serialized bytes), as clu's SummaryWriter."""
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
    logging.info("[%d] Got raw tensors: %s.", step, {k: np.shape(v) for k, v in values.items()})
    out = []
    for key, x in values.items():
      md = (metadata or {}).get(key)
      md = summary_pb2.SummaryMetadata.FromString(md) if isinstance(md, bytes) else md
      tensor = tensor_util.make_tensor_proto(np.asarray(x))
      out.append(summary_pb2.Summary.Value(tag=key, metadata=md, tensor=tensor))
    self._summary(step, out)

  def flush(self):
    if self._records is not None:
      with self._lock:
        self._records.flush()

  def close(self):
    if self._records is not None:
      with self._lock:
        self._records.close()
      self._records = None
