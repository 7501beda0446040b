"""Greedy decoding of a loaded Whisper from encoder outputs, as the torch evaluation backend
decodes (`speechmerge.evaluation.greedy`: the same prompt, suppressed tokens and stopping rule).

The decoder reads the model's own modules, so tensors copied into the model
(`load_state_dict(strict=False)`) are decoded with at the next call.
"""

from __future__ import annotations

import torch

from speechmerge.evaluation.backend import prompt_ids
from speechmerge.evaluation.greedy import GreedyDecoder, GreedyRules


class Greedy:
    def __init__(self, model, tokenizer, max_new_tokens: int):
        config = model.generation_config
        self.tokenizer = tokenizer
        self.multilingual = bool(getattr(config, "is_multilingual", None) or getattr(config, "lang_to_id", None))
        self.decoder = GreedyDecoder(model)
        self.rules = GreedyRules(
            suppress_tokens=tuple(config.suppress_tokens or ()),
            begin_suppress_tokens=tuple(config.begin_suppress_tokens or ()),
            eos_token_id=config.eos_token_id,
            max_new_tokens=max_new_tokens,
        )

    def prompt(self, language: str, task: str) -> list[int]:
        return prompt_ids(self.tokenizer, self.multilingual, language, task)

    def tokens(self, encoded: torch.Tensor, language: str, task: str) -> list[list[int]]:
        """The generated ids of each clip of `encoded` [batch, frames, d_model] (end-of-text excluded)."""
        prompts = [self.prompt(language, task)] * encoded.shape[0]
        return self.decoder.generate(self.decoder.cross_keys_values(encoded), prompts, self.rules)

    def texts(self, encoded: torch.Tensor, language: str, task: str) -> list[str]:
        generated = self.tokens(encoded, language, task)
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
