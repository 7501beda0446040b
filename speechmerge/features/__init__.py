"""What Whisper's encoder reads and returns, shared by evaluation and training.

- `log_mel.LogMel`: audio files -> the model's own log-mel features, so decoding and training
  feed the encoder identical numbers.
- `encoder_cache`: exact encoder outputs, computed once per clip and reused by every model
  with the same encoder weights (frozen-encoder experts and their merges).

This layer sits above `checkpoints` and `data` and below `evaluation` and `training`.
"""
