"""Acoustic conditions applied to clean 16 kHz speech, deterministic from a numpy Generator.

- Additive noise at a signal-to-noise ratio: the noise is scaled so that
  10·log10(P_speech / P_noise) = SNR, with P the mean square. White noise is Gaussian; pink
  noise has power ∝ 1/f (white noise shaped by 1/√f in the frequency domain); babble is the sum
  of other utterances (each from a random offset), as in a crowded room.
- Reverberation: convolution with a synthetic room impulse response, Gaussian noise under an
  exponential envelope exp(-6.91·t / RT60) (amplitude down 60 dB at t = RT60; Schroeder's
  model of a diffuse tail), after a unit direct path.
- Telephone band: down to 8 kHz, a 300-3400 Hz Butterworth band-pass (ITU-T G.712's pass band),
  back to 16 kHz.
- Speed and pitch are properties of the synthesised voice (espeak-ng `-s`, `-p`), so a
  condition only carries their factors; the corpus builder applies them when speaking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np

from speechmerge.data.audio import SAMPLE_RATE, resample

NoiseKind = Literal["white", "pink", "babble"]


@dataclass(frozen=True)
class Condition:
    """How a domain's audio differs from clean speech."""

    noise: Optional[NoiseKind] = None
    snr_db: Optional[float] = None
    rt60: Optional[float] = None
    telephone: bool = False
    speed_factor: float = 1.0
    pitch_shift: int = 0

    def describe(self) -> str:
        """Human-readable summary, e.g. 'babble noise at 10 dB SNR, telephone band'."""
        parts = []
        if self.speed_factor != 1.0:
            parts.append(f"{'fast' if self.speed_factor > 1 else 'slow'} speech (x{self.speed_factor:g} espeak speed)")
        if self.pitch_shift:
            parts.append(f"pitch {self.pitch_shift:+d}")
        if self.rt60:
            parts.append(f"reverberation (RT60 {self.rt60:g} s)")
        if self.noise:
            parts.append(f"{self.noise} noise at {self.snr_db:g} dB SNR")
        if self.telephone:
            parts.append("telephone band (300-3400 Hz, 8 kHz)")
        return ", ".join(parts) or "clean"

    def as_dict(self) -> dict:
        return asdict(self)


CLEAN = Condition()


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + g·noise with g chosen so that 10·log10(mean(speech²) / mean((g·noise)²)) = snr_db."""
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if speech_power == 0.0 or noise_power == 0.0:
        return speech.astype(np.float32)
    gain = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise[: len(speech)]).astype(np.float32)


def white_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise."""
    return rng.standard_normal(length).astype(np.float32)


def pink_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectral density ∝ 1/f: white noise scaled by 1/√f per frequency bin."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.fft.rfftfreq(length)
    frequencies[0] = frequencies[1] if length > 1 else 1.0
    return np.fft.irfft(spectrum / np.sqrt(frequencies), n=length).astype(np.float32)


def babble_noise(length: int, rng: np.random.Generator, talkers: Sequence[np.ndarray]) -> np.ndarray:
    """The sum of the talkers' speech, each looped and read from a random offset."""
    if not talkers:
        raise ValueError("babble noise needs at least one talker")
    total = np.zeros(length, dtype=np.float64)
    for talker in talkers:
        looped = np.tile(talker, int(np.ceil((length + len(talker)) / len(talker))))
        start = int(rng.integers(len(talker)))
        segment = looped[start : start + length]
        total += segment / (np.sqrt(np.mean(segment.astype(np.float64) ** 2)) or 1.0)
    return total.astype(np.float32)


def room_impulse_response(rt60: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A unit direct path followed by Gaussian noise under exp(-6.91·t/RT60), RT60 seconds long."""
    times = np.arange(1, max(2, int(rt60 * rate))) / rate
    tail = rng.standard_normal(len(times)) * np.exp(-6.91 * times / rt60)
    tail *= np.sqrt(1.0 / np.sum(tail**2))  # the tail carries as much energy as the direct path
    return np.concatenate([[1.0], tail]).astype(np.float32)


def reverberate(speech: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Speech convolved with a synthetic room impulse response (the tail is kept)."""
    from scipy.signal import fftconvolve

    return fftconvolve(speech, room_impulse_response(rt60, rng)).astype(np.float32)


def telephone_band(speech: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Narrow-band telephone channel: resample to 8 kHz, 300-3400 Hz band-pass, back to `rate` (same length)."""
    from scipy.signal import butter, sosfilt

    narrow = resample(speech, rate, 8000)
    band = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos"), narrow)
    wide = resample(band.astype(np.float32), 8000, rate)[: len(speech)]
    return np.pad(wide, (0, len(speech) - len(wide)))


def apply_condition(
    speech: np.ndarray, condition: Condition, rng: np.random.Generator, talkers: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Room, then noise, then channel; the result is scaled down if it would clip."""
    out = speech.astype(np.float32)
    if condition.rt60:
        out = reverberate(out, condition.rt60, rng)
    if condition.noise:
        if condition.noise == "white":
            noise = white_noise(len(out), rng)
        elif condition.noise == "pink":
            noise = pink_noise(len(out), rng)
        else:
            noise = babble_noise(len(out), rng, talkers)
        out = mix_at_snr(out, noise, condition.snr_db)
    if condition.telephone:
        out = telephone_band(out)
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    return out * (0.95 / peak) if peak > 0.95 else out
