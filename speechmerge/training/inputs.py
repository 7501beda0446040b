"""The encoder side of a training batch: log-mel features, or encoder outputs computed once.

Features are `features.log_mel.LogMel` (the audio loading and feature extractor decoding uses),
so training and evaluation feed the encoder identical numbers. When no encoder weight trains
(decoder mode; LoRA without encoder adapters) the encoder is a fixed function of the audio: each
clip's output is computed once, before the first step, into the exact `features.encoder_cache`
(keyed by the encoder's weights, the feature settings and the clip), and every step reads
the outputs of its batch from there and runs only the decoder: the same loss and gradients
as running the frozen encoder every step, at a fraction of the cost (docs/training.md). The
cache is shared: the experts of one language, their evaluations and every merge of
decoder-only experts reuse the same entries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from speechmerge.data.manifest import Utterance

# Turns a batch of utterances into the encoder-side keyword arguments of the model's forward.
EncoderSide = Callable[[list[Utterance]], dict]
FILL_CHUNK = 64  # clips encoded per call while filling the cache (bounds memory)


def mel_inputs(log_mel, device) -> EncoderSide:
    """Features computed per batch: the encoder runs (and learns) every step."""
    import torch

    def side(utterances: list[Utterance]) -> dict:
        return {"input_features": torch.from_numpy(log_mel([u.audio for u in utterances])).to(device)}

    return side


def cached_encoder_outputs(
    encoder, log_mel, base_dir: Path, utterances: list[Utterance], batch_size: int, device, on_clips=None
) -> EncoderSide:
    """Fill the encoder-output cache with every clip of `utterances`; return the per-batch lookup.

    `on_clips(n)` is called as clips are done (for a progress bar)."""
    import torch

    from speechmerge.features.encoder_cache import EncoderOutputCache, directory_encoder_key, encode_clips

    cache = EncoderOutputCache(directory_encoder_key(base_dir), log_mel.settings, device=torch.device(device).type)
    encoder.eval()

    def encode(features):
        return encoder(torch.from_numpy(features).to(device)).last_hidden_state

    clips = list(dict.fromkeys(u.audio for u in utterances))
    for start in range(0, len(clips), FILL_CHUNK):
        chunk = clips[start : start + FILL_CHUNK]
        encode_clips(encode, log_mel, chunk, cache, batch_size=batch_size)
        if on_clips:
            on_clips(len(chunk))

    def side(batch: list[Utterance]) -> dict:
        return {"encoder_outputs": (encode_clips(encode, log_mel, [u.audio for u in batch], cache).to(device),)}

    return side
