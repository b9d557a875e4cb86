"""Log-mel spectrograms in JAX: the front end of the audio classifier (evaluation/audio_classifier.py).

One jit-friendly function, `log_mel(audio_NxT, params)`: frames cut by a constant gather (centre padding with zeros,
as librosa's `center=True` but without reflection), a periodic Hann window, `rfft`, power, a triangular mel
filterbank built once in numpy (HTK mel scale, O'Shaughnessy 1987: mel = 2595 log10(1 + f / 700)), and decibels
with a floor. Every length is scaled by the sample rate (`LogMelParams.for_rate`): a ~32 ms window rounded to a
power of two, a 10 ms hop and 40 mel bands from 20 Hz to Nyquist: a common speech front end. (The SC09
evaluation classifier that SaShiMi's code ships, Goel et al. 2022, state-spaces/s4 sashimi/sc09_classifier, reads
32 librosa mel bands with a 2048-point FFT and a 512-sample hop of 1-second 16 kHz clips; shorter windows suit the
short clips of the CPU presets here.)

Levels are absolute, not relative to each clip's maximum: 0 dB is the power of a full-scale sine in its peak
FFT bin, and the floor is DB_RANGE below it, so silence and a quiet clip stay distinguishable.
"""
import dataclasses
import math

import jax.numpy as jnp
import numpy as np

WINDOW_SECONDS = 0.032  # rounded to the nearest power-of-two FFT size: 256 at 8 kHz, 512 at 16 kHz
HOP_SECONDS = 0.010
NUM_MELS = 40
FMIN_HZ = 20.0
DB_RANGE = 80.0  # the floor: 80 dB below a full-scale sine


def hz_to_mel(f_hz):
  return 2595.0 * np.log10(1.0 + np.asarray(f_hz, np.float64) / 700.0)


def mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@dataclasses.dataclass(frozen=True)
class LogMelParams:
  sample_rate: int
  n_fft: int      # window and FFT length (samples)
  hop: int        # samples between frames
  num_mels: int
  fmin: float
  fmax: float

  @classmethod
  def for_rate(cls, sample_rate: int, num_mels: int = NUM_MELS) -> "LogMelParams":
    n_fft = 2 ** int(round(math.log2(WINDOW_SECONDS * sample_rate)))
    return cls(int(sample_rate), n_fft, max(1, int(round(HOP_SECONDS * sample_rate))), num_mels, FMIN_HZ,
               sample_rate / 2.0)

  def num_frames(self, num_samples: int) -> int:
    """Frames of a clip: one centred on every hop-th sample (n_fft // 2 zeros padded on both sides)."""
    return 1 + num_samples // self.hop

  def describe(self) -> dict:
    return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop": self.hop, "window": "periodic Hann",
            "num_mels": self.num_mels, "fmin_hz": self.fmin, "fmax_hz": self.fmax, "mel_scale": "HTK",
            "power": "|rfft|^2 / (sum(window) / 2)^2 (0 dB = a full-scale sine)",
            "log": f"10 log10(max(mel power, 1e-{DB_RANGE / 10:g})) dB", "centre_padding": "zeros"}


def hann_window(n: int) -> np.ndarray:
  """The periodic Hann window (the DFT-even one STFTs use: scipy's `hann(n, sym=False)`)."""
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def mel_filterbank(params: LogMelParams) -> np.ndarray:
  """float32 [n_fft // 2 + 1, num_mels]: triangles with peak 1 at centres equally spaced in mel between fmin and
  fmax, evaluated at the FFT bin frequencies. A band that no FFT bin reaches would be a constant feature, so it is
  an error (too many bands for the sample rate)."""
  bins_hz = np.arange(params.n_fft // 2 + 1) * params.sample_rate / params.n_fft
  edges_hz = mel_to_hz(np.linspace(hz_to_mel(params.fmin), hz_to_mel(params.fmax), params.num_mels + 2))
  lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
  rising = (bins_hz[:, None] - lower[None]) / (centre - lower)[None]
  falling = (upper[None] - bins_hz[:, None]) / (upper - centre)[None]
  weights = np.clip(np.minimum(rising, falling), 0.0, None)
  empty = np.flatnonzero(weights.sum(axis=0) == 0)
  if empty.size:
    raise ValueError(f"{params.num_mels} mel bands at {params.sample_rate} Hz with a {params.n_fft}-point FFT leave "
                     f"bands {empty.tolist()} without an FFT bin; use fewer bands or a higher sample rate")
  return weights.astype(np.float32)


def frame_indices(params: LogMelParams, num_samples: int) -> np.ndarray:
  """int32 [frames, n_fft]: sample indices of each frame in the clip padded by n_fft // 2 on both sides."""
  starts = np.arange(params.num_frames(num_samples)) * params.hop
  return (starts[:, None] + np.arange(params.n_fft)[None]).astype(np.int32)


def power_spectrogram(audio_NxT, params: LogMelParams):
  """float32 [N, frames, n_fft // 2 + 1], normalised so a full-scale sine's peak bin is ~1."""
  x_NxT = jnp.asarray(audio_NxT, jnp.float32)
  pad = params.n_fft // 2
  padded = jnp.pad(x_NxT, ((0, 0), (pad, pad)))
  window = hann_window(params.n_fft)
  frames_NxFxK = padded[:, frame_indices(params, x_NxT.shape[1])] * window
  spectrum = jnp.fft.rfft(frames_NxFxK, axis=-1)
  scale = (window.sum() / 2.0) ** 2
  return (jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2) / scale


def log_mel(audio_NxT, params: LogMelParams):
  """float32 [N, frames, num_mels] in dB, floored at -DB_RANGE."""
  mel_NxFxM = jnp.matmul(power_spectrogram(audio_NxT, params), mel_filterbank(params),
                         precision="highest")
  return 10.0 * jnp.log10(jnp.maximum(mel_NxFxM, 10.0 ** (-DB_RANGE / 10.0)))
