"""Log-mel features follow the model directory: its feature extractor, else its number of mel bins."""

from __future__ import annotations

import json

import numpy as np

from speechmerge.data.audio import write_wav
from speechmerge.features.log_mel import LogMel


def test_features_have_the_models_mel_bins_and_30_seconds_of_frames(tmp_path):
    wav = tmp_path / "clip.wav"
    write_wav(wav, 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "whisper", "num_mel_bins": 128}))
    assert LogMel(model)([wav, wav]).shape == (2, 128, 3000)  # no preprocessor_config.json: config's bins
    (model / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80})
    )
    features = LogMel(model)([wav])
    assert features.shape == (1, 80, 3000) and features.dtype == np.float32
    assert json.loads(LogMel(model).settings)["feature_size"] == 80
