"""The reference backend: `WhisperForConditionalGeneration.generate` in float32 on CPU (or CUDA).

The encoder runs once per clip through `encoder_cache.encode_clips` (its outputs stored when
the encoder cache is on), then `generate` runs the decoder on those outputs, so decoding with
and without the cache executes the same code on the same numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.backend import DecodeSettings, LogMel, language_code, load_tokenizer
from speechmerge.evaluation.model import EvalModel


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: EvalModel, threads: int, encoder_cache: bool = True, device: str = "cpu"):
        import torch
        from transformers import GenerationConfig, WhisperForConditionalGeneration

        from speechmerge.evaluation.encoder_cache import EncoderOutputCache, directory_encoder_key

        torch.set_num_threads(threads)
        self.model_info = model
        self.device = device
        try:
            self.model = WhisperForConditionalGeneration.from_pretrained(model.directory, dtype=torch.float32).to(device).eval()
        except (OSError, ValueError, RuntimeError) as error:
            raise SpeechmergeError(f"{model.directory}: transformers cannot load this Whisper model ({error}); re-save it") from None
        self.generation_config = GenerationConfig.from_pretrained(model.directory)
        self.tokenizer = load_tokenizer(model)
        self.log_mel = LogMel(model)
        self.cache = (
            EncoderOutputCache(directory_encoder_key(model.directory), self.log_mel.settings, device=device) if encoder_cache else None
        )
        self.encoder_calls = 0

    def _encode_features(self, features):
        import torch

        self.encoder_calls += 1
        inputs = torch.from_numpy(features).to(self.device)
        return self.model.model.encoder(inputs).last_hidden_state

    def encode(self, audio: Sequence[Path]):
        from speechmerge.evaluation.encoder_cache import encode_clips

        return encode_clips(self._encode_features, self.log_mel, audio, self.cache, batch_size=max(1, len(audio))).to(self.device)

    def detect_languages(self, encoded) -> list[str]:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        with torch.no_grad():
            ids = self.model.detect_language(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), generation_config=self.generation_config)
        return [language_code(token) for token in self.tokenizer.convert_ids_to_tokens(ids.tolist())]

    def decode(self, encoded, languages: Sequence[str], task: str, settings: DecodeSettings) -> list[str]:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        config = copy.deepcopy(self.generation_config)
        config.num_beams = settings.beam_size
        config.do_sample = False
        config.max_new_tokens = settings.max_new_tokens
        config.max_length = None
        multilingual = self.model_info.multilingual
        with torch.no_grad():
            sequences = self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                generation_config=config,
                language=list(languages) if multilingual else None,
                task=task if multilingual else None,
                return_timestamps=False,
            )
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]
