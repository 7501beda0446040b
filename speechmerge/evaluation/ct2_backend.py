"""The CTranslate2 backend: the model exported once to CTranslate2 (int8 or float32), decoded there.

The export is `checkpoints.export.export_ct2` (CTranslate2's own converter), cached under
`cache_dir("ct2-models")` by the model's content key and the quantisation. Decoding encodes
each batch once (`Whisper.encode`) and reuses the encoder output for language detection and
generation. The decoding rules follow the transformers backend: the same prompt, the model's
`suppress_tokens`, blank and end-of-text suppressed at the first step (`suppress_blank`, the
`begin_suppress_tokens` of Whisper's generation config), the same token budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.backend import DecodeSettings, language_code, load_tokenizer, prompt_ids
from speechmerge.evaluation.model import EvalModel
from speechmerge.features.log_mel import LogMel

QUANTIZATIONS = ("int8", "float32", "int8_float32", "int16")


def exported_ct2_dir(model: EvalModel, quantization: str) -> Path:
    """The CTranslate2 export of `model` in `quantization`, made once (under a file lock)."""
    from filelock import FileLock

    from speechmerge.cache import cache_dir
    from speechmerge.checkpoints.export import export_ct2

    if quantization not in QUANTIZATIONS:
        raise SpeechmergeError(
            f"quantization {quantization!r}: the CPU CTranslate2 backend takes one of {', '.join(QUANTIZATIONS)}"
        )
    root = cache_dir("ct2-models")
    target = root / f"{model.key[:32]}-{quantization}"
    if not (target / "model.bin").is_file():
        with FileLock(str(root / f".{target.name}.lock")):
            if not (target / "model.bin").is_file():
                export_ct2(model.directory, target, quantization=quantization, force=True)
    return target


class Ct2Backend:
    name = "ctranslate2"

    def __init__(self, model: EvalModel, quantization: str = "int8", threads: int = 1):
        try:
            import ctranslate2
        except ImportError:
            raise SpeechmergeError(
                "the ctranslate2 backend needs the ctranslate2 package; install it with: pip install 'speechmerge[ct2]'"
            ) from None
        self.model_info = model
        self.ct2 = ctranslate2
        directory = exported_ct2_dir(model, quantization)
        self.model = ctranslate2.models.Whisper(
            str(directory), device="cpu", compute_type=quantization, intra_threads=threads
        )
        self.tokenizer = load_tokenizer(model)
        self.log_mel = LogMel(model.directory)
        generation = json.loads((model.directory / "generation_config.json").read_text())
        self.suppress_tokens = list(generation.get("suppress_tokens") or [])
        self.encoder_calls = 0

    def encode(self, audio: Sequence[Path]):
        import numpy as np

        self.encoder_calls += 1
        features = self.ct2.StorageView.from_array(np.ascontiguousarray(self.log_mel(audio)))
        return self.model.encode(features, to_cpu=True)

    def detect_languages(self, encoded) -> list[str]:
        return [language_code(ranked[0][0]) for ranked in self.model.detect_language(encoded)]

    def decode(self, encoded, languages: Sequence[str], task: str, settings: DecodeSettings) -> list[str]:
        prompts = [prompt_ids(self.tokenizer, self.model_info.multilingual, language, task) for language in languages]
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=settings.beam_size,
            # CTranslate2 generates at most min(max_length / 2, max_length - len(prompt) + 1) tokens
            max_length=2 * settings.max_new_tokens,
            suppress_tokens=self.suppress_tokens,
            suppress_blank=True,
        )
        return [self.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip() for result in results]
