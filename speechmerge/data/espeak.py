"""Speech from espeak-ng (Debian package `espeak-ng`), returned as 16 kHz mono float32.

A *voice* is an espeak language voice (`es`, `pt`, `pt-br`, `en-us`...) with a voice variant
(`+m3`, `+f2`, `+klatt`...), a speed in words per minute (`-s`) and a pitch 0-99 (`-p`). A
speaker id maps to one voice deterministically from the build seed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechmerge.data.audio import load_audio
from speechmerge.errors import SpeechmergeError

# Whisper language code -> espeak-ng voice; `pt-br` is the Brazilian Portuguese voice.
ESPEAK_VOICES = {
    "ca": "ca",
    "de": "de",
    "en": "en-us",
    "es": "es",
    "fr": "fr-fr",
    "id": "id",
    "it": "it",
    "nl": "nl",
    "pt": "pt",
    "pt-br": "pt-br",
    "ru": "ru",
    "sv": "sv",
}
# Human-sounding variants (the robotic, whispering and croaking ones are left out).
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt3")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "klatt2")
SPEED_RANGE = (145, 190)  # words per minute; espeak's default is 175
PITCH_RANGE = (35, 65)  # espeak's default is 50


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language voice, variant, speed (words/min) and pitch (0-99)."""

    espeak: str
    variant: str
    speed: int
    pitch: int

    def arguments(self) -> list[str]:
        return ["-v", f"{self.espeak}+{self.variant}", "-s", str(self.speed), "-p", str(self.pitch)]


def espeak_binary() -> str:
    """Path of `espeak-ng`; a one-line error saying how to install it where it is missing."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise SpeechmergeError(
            "espeak-ng: not found on PATH; the built-in corpus is spoken by it: install it: apt-get install espeak-ng"
        )
    return found


def espeak_voice(language: str) -> str:
    """The espeak-ng voice name of a corpus language (`pt-br` included)."""
    if language not in ESPEAK_VOICES:
        raise SpeechmergeError(
            f"language {language!r}: the built-in corpus speaks {', '.join(sorted(ESPEAK_VOICES))}; choose one of them"
        )
    return ESPEAK_VOICES[language]


def speaker_voice(
    language: str, pool: str, speaker: int, seed: int, speed_factor: float = 1.0, pitch_shift: int = 0
) -> Voice:
    """The voice of speaker number `speaker` of a speaker pool (e.g. `es`, `pt-health`) in a language.

    Variant, speed and pitch are drawn from a generator seeded by (seed, pool, speaker); even
    speakers use male variants, odd ones female. `speed_factor` and `pitch_shift` model acoustic
    conditions (fast speech, a child's register) on top of the speaker's own voice."""
    rng = np.random.default_rng([seed, zlib.crc32(pool.encode()), speaker])
    variants = MALE_VARIANTS if speaker % 2 == 0 else FEMALE_VARIANTS
    variant = variants[int(rng.integers(len(variants)))]
    speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    return Voice(espeak_voice(language), variant, round(speed * speed_factor), int(np.clip(pitch + pitch_shift, 0, 99)))


def speak(text: str, voice: Voice) -> np.ndarray:
    """Synthesise `text` with espeak-ng; 16 kHz mono float32."""
    binary = espeak_binary()
    with tempfile.TemporaryDirectory(prefix="speechmerge-espeak-") as folder:
        wav = Path(folder) / "speech.wav"
        command = [binary, *voice.arguments(), "-b", "1", "--stdin", "-w", str(wav)]
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=120)
        if result.returncode != 0 or not wav.is_file():
            reason = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
            raise SpeechmergeError(
                f"espeak-ng: could not speak {text[:40]!r} with {' '.join(voice.arguments())} ({reason}); check the espeak-ng installation"
            )
        return load_audio(wav)
