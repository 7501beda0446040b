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

Mode `top_encoder` with k top layers of L caches the hidden states that enter layer L-k (the
output of the frozen convolutions, positions and layers 0 .. L-k-1), keyed by those weights and
L-k; each step runs only layers L-k .. L-1, the final layer norm and the decoder on them. The
frozen part runs in eval mode, as in decoder mode (Whisper checkpoints have dropout 0).
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

    from speechmerge.features.encoder_cache import EncoderOutputCache, directory_encoder_key

    cache = EncoderOutputCache(directory_encoder_key(base_dir), log_mel.settings, device=torch.device(device).type)

    def encode(features):
        return _in_eval_mode(encoder, lambda: encoder(torch.from_numpy(features).to(device)).last_hidden_state)

    lookup = _filled_cache(encode, cache, log_mel, utterances, batch_size, device, on_clips)
    return lambda batch: {"encoder_outputs": (lookup(batch),)}


def top_encoder_inputs(
    encoder,
    first_top_layer: int,
    log_mel,
    base_dir: Path,
    utterances: list[Utterance],
    batch_size: int,
    device,
    on_clips=None,
) -> EncoderSide:
    """Cache the input of encoder layer `first_top_layer` for every clip; per batch, run the
    layers from there and the final layer norm on it (with gradients) into the encoder outputs."""
    import torch

    from speechmerge.features.encoder_cache import EncoderOutputCache, lower_encoder_key

    cache = EncoderOutputCache(
        lower_encoder_key(base_dir, first_top_layer), log_mel.settings, device=torch.device(device).type
    )

    def encode(features):
        inputs = torch.from_numpy(features).to(device)
        return _in_eval_mode(encoder, lambda: encoder(inputs, output_hidden_states=True).hidden_states[first_top_layer])

    lookup = _filled_cache(encode, cache, log_mel, utterances, batch_size, device, on_clips)
    top = encoder.layers[first_top_layer:]

    def side(batch: list[Utterance]) -> dict:
        hidden = lookup(batch)
        for layer in top:
            hidden = layer(hidden, None)
        return {"encoder_outputs": (encoder.layer_norm(hidden),)}

    return side


def _in_eval_mode(module, compute):
    """`compute()` with `module` in eval mode (no dropout), its mode restored after."""
    training = module.training
    module.eval()
    try:
        return compute()
    finally:
        module.train(training)


def _filled_cache(encode, cache, log_mel, utterances: list[Utterance], batch_size: int, device, on_clips):
    """Every clip of `utterances` encoded into `cache`; returns batch -> stacked cached outputs on `device`."""
    from speechmerge.features.encoder_cache import encode_clips

    clips = list(dict.fromkeys(u.audio for u in utterances))
    for start in range(0, len(clips), FILL_CHUNK):
        chunk = clips[start : start + FILL_CHUNK]
        encode_clips(encode, log_mel, chunk, cache, batch_size=batch_size)
        if on_clips:
            on_clips(len(chunk))

    def lookup(batch: list[Utterance]):
        return encode_clips(encode, log_mel, [u.audio for u in batch], cache).to(device)

    return lookup
