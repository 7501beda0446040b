"""Audio in and out: any common format, rate and channel count in; 16 kHz mono float32 out.

Resampling is scipy's polyphase filter (`scipy.signal.resample_poly`) by the reduced ratio
16000 / rate, which is exact for the usual rates (8, 11.025, 22.05, 44.1, 48 kHz).
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_file

SAMPLE_RATE = 16000


class UnreadableAudio(SpeechmergeError):
    """An audio file that soundfile cannot decode; `reason` says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: unreadable audio ({reason}); use WAV, FLAC, OGG or MP3")
        self.reason = reason


def resample(samples: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D signal from `rate` to `target_rate` with a polyphase filter (float32 out)."""
    from scipy.signal import resample_poly

    if rate == target_rate:
        return samples.astype(np.float32, copy=False)
    common = gcd(int(rate), int(target_rate))
    return resample_poly(samples, target_rate // common, int(rate) // common).astype(np.float32)


def audio_duration(path: Path) -> float:
    """Length in seconds, read from the file header only; `UnreadableAudio` if unreadable."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        raise UnreadableAudio(path, _reason(error)) from error
    if info.samplerate <= 0:
        raise UnreadableAudio(path, f"sample rate {info.samplerate}")
    return info.frames / info.samplerate


def load_audio(path: Path) -> np.ndarray:
    """The file's audio as float32 in [-1, 1], mono (channel mean), resampled to 16 kHz."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise UnreadableAudio(path, _reason(error)) from error
    return resample(samples.mean(axis=1), rate)


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM WAV atomically (clipped to [-1, 1])."""
    import soundfile

    with atomic_file(path) as tmp:
        soundfile.write(str(tmp), np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")


def _reason(error: Exception) -> str:
    """The library's message without the path it repeats ("Error opening 'x.wav': Format not recognised.")."""
    message = " ".join(str(error).split())
    return message.rsplit("': ", 1)[-1] if message else type(error).__name__
