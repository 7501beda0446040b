"""Audio files -> a Whisper model's log-mel features, with the model's own feature extractor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class LogMel:
    """Audio files -> the log-mel features [n, mels, 3000] (float32 numpy) of the Whisper model
    in `directory`: its `preprocessor_config.json`, else transformers' defaults for its number of
    mel bins (config.json's `num_mel_bins`)."""

    def __init__(self, directory: Path):
        from transformers import WhisperConfig, WhisperFeatureExtractor

        directory = Path(directory)
        if (directory / "preprocessor_config.json").is_file():
            self.extractor = WhisperFeatureExtractor.from_pretrained(directory)
        else:
            self.extractor = WhisperFeatureExtractor(feature_size=WhisperConfig.from_pretrained(directory).num_mel_bins)

    @property
    def settings(self) -> str:
        """The extractor's settings as JSON: part of the encoder-output cache key."""
        return self.extractor.to_json_string()

    def __call__(self, audio: Sequence[Path]):
        from speechmerge.data.audio import SAMPLE_RATE, load_audio

        clips = [load_audio(path) for path in audio]
        return self.extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
