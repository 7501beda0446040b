"""The CTranslate2 backend: the model exported once to CTranslate2, its decoder run there.

The export is `checkpoints.export.export_ct2` (CTranslate2's own converter), made once per model
and weight type and cached under `cache_dir("ct2-models")` by the model's content key (what it
costs is `conversion_seconds` of the backend, zero on a cache hit).

Encoder outputs, like the other backends': with the encoder-output cache on (the default) they
are the float32 torch encoder's outputs of `features.encoder_cache`, shared by every model with
the same encoder (a frozen-encoder expert or merge runs no encoder at all; a clip missing from
the cache is encoded once by the torch encoder, loaded only then), and handed to CTranslate2's
`Whisper.generate`, which accepts encoder outputs [batch, 1500, d_model] in place of features.
With the cache off CTranslate2 runs the model's own encoder in the chosen weight type (the
path for a fully fine-tuned model, whose encoder no other model shares). Decoding encodes each
batch once and reuses the encoder output for language detection and generation. The decoding
rules follow the transformers backend: the same prompt, the model's `suppress_tokens`, blank and
end-of-text suppressed at the first step (`suppress_blank`, the `begin_suppress_tokens` of
Whisper's generation config), the same token budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.backend import DecodeSettings, language_code, load_tokenizer, prompt_ids
from speechmerge.evaluation.model import EvalModel
from speechmerge.features.log_mel import LogMel

QUANTIZATIONS = ("int8", "float32", "int8_float32", "int16")


def exported_ct2_dir(model: EvalModel, quantization: str) -> tuple[Path, bool]:
    """The CTranslate2 export of `model` in `quantization`, made once (under a file lock), and
    whether this call made it."""
    from filelock import FileLock

    from speechmerge.cache import cache_dir
    from speechmerge.checkpoints.export import export_ct2

    if quantization not in QUANTIZATIONS:
        raise SpeechmergeError(
            f"quantization {quantization!r}: the CPU CTranslate2 backend takes one of {', '.join(QUANTIZATIONS)}"
        )
    root = cache_dir("ct2-models")
    target = root / f"{model.key[:32]}-{quantization}"
    if (target / "model.bin").is_file():
        return target, False
    with FileLock(str(root / f".{target.name}.lock")):
        if (target / "model.bin").is_file():
            return target, False
        export_ct2(model.directory, target, quantization=quantization, force=True)
    return target, True


class Ct2Backend:
    name = "ctranslate2"

    def __init__(self, model: EvalModel, quantization: str = "int8", threads: int = 1, encoder_cache: bool = True):
        try:
            import ctranslate2
        except ImportError:
            raise SpeechmergeError(
                "the ctranslate2 backend needs the ctranslate2 package; install it with: pip install 'speechmerge[ct2]'"
            ) from None
        from speechmerge.features.encoder_cache import EncoderOutputCache, directory_encoder_key

        self.model_info = model
        self.ct2 = ctranslate2
        self.threads = threads
        start = time.perf_counter()
        directory, converted = exported_ct2_dir(model, quantization)
        self.conversion_seconds = time.perf_counter() - start if converted else 0.0
        self.model = ctranslate2.models.Whisper(
            str(directory), device="cpu", compute_type=quantization, intra_threads=threads
        )
        self.tokenizer = load_tokenizer(model)
        self.log_mel = LogMel(model.directory)
        generation = json.loads((model.directory / "generation_config.json").read_text())
        self.suppress_tokens = list(generation.get("suppress_tokens") or [])
        self.cache = (
            EncoderOutputCache(directory_encoder_key(model.directory), self.log_mel.settings) if encoder_cache else None
        )
        self._torch_encoder = None
        self.encoder_calls = 0

    def _encode_float32(self, features):
        """The torch encoder on features, as the transformers backend runs it (loaded on first use)."""
        import torch

        from speechmerge.evaluation.hf_backend import encoder_function, load_whisper

        if self._torch_encoder is None:
            torch.set_num_threads(self.threads)
            self._torch_encoder = encoder_function(load_whisper(self.model_info.directory))
        self.encoder_calls += 1
        return self._torch_encoder(features)

    def encode(self, audio: Sequence[Path]):
        import numpy as np

        if self.cache is None:
            self.encoder_calls += 1
            features = self.ct2.StorageView.from_array(np.ascontiguousarray(self.log_mel(audio)))
            return self.model.encode(features, to_cpu=True)
        from speechmerge.features.encoder_cache import encode_clips

        encoded = encode_clips(self._encode_float32, self.log_mel, audio, self.cache, batch_size=max(1, len(audio)))
        return EncoderOutputs(np.ascontiguousarray(encoded.numpy()), self.ct2)

    def detect_languages(self, encoded) -> list[str]:
        return [language_code(ranked[0][0]) for ranked in self.model.detect_language(_storage(encoded))]

    def decode(self, encoded, languages: Sequence[str], task: str, settings: DecodeSettings) -> list[str]:
        prompts = [prompt_ids(self.tokenizer, self.model_info.multilingual, language, task) for language in languages]
        results = self.model.generate(
            _storage(encoded),
            prompts,
            beam_size=settings.beam_size,
            # CTranslate2 generates at most min(max_length / 2, max_length - len(prompt) + 1) tokens
            max_length=2 * settings.max_new_tokens,
            suppress_tokens=self.suppress_tokens,
            suppress_blank=True,
        )
        return [self.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip() for result in results]


class EncoderOutputs:
    """Encoder outputs [batch, frames, d_model] (float32 numpy) and the CTranslate2 view sharing their memory
    (a `StorageView` does not own an array's memory, so the array lives as long as the view)."""

    def __init__(self, array, ctranslate2):
        self.array = array
        self.view = ctranslate2.StorageView.from_array(array)
        self.shape = array.shape


def _storage(encoded):
    return encoded.view if isinstance(encoded, EncoderOutputs) else encoded
