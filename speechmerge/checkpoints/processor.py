"""The files that make converted weights a complete Hugging Face Whisper model directory:
`config.json`, `generation_config.json`, the tokenizer files and `preprocessor_config.json`.

The generation config follows what openai/whisper-* ship on the Hub: language and task
token maps, the default task (transcribe), `<|notimestamps|>`, the suppressed tokens, the tokens suppressed at the first
step, the cross-attention heads used for word timestamps, `max_length` = the decoder's
context. Where the source format does not say (openai-whisper `.pt` files keep no
suppression list or alignment heads), the defaults are openai-whisper's own rules:
`tokenizer.non_speech_token_ids` and the last half of the decoder layers' heads (the
fallback that openai-whisper and CTranslate2's converter use for unknown models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from speechmerge.checkpoints.tokenizer import language_token_ids, non_speech_token_ids

MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper: max_initial_timestamp = 1.0 s at 0.02 s per step


@dataclass(frozen=True)
class WhisperShape:
    """The architecture numbers of a Whisper model (the fields of `WhisperConfig`)."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_layers: int
    decoder_attention_heads: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


@dataclass
class DecodingFacts:
    """What a source format may say about decoding; None = derive it from the tokenizer."""

    lang_ids: list[int] | None = None
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    alignment_heads: list[list[int]] | None = field(default=None)


def _token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def whisper_config(shape: WhisperShape, tokenizer):
    """A `WhisperConfig` for `shape` whose special token ids come from the tokenizer."""
    from transformers import WhisperConfig

    eos = _token_id(tokenizer, "<|endoftext|>")
    return WhisperConfig(
        **vars(shape),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=_token_id(tokenizer, "<|startoftranscript|>"),
        architectures=["WhisperForConditionalGeneration"],
    )


def generation_config(config, tokenizer, facts: DecodingFacts):
    """The generation config of a converted model (fields as on openai/whisper-* on the Hub)."""
    from transformers import GenerationConfig

    eos = _token_id(tokenizer, "<|endoftext|>")
    lang_ids = facts.lang_ids if facts.lang_ids is not None else language_token_ids(tokenizer)
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    alignment = facts.alignment_heads or [
        [layer, head] for layer in range(layers // 2, layers) for head in range(heads)
    ]
    fields = dict(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=config.max_target_positions,
        suppress_tokens=facts.suppress_tokens if facts.suppress_tokens is not None else non_speech_token_ids(tokenizer),
        begin_suppress_tokens=facts.begin_suppress_tokens
        if facts.begin_suppress_tokens is not None
        else [tokenizer.encode(" ", add_special_tokens=False)[0], eos],
        alignment_heads=[list(pair) for pair in alignment],
        no_timestamps_token_id=_token_id(tokenizer, "<|notimestamps|>"),
        prev_sot_token_id=_token_id(tokenizer, "<|startofprev|>"),
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
        is_multilingual=bool(lang_ids),
    )
    if lang_ids:
        fields["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        fields["task_to_id"] = {task: _token_id(tokenizer, f"<|{task}|>") for task in ("transcribe", "translate")}
        # Without a task transformers prompts <|sot|><|lang|><|notimestamps|>, a prompt Whisper never saw;
        # the Hub's files get the same default from their legacy forced_decoder_ids.
        fields["task"] = "transcribe"
    return GenerationConfig(**fields)


def write_model_files(directory: Path, config, tokenizer, facts: DecodingFacts) -> None:
    """Write config, generation config, tokenizer and feature-extractor files into `directory`."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    generation = generation_config(config, tokenizer, facts)
    # The model config keeps the legacy copies of these two lists, as on the Hub.
    config.suppress_tokens = generation.suppress_tokens
    config.begin_suppress_tokens = generation.begin_suppress_tokens
    config.save_pretrained(directory)
    generation.save_pretrained(directory)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    # transformers 5 nests the extractor in processor_config.json; older readers (faster-whisper,
    # transformers 4) look for preprocessor_config.json.
    extractor.save_pretrained(directory)
