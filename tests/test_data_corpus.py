"""The built-in espeak-ng corpora, built small: languages, tasks, domains, splits, disjoint
sentences and speakers, audio format, acoustic conditions, determinism and incremental builds."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
import soundfile
from conftest import run_cli

from speechmerge.data.corpus import build_corpus, open_corpus
from speechmerge.data.designs import SIZES
from speechmerge.data.manifest import read_manifest
from speechmerge.data.sentences import TEXT_DIR, read_tsv
from speechmerge.errors import SpeechmergeError

if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="module")
def multilingual(root):
    return build_corpus("multilingual", "tiny", root=root, seed=0, languages=["es", "de"])


@pytest.fixture(scope="module")
def multidomain(root):
    return build_corpus("multidomain", "tiny", root=root, seed=0, languages=["fr"], domains=["health", "law"])


def labels(corpus) -> set[tuple[str, str, str, str]]:
    return {(m.language, m.task, m.domain, m.split) for m in corpus.index.manifests}


def test_multilingual_has_every_language_task_domain_and_split(multilingual):
    expected = set()
    for language in ("es", "de", "en"):
        tasks = ("transcribe",) if language == "en" else ("transcribe", "translate")
        for task in tasks:
            expected |= {(language, task, "general", split) for split in ("train", "validation", "test")}
            expected.add((language, task, "heldout", "test"))
    assert labels(multilingual) == expected
    assert multilingual.languages == ["de", "en", "es"]
    counts = {(m.language, m.task, m.domain, m.split): m.utterances for m in multilingual.index.manifests}
    assert counts[("es", "translate", "general", "train")] == TINY.train * TINY.voices_per_sentence
    assert counts[("de", "transcribe", "general", "validation")] == TINY.validation
    assert counts[("en", "transcribe", "general", "test")] == TINY.test
    assert counts[("es", "transcribe", "heldout", "test")] == TINY.heldout


def test_transcribe_and_translate_lines_share_audio_and_translate_to_the_english(multilingual):
    english = read_tsv(TEXT_DIR / "general" / "en.tsv")
    transcribe = read_manifest(multilingual.manifest("de", "transcribe", "general", "test"))
    translate = read_manifest(multilingual.manifest("de", "translate", "general", "test"))
    assert [u.audio for u in transcribe] == [u.audio for u in translate]
    for utterance in translate:
        sentence_id = utterance.id.split("-")[1]
        assert utterance.reference == english[sentence_id] and utterance.language == "de"
    assert all(u.reference == u.text for u in transcribe)


def test_no_test_sentence_is_trained_on_in_any_language(multilingual):
    by_split = defaultdict(set)
    for info in multilingual.select(domain="general"):
        for utterance in read_manifest(multilingual.path(info)):
            by_split[info.split].add(utterance.id.split("-")[1])
    assert by_split["train"] and by_split["test"] and by_split["validation"]
    assert not by_split["train"] & (by_split["test"] | by_split["validation"])
    assert not by_split["test"] & by_split["validation"]


def test_evaluation_speakers_are_never_heard_in_training(multilingual, multidomain):
    for corpus in (multilingual, multidomain):
        train, held = set(), set()
        for utterance in corpus.utterances(task="transcribe"):
            (train if utterance.split == "train" else held).add(utterance.speaker)
        assert train and held and not train & held


def test_audio_is_16_khz_mono_and_as_long_as_the_manifest_says(multilingual):
    for utterance in multilingual.utterances(task="transcribe", split="test"):
        info = soundfile.info(utterance.audio)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.duration == pytest.approx(utterance.duration, abs=1e-3)
        assert 0.8 < info.duration < 12.0
        samples, _ = soundfile.read(utterance.audio)
        assert np.sqrt(np.mean(samples**2)) > 0.01  # speech, not silence


def test_multidomain_has_domains_and_out_of_domain_sets(multidomain):
    assert labels(multidomain) == {
        *{("pt", "transcribe", d, s) for d in ("health", "law") for s in ("train", "validation", "test")},
        ("pt", "transcribe", "culture", "test"),
        ("pt", "transcribe", "general", "test"),
        ("pt", "transcribe", "general-br", "test"),
        ("fr", "transcribe", "general", "test"),
        ("en", "transcribe", "general", "test"),
    }
    assert set(multidomain.index.domains) == {"health", "law", "culture", "general", "general-br"}
    assert "telephone" in multidomain.index.domains["law"]
    brazilian = read_manifest(multidomain.manifest("pt", "transcribe", "general-br", "test"))
    assert all(u.speaker.startswith("pt-br-") for u in brazilian)
    european = {
        u.id.split("-")[1]: u.text for u in read_manifest(multidomain.manifest("pt", "transcribe", "general", "test"))
    }
    assert any(european.get(u.id.split("-")[2]) not in (None, u.text) for u in brazilian)  # Brazilian wording differs


def high_band_fraction(path) -> float:
    samples, rate = soundfile.read(path)
    power = np.abs(np.fft.rfft(samples)) ** 2
    return float(power[np.fft.rfftfreq(len(samples), 1 / rate) > 4000].sum() / power.sum())


def test_the_telephone_domain_has_no_energy_above_4_khz_and_the_clean_one_does(multidomain):
    telephone = [high_band_fraction(u.audio) for u in multidomain.utterances(domain="law")]
    clean = [high_band_fraction(u.audio) for u in multidomain.utterances(domain="health")]
    assert max(telephone) < 1e-4 < min(clean)


def test_rebuilding_speaks_nothing_and_reopens_the_same_index(root, multilingual):
    spoken = []
    again = build_corpus(
        "multilingual",
        "tiny",
        root=root,
        seed=0,
        languages=["es", "de"],
        on_clip=lambda done, total: spoken.append(done),
    )
    assert spoken == []
    assert again.index == multilingual.index == open_corpus(multilingual.directory).index


def audio_digests(corpus) -> dict[str, str]:
    return {u.id: hashlib.sha256(u.audio.read_bytes()).hexdigest() for u in corpus.utterances(task="transcribe")}


def test_same_seed_same_audio_other_seed_other_voices(tmp_path, multilingual):
    fresh = build_corpus("multilingual", "tiny", root=tmp_path / "a", seed=0, languages=["es", "de"])
    assert audio_digests(fresh) == audio_digests(multilingual)
    other = build_corpus("multilingual", "tiny", root=tmp_path / "b", seed=1, languages=["es", "de"])
    assert other.directory.name == "multilingual-tiny-seed1-" + other.directory.name.rsplit("-", 1)[1]
    same = set(audio_digests(other).values()) & set(audio_digests(multilingual).values())
    assert len(same) <= len(audio_digests(other)) // 4


def test_a_larger_build_reuses_the_clips_it_shares(tmp_path):
    small = build_corpus("multilingual", "tiny", root=tmp_path, seed=0, languages=["es"])
    spoken = []
    bigger = build_corpus(
        "multilingual",
        "tiny",
        root=tmp_path,
        seed=0,
        languages=["es", "de"],
        on_clip=lambda done, total: spoken.append(total),
    )
    shared = set(u.audio for u in small.utterances()) & set(u.audio for u in bigger.utterances())
    assert shared == set(u.audio for u in small.utterances())
    assert spoken and spoken[-1] == len({u.audio for u in bigger.utterances()}) - len(shared)


def test_missing_espeak_is_one_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    import speechmerge.data.espeak as espeak

    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    with pytest.raises(SpeechmergeError, match="espeak-ng: not found on PATH.*apt-get install espeak-ng"):
        build_corpus("multilingual", "tiny", root=tmp_path, languages=["es"])
    assert not list(tmp_path.glob("multilingual-*"))


def test_a_built_corpus_is_usable_without_espeak(root, multilingual, monkeypatch):
    import speechmerge.data.espeak as espeak

    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    assert build_corpus("multilingual", "tiny", root=root, seed=0, languages=["es", "de"]).index == multilingual.index


def test_an_interrupted_build_leaves_no_manifests_and_resumes(tmp_path, monkeypatch):
    import speechmerge.data.corpus as corpus_module

    real_speak, calls = corpus_module.speak, []

    def failing_speak(text, voice):
        calls.append(text)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_speak(text, voice)

    monkeypatch.setattr(corpus_module, "speak", failing_speak)
    with pytest.raises(KeyboardInterrupt):
        build_corpus("multilingual", "tiny", root=tmp_path, languages=["es"], workers=1)
    assert not list(tmp_path.glob("multilingual-*")) and not list(tmp_path.glob(".multilingual-*"))
    written = list((tmp_path / "audio").rglob("*.wav"))
    assert 4 <= len(written) <= 5  # stopped at the failure (one more clip may have been in flight)
    assert not list((tmp_path / "audio").rglob(".*.tmp-*"))  # no temporary file left behind
    monkeypatch.setattr(corpus_module, "speak", real_speak)
    spoken = []
    build_corpus(
        "multilingual", "tiny", root=tmp_path, languages=["es"], on_clip=lambda done, total: spoken.append(total)
    )
    assert spoken[-1] == 22 - len(written)


def test_selection_errors_name_what_exists(multilingual):
    with pytest.raises(
        SpeechmergeError, match="no manifest for fr/transcribe/general/test; this corpus has: de/transcribe"
    ):
        multilingual.manifest("fr", "transcribe", "general", "test")
    with pytest.raises(SpeechmergeError, match="languages \\['xx'\\]"):
        build_corpus("multilingual", "tiny", languages=["xx"])
    with pytest.raises(SpeechmergeError, match="corpus size 'huge'"):
        build_corpus("multilingual", "huge")
    with pytest.raises(SpeechmergeError, match="domains \\['gardening'\\]"):
        build_corpus("multidomain", "tiny", domains=["gardening"])


def test_cli_build_prints_the_manifests(tmp_path, capsys):
    code, out, _ = run_cli(
        ["data", "build", "--corpus", "multilingual", "--size", "tiny", "--languages", "es", "--output", tmp_path],
        capsys,
    )
    assert code == 0
    assert "multilingual corpus" in out and "heldout" in out and "translate" in out
    index = json.loads(next(tmp_path.glob("multilingual-*/corpus.json")).read_text())
    assert index["languages"] == ["en", "es"] and index["size"] == "tiny"
    code, _, err = run_cli(["data", "build", "--corpus", "everything", "--output", tmp_path], capsys)
    assert code == 2 and "--corpus 'everything'" in err


def test_vocabulary_overlap_rows_follow_the_training_text(multilingual, multidomain, capsys):
    from speechmerge.data.stats import corpus_overlaps, overlap, words

    rows = {(r.language, r.domain, r.split): r for r in corpus_overlaps(multilingual)}
    assert set(rows) == {
        (language, domain, split)
        for language in ("de", "en", "es")
        for domain, split in (("general", "test"), ("general", "validation"), ("heldout", "test"))
    }
    train = {
        w for u in read_manifest(multilingual.manifest("es", "transcribe", "general", "train")) for w in words(u.text)
    }
    test = list(
        dict.fromkeys(u.text for u in read_manifest(multilingual.manifest("es", "transcribe", "general", "test")))
    )
    assert (
        rows[("es", "general", "test")].all_training
        == overlap(train, test)
        == rows[("es", "general", "test")].own_domain
    )
    assert rows[("es", "heldout", "test")].own_domain is None
    domain_rows = {(r.domain, r.split): r for r in corpus_overlaps(multidomain) if r.language == "pt"}
    assert domain_rows[("culture", "test")].own_domain is None and domain_rows[("law", "test")].own_domain is not None
    assert not any(r.language in ("fr", "en") for r in corpus_overlaps(multidomain))  # no training text there
    code, out, _ = run_cli(["data", "stats", multidomain.directory], capsys)
    assert code == 0 and "vocabulary overlap" in out


def test_a_custom_size_speaks_each_domain_evaluation_sentence_in_several_unseen_voices(tmp_path):
    from dataclasses import replace

    size = replace(TINY, domain_eval_voices=2, eval_speakers=3)
    corpus = build_corpus("multidomain", size, root=tmp_path, domains=["cooking"], languages=["es"])
    assert corpus.directory.name.startswith("multidomain-custom-seed0-") and corpus.index.size == "custom"
    test = read_manifest(corpus.manifest("pt", "transcribe", "cooking", "test"))
    voices = defaultdict(set)
    for utterance in test:
        voices[utterance.text].add(utterance.speaker)
    assert len(voices) == TINY.test and all(len(speakers) == 2 for speakers in voices.values())
    train_speakers = {u.speaker for u in read_manifest(corpus.manifest("pt", "transcribe", "cooking", "train"))}
    assert not train_speakers & set().union(*voices.values())
    assert (
        len(read_manifest(corpus.manifest("pt", "transcribe", "general", "test"))) == TINY.test
    )  # one voice out of domain


def test_naming_the_default_languages_is_the_default_build(tmp_path):
    from speechmerge.data.corpus import chosen_options, corpus_folder_name

    demo = SIZES["demo"]
    assert chosen_options("multilingual", demo, ["fr", "en", "es", "de"], None) == (None, None)
    assert chosen_options("multidomain", SIZES["full"], None, ["law", "health"]) == (None, ("health", "law"))
    assert chosen_options("multilingual", demo, ["en"], None) == ((), None)  # English only
    assert corpus_folder_name("multilingual", "demo", 0, None, None) == "multilingual-demo-seed0"
    assert corpus_folder_name("multilingual", "demo", 0, (), None) != "multilingual-demo-seed0"
    english_only = build_corpus("multilingual", "tiny", root=tmp_path, languages=["en"])
    assert english_only.languages == ["en"]


def test_an_index_from_another_design_is_rewritten_without_speaking(tmp_path):
    corpus = build_corpus("multilingual", "tiny", root=tmp_path, languages=["es"])
    index_path = corpus.directory / "corpus.json"
    stale = json.loads(index_path.read_text())
    stale["plan"], stale["manifests"] = "0" * 16, stale["manifests"][:1]
    index_path.write_text(json.dumps(stale))
    spoken = []
    rebuilt = build_corpus(
        "multilingual", "tiny", root=tmp_path, languages=["es"], on_clip=lambda done, total: spoken.append(done)
    )
    assert spoken == [] and rebuilt.index == corpus.index and open_corpus(corpus.directory).index == corpus.index
