"""The "video" medium: float [N, T, H, W, C] (C = 1 or 3) in [-1, 1] (+ 'video_fps' [N], default 8).

Files: one looping animated GIF per sample `<step>_video/<i:03d>.gif`, a frame strip `<step>_frames.png` (one
row per sample, frames left to right), uint8 frames and fps under 'video', 'video_fps' in the npz. GIF keeps
frame times in 1/100 s (8 fps -> 120 ms) and Pillow merges identical consecutive frames into one longer one;
RGB frames get a 256-colour palette each. The npz holds the exact frames.
"""
import inspect
import io
import os

import numpy as np
from PIL import Image

from aigc_jax.media import images
from aigc_jax.media.base import Medium, write_bytes_atomic

DEFAULT_FPS = 8
SUMMARY_SAMPLES = 4


def check_shape(video) -> np.ndarray:
  x = np.asarray(video)
  if x.ndim != 5 or x.shape[-1] not in (1, 3):
    raise ValueError(f"video must be [N, T, H, W, C] with C = 1 or 3, got shape {x.shape}")
  return x


def to_uint8(video_NxTxHxWxC) -> np.ndarray:
  return images.to_uint8(check_shape(video_NxTxHxWxC))


def quantize(video_NxTxHxWxC) -> np.ndarray:
  """The frames as saved in the npz: uint8 levels back to float32 [-1, 1] (as images.quantize)."""
  return images.quantize(check_shape(video_NxTxHxWxC))


def frame_rates(outputs: dict) -> np.ndarray:
  """float [N]: 'video_fps' (scalar or [N]) broadcast over the samples, 8 when absent."""
  n = len(outputs["video"])
  return np.broadcast_to(np.asarray(outputs.get("video_fps", DEFAULT_FPS), np.float64), (n,))


def encode_gif(frames_uint8_TxHxWxC: np.ndarray, fps: float) -> bytes:
  """uint8 frames -> the bytes of an endlessly looping animated GIF at `fps`."""
  frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames_uint8_TxHxWxC]
  buf = io.BytesIO()
  frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=1000.0 / float(fps),
                 loop=0)
  return buf.getvalue()


def frame_strip(video_uint8_NxTxHxWxC: np.ndarray) -> np.ndarray:
  n, t = video_uint8_NxTxHxWxC.shape[:2]
  return images.image_grid(video_uint8_NxTxHxWxC.reshape(n * t, *video_uint8_NxTxHxWxC.shape[2:]), ncols=t)


def write_files(outputs: dict, directory: str, step: int) -> list:
  video = to_uint8(outputs["video"])
  gif_dir = os.path.join(directory, f"{step}_video")
  os.makedirs(gif_dir, exist_ok=True)
  paths = []
  for i, (frames, fps) in enumerate(zip(video, frame_rates(outputs))):
    paths.append(os.path.join(gif_dir, f"{i:03d}.gif"))
    write_bytes_atomic(paths[-1], encode_gif(frames, fps))
  png_path = os.path.join(directory, f"{step}_frames.png")
  images.save_png(png_path, frame_strip(video))
  return paths + [png_path]


def write_summaries(writer, step: int, outputs: dict):
  """uint8 [k, T, H, W, C] for the first few under 'video_samples' (a tag of its own: TensorBoard keys series
  by tag alone, and videos share the images dashboard); the fps goes along only to writers that take it (this
  package's; clu's interface has no fps)."""
  video = to_uint8(outputs["video"][:SUMMARY_SAMPLES])
  kwargs = {}
  if "fps" in inspect.signature(writer.write_videos).parameters:
    kwargs["fps"] = float(frame_rates(outputs)[0])
  writer.write_videos(step, {"video_samples": video}, **kwargs)


def npz_arrays(outputs: dict) -> dict:
  return {"video": to_uint8(outputs["video"]), "video_fps": frame_rates(outputs).astype(np.float32)}


MEDIUM = Medium(name="video", aux_keys=("video_fps",), write_files=write_files, write_summaries=write_summaries,
                quantize=quantize, npz_arrays=npz_arrays)
