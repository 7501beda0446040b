"""The reference backend: `WhisperForConditionalGeneration.generate` in float32 on CPU (or CUDA).

The encoder runs once per clip through `encoder_cache.encode_clips` (its outputs stored when
the encoder cache is on), then `generate` runs the decoder on those outputs, so decoding with
and without the cache executes the same code on the same numbers.

Token suppression (the generation config's `suppress_tokens`, and `begin_suppress_tokens` at
the first generated step) is applied by `SuppressedTokens`, which builds its vocabulary mask
once: transformers' own processors rebuild it with `torch.isin` at every step, measured at
0.12 s a call on the 2-core CPU (torch 2.13), more than a whisper-base decoder step. The
arithmetic is the same (those scores set to -inf), and the tests check that the output is
token for token what plain `generate` gives.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.backend import PROMPT_LENGTH, DecodeSettings, language_code, load_tokenizer
from speechmerge.evaluation.model import EvalModel
from speechmerge.features.log_mel import LogMel
from speechmerge.library_messages import library_messages


def load_whisper(directory: Path, device: str = "cpu"):
    """`WhisperForConditionalGeneration` of a directory in float32, in eval mode on `device`."""
    import torch
    from transformers import WhisperForConditionalGeneration

    try:
        with library_messages():
            model = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise SpeechmergeError(
            f"{directory}: transformers cannot load this Whisper model ({error}); re-save it"
        ) from None
    return model.to(device).eval()


def encoder_function(model, device: str = "cpu"):
    """log-mel features (numpy) -> the encoder's last hidden state, as `encode_clips` wants it."""
    import torch

    def encode(features):
        return model.model.encoder(torch.from_numpy(features).to(device)).last_hidden_state

    return encode


class SuppressedTokens:
    """A logits processor setting the scores of `tokens` to -inf (only at `at_length` if given)."""

    def __init__(self, tokens, vocab_size: int, at_length: Optional[int] = None):
        import torch

        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[list(tokens)] = True
        self.at_length = at_length

    def __call__(self, input_ids, scores):
        if self.at_length is not None and input_ids.shape[-1] != self.at_length:
            return scores
        return scores.masked_fill(self.mask.to(scores.device), float("-inf"))


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: EvalModel, threads: int, encoder_cache: bool = True, device: str = "cpu"):
        import torch
        from transformers import GenerationConfig

        from speechmerge.features.encoder_cache import EncoderOutputCache, directory_encoder_key

        torch.set_num_threads(threads)
        self.model_info = model
        self.device = device
        self.model = load_whisper(model.directory, device)
        self.generation_config = GenerationConfig.from_pretrained(model.directory)
        # generate() falls back to the model's own config for None values: clear suppression there too,
        # and the total `max_length` (the token budget is `max_new_tokens`; both set makes a warning).
        fallback = self.model.generation_config
        fallback.suppress_tokens = fallback.begin_suppress_tokens = fallback.max_length = None
        self.tokenizer = load_tokenizer(model)
        self.log_mel = LogMel(model.directory)
        self.cache = (
            EncoderOutputCache(directory_encoder_key(model.directory), self.log_mel.settings, device=device)
            if encoder_cache
            else None
        )
        self.encoder_calls = 0

    def _encode_features(self, features):
        self.encoder_calls += 1
        return encoder_function(self.model, self.device)(features)

    def encode(self, audio: Sequence[Path]):
        from speechmerge.features.encoder_cache import encode_clips

        return encode_clips(self._encode_features, self.log_mel, audio, self.cache, batch_size=max(1, len(audio))).to(
            self.device
        )

    def _suppression(self, prompt_length: int) -> list[SuppressedTokens]:
        vocab_size = self.model.config.vocab_size
        processors = []
        if self.generation_config.suppress_tokens:
            processors.append(SuppressedTokens(self.generation_config.suppress_tokens, vocab_size))
        if self.generation_config.begin_suppress_tokens:
            processors.append(
                SuppressedTokens(self.generation_config.begin_suppress_tokens, vocab_size, at_length=prompt_length)
            )
        return processors

    def detect_languages(self, encoded) -> list[str]:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        with torch.no_grad(), library_messages():
            ids = self.model.detect_language(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded), generation_config=self.generation_config
            )
        return [language_code(token) for token in self.tokenizer.convert_ids_to_tokens(ids.tolist())]

    def decode(self, encoded, languages: Sequence[str], task: str, settings: DecodeSettings) -> list[str]:
        import torch
        from transformers import LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutput

        multilingual = self.model_info.multilingual
        prompt_length = PROMPT_LENGTH if multilingual else 2
        config = copy.deepcopy(self.generation_config)
        config.num_beams = settings.beam_size
        config.do_sample = False
        config.max_new_tokens = settings.max_new_tokens
        config.max_length = None
        config.suppress_tokens = config.begin_suppress_tokens = None  # applied by SuppressedTokens below
        # The log-mel frames behind the encoder output, none of them padding inside the batch: the mask
        # transformers asks for (short-form decoding reads only its shape).
        stride = self.model.model.encoder.conv1.stride[0] * self.model.model.encoder.conv2.stride[0]
        frames = torch.ones((encoded.shape[0], stride * encoded.shape[1]), dtype=torch.long, device=encoded.device)
        with torch.no_grad(), library_messages():
            sequences = self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                attention_mask=frames,
                generation_config=config,
                logits_processor=LogitsProcessorList(self._suppression(prompt_length)),
                language=list(languages) if multilingual else None,
                task=task if multilingual else None,
                return_timestamps=False,
            )
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]
