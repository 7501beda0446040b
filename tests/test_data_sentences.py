"""The corpus's sentence files: parallel, complete, clean, and split by sentence id so that no
test sentence is trained on in any language."""

from __future__ import annotations

import re

import pytest

from speechmerge.data.designs import DOMAINS, STUDY_LANGUAGES, UNSEEN_DOMAIN
from speechmerge.data.sentences import (
    TEXT_DIR,
    available_languages,
    ordered_split,
    read_tsv,
    sentences,
    split_of,
)
from speechmerge.errors import SpeechmergeError

ALL = (*STUDY_LANGUAGES, "en")


SETS = ("general", "heldout", *DOMAINS, UNSEEN_DOMAIN)


def test_every_set_the_designs_use_is_shipped_and_nothing_else():
    assert {path.name for path in TEXT_DIR.iterdir() if path.is_dir()} == set(SETS)
    assert set(available_languages("general")) == {*ALL, "pt-br"}
    assert set(available_languages("heldout")) == set(ALL)
    for domain in (*DOMAINS, UNSEEN_DOMAIN):
        assert set(available_languages(domain)) == {"pt", "en"}


@pytest.mark.parametrize("set_name", SETS)
def test_every_language_has_every_english_sentence_and_nothing_else(set_name):
    english = read_tsv(TEXT_DIR / set_name / "en.tsv")
    for language in available_languages(set_name):
        ids = [s.id for s in sentences(set_name, language)]
        if language == "pt-br":  # Brazilian Portuguese re-words the evaluation sentences only
            assert set(ids) == {k for k, split in split_of(set_name).items() if split != "train"}
        else:
            assert ids == list(english)


def test_set_sizes():
    assert len(sentences("general", "en")) == 300
    assert len(sentences("heldout", "en")) == 40
    for domain in (*DOMAINS, UNSEEN_DOMAIN):
        assert len(sentences(domain, "pt")) == 60


@pytest.mark.parametrize("set_name", SETS)
def test_sentences_are_clean_text_of_reasonable_length(set_name):
    for language in available_languages(set_name):
        texts = [s.text for s in sentences(set_name, language)]
        assert len(set(texts)) == len(texts), f"{set_name}/{language}: repeated sentence"
        for text in texts:
            assert not re.search(r"\d", text), f"{set_name}/{language}: digits in {text!r} (spell numbers out)"
            assert text == " ".join(text.split()) and text[-1] in ".?!", f"{set_name}/{language}: {text!r}"
            assert 3 <= len(text.split()) <= 16, f"{set_name}/{language}: {text!r}"


def test_translations_are_the_english_of_the_same_id():
    english = read_tsv(TEXT_DIR / "general" / "en.tsv")
    for sentence in sentences("general", "ru"):
        assert sentence.translation == english[sentence.id]


@pytest.mark.parametrize("set_name", ["general", *DOMAINS])
def test_splits_partition_the_ids_one_sixth_each_for_validation_and_test(set_name):
    split = split_of(set_name)
    n = len(split)
    sizes = {name: sum(1 for value in split.values() if value == name) for name in ("train", "validation", "test")}
    assert sizes == {"train": n - 2 * round(n / 6), "validation": round(n / 6), "test": round(n / 6)}
    ordered = {name: ordered_split(set_name, name) for name in sizes}
    assert sorted(sum(ordered.values(), [])) == sorted(split)
    assert all(split[key] == name for name, keys in ordered.items() for key in keys)


def test_splits_are_shuffled_not_taken_in_file_order():
    test_ids = ordered_split("general", "test")
    assert sorted(test_ids) != sorted(read_tsv(TEXT_DIR / "general" / "en.tsv"))[: len(test_ids)]


def test_missing_language_and_malformed_file_are_clear_errors(tmp_path):
    with pytest.raises(SpeechmergeError, match="no 'xx' text for sentence set 'general'"):
        sentences("general", "xx")
    bad = tmp_path / "bad.tsv"
    bad.write_text("g001\tfine.\ng002 no tab here\n", encoding="utf-8")
    with pytest.raises(SpeechmergeError, match="line 2: expected 'id<TAB>sentence'"):
        read_tsv(bad)


def test_vocabulary_overlap_by_hand():
    from speechmerge.data.stats import overlap, words

    assert words("L'any passat, el Pré-Aqueça és ÀRID!") == ["l'any", "passat", "el", "pré-aqueça", "és", "àrid"]
    result = overlap({"the", "cat", "sat"}, ["The cat ran.", "A cat sat."])
    # tokens: the cat ran a cat sat -> 4 of 6 covered; words: the cat ran a sat -> ran, a new (2 of 5)
    assert (result.tokens, result.token_coverage, result.new_words) == (6, pytest.approx(4 / 6), pytest.approx(2 / 5))
