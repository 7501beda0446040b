"""The `torch` backend: greedy decoding with `greedy.GreedyDecoder` from (cached) encoder outputs.

It loads the model and runs the encoder exactly as the transformers backend does (so it shares
the encoder-output cache and its entries), then decodes with the decoder written out step by
step: cross-attention keys and values computed once per batch (and shared by language
identification and decoding), a preallocated self-attention cache, finished clips dropped. The
rules are the transformers backend's: the same prompt, `suppress_tokens` at every step,
`begin_suppress_tokens` at the first, end-of-text from the generation config, the same token
budget. `float32` gives the reference's text (tested); `int8` quantises the decoder's weights;
`cross_attention="encoder"` attends over the encoder output without forming K and V (faster for
short outputs, equal to rounding: `greedy`'s docstring).
Greedy only: beam search is the transformers backend's.
"""

from __future__ import annotations

from collections.abc import Sequence

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.backend import DecodeSettings, language_code, prompt_ids
from speechmerge.evaluation.greedy import GreedyDecoder, GreedyRules, language_ids, quantise_decoder
from speechmerge.evaluation.hf_backend import TransformersBackend
from speechmerge.evaluation.model import EvalModel

WEIGHT_TYPES = ("float32", "int8")
CROSS_ATTENTION = ("keys", "encoder")  # K and V formed once per batch (the reference's order), or attend over E


class TorchBackend(TransformersBackend):
    name = "torch"

    def __init__(
        self,
        model: EvalModel,
        threads: int,
        weights: str = "float32",
        encoder_cache: bool = True,
        cross_attention: str = "keys",
    ):
        if weights not in WEIGHT_TYPES:
            raise SpeechmergeError(f"quantization {weights!r}: the torch backend takes float32 or int8")
        if cross_attention not in CROSS_ATTENTION:
            raise SpeechmergeError(f"cross attention {cross_attention!r}: the torch backend takes keys or encoder")
        super().__init__(model, threads=threads, encoder_cache=encoder_cache)
        attend_encoder = cross_attention == "encoder"
        if weights == "int8":
            quantise_decoder(self.model, cross_projections=not attend_encoder)
        self.decoder = GreedyDecoder(self.model, attend_encoder=attend_encoder)
        config = self.generation_config
        self.suppress = tuple(config.suppress_tokens or ())
        self.begin_suppress = tuple(config.begin_suppress_tokens or ())
        self.language_tokens = sorted((config.lang_to_id or {}).values())
        self._cross = (None, None)  # (encoder output, its cross-attention keys and values)

    def _cross_keys_values(self, encoded):
        if self._cross[0] is not encoded:
            self._cross = (encoded, self.decoder.cross_keys_values(encoded))
        return self._cross[1]

    def detect_languages(self, encoded) -> list[str]:
        logits = self.decoder.first_logits(
            self._cross_keys_values(encoded), self.generation_config.decoder_start_token_id
        )
        ids = language_ids(logits, self.language_tokens)
        return [language_code(token) for token in self.tokenizer.convert_ids_to_tokens(ids)]

    def decode(self, encoded, languages: Sequence[str], task: str, settings: DecodeSettings) -> list[str]:
        if settings.beam_size != 1:
            raise SpeechmergeError(
                f"--beam-size {settings.beam_size}: the torch backend decodes greedily; "
                "use --backend transformers for beam search"
            )
        prompts = [prompt_ids(self.tokenizer, self.model_info.multilingual, language, task) for language in languages]
        rules = GreedyRules(
            suppress_tokens=self.suppress,
            begin_suppress_tokens=self.begin_suppress,
            eos_token_id=self.generation_config.eos_token_id,
            max_new_tokens=settings.max_new_tokens,
        )
        generated = self.decoder.generate(self._cross_keys_values(encoded), prompts, rules)
        self._cross = (None, None)
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
