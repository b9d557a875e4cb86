"""The "audio" medium: float [N, T] or [N, T, C] in [-1, 1] (+ 'audio_sample_rate' [N], default 16000).

Files: one 16-bit PCM WAV per sample `<step>_audio/<i:03d>.wav`, a log-magnitude spectrogram grid
`<step>_spectrograms.png`, int16 samples (input layout) and rates under 'audio', 'audio_sample_rate' in the npz.
"""
import io
import os
import wave

import numpy as np

from aigc_jax.media import images
from aigc_jax.media.base import Medium, write_bytes_atomic

DEFAULT_SAMPLE_RATE = 16000
PCM_SCALE = 32767.0  # symmetric: +-1.0 <-> +-32767, so quantize() is idempotent
SUMMARY_SAMPLES = 4  # TensorBoard gets the first few; the files hold them all
SPECTROGRAM_FFT = 256
SPECTROGRAM_RANGE_DB = 80.0


def as_NxTxC(audio) -> np.ndarray:
  x = np.asarray(audio, np.float32)
  if x.ndim == 2:
    return x[..., None]
  if x.ndim != 3:
    raise ValueError(f"audio must be [N, T] or [N, T, C], got shape {x.shape}")
  return x


def to_int16(audio) -> np.ndarray:
  """[-1, 1] floats -> 16-bit PCM levels (round half to even), any shape."""
  x = np.rint(np.asarray(audio, np.float32) * PCM_SCALE)
  return np.clip(x, -32768, 32767).astype(np.int16)


def quantize(audio) -> np.ndarray:
  """The audio as saved to WAV: 16-bit levels back to float32 in [-1, 1], same shape."""
  return to_int16(audio).astype(np.float32) / PCM_SCALE


def sample_rates(outputs: dict) -> np.ndarray:
  """int [N]: 'audio_sample_rate' (scalar or [N]) broadcast over the samples, 16000 when absent."""
  n = len(outputs["audio"])
  return np.broadcast_to(np.asarray(outputs.get("audio_sample_rate", DEFAULT_SAMPLE_RATE), np.int64), (n,))


def encode_wav(pcm_TxC: np.ndarray, sample_rate: int) -> bytes:
  """int16 [T, C] -> a 16-bit PCM WAV file's bytes (frames interleaved, little-endian as WAV requires)."""
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(pcm_TxC.shape[1])
    w.setsampwidth(2)
    w.setframerate(int(sample_rate))
    w.writeframes(np.ascontiguousarray(pcm_TxC, "<i2").tobytes())
  return buf.getvalue()


def spectrogram(wave_TxC: np.ndarray, n_fft: int = SPECTROGRAM_FFT) -> np.ndarray:
  """Log-magnitude STFT of the channel mean as a uint8 image [n_fft/2 + 1, frames, 1], low frequencies at
  the bottom; 0 dB is a full-scale sine, black is SPECTROGRAM_RANGE_DB below it (same scale for every tile)."""
  x_T = np.asarray(wave_TxC, np.float32).mean(axis=-1)
  if len(x_T) < n_fft:
    x_T = np.pad(x_T, (0, n_fft - len(x_T)))
  window = np.hanning(n_fft).astype(np.float32)
  frames_FxK = np.lib.stride_tricks.sliding_window_view(x_T, n_fft)[::n_fft // 4] * window
  magnitude_FxB = np.abs(np.fft.rfft(frames_FxK, axis=-1))
  db = 20.0 * np.log10(magnitude_FxB / (window.sum() / 2.0) + 1e-10)
  level = np.clip(db / SPECTROGRAM_RANGE_DB + 1.0, 0.0, 1.0)
  return np.rint(level.T[::-1] * 255.0).astype(np.uint8)[..., None]


def write_files(outputs: dict, directory: str, step: int) -> list:
  pcm_NxTxC = to_int16(as_NxTxC(outputs["audio"]))
  rates = sample_rates(outputs)
  wav_dir = os.path.join(directory, f"{step}_audio")
  os.makedirs(wav_dir, exist_ok=True)
  paths = []
  for i, (pcm_TxC, rate) in enumerate(zip(pcm_NxTxC, rates)):
    paths.append(os.path.join(wav_dir, f"{i:03d}.wav"))
    write_bytes_atomic(paths[-1], encode_wav(pcm_TxC, rate))
  # Tiles of what the WAVs hold, so the picture and the sound agree.
  tiles = np.stack([spectrogram(p.astype(np.float32) / PCM_SCALE) for p in pcm_NxTxC])
  png_path = os.path.join(directory, f"{step}_spectrograms.png")
  images.save_png(png_path, images.image_grid(tiles))
  return paths + [png_path]


def write_summaries(writer, step: int, outputs: dict):
  """The first SUMMARY_SAMPLES samples under 'audio_samples' (TensorBoard keys series by tag alone, so not
  'samples' as images); one write per distinct rate, since write_audios takes one rate."""
  x_NxTxC = quantize(as_NxTxC(outputs["audio"][:SUMMARY_SAMPLES]))
  rates = sample_rates(outputs)[:len(x_NxTxC)]
  distinct = sorted(set(rates.tolist()))
  for rate in distinct:
    key = "audio_samples" if len(distinct) == 1 else f"audio_samples_{rate}hz"
    writer.write_audios(step, {key: x_NxTxC[rates == rate]}, sample_rate=int(rate))


def npz_arrays(outputs: dict) -> dict:
  return {"audio": to_int16(outputs["audio"]), "audio_sample_rate": sample_rates(outputs).astype(np.int32)}


MEDIUM = Medium(name="audio", aux_keys=("audio_sample_rate",), write_files=write_files,
                write_summaries=write_summaries, quantize=quantize, npz_arrays=npz_arrays)
