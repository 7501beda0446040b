"""What the two built-in corpora contain: languages, domains, acoustic conditions, sizes, speakers.

*multilingual* (the LoRS-Merging study): ca de es fr it id nl pt ru sv, each with an ASR task
(`transcribe`) and an X→English speech-translation task (`translate`) on the same clips, in
domain `general` (train / validation / test) and `heldout` (test only: questions, dialogue,
headlines, instructions — a style never trained on); English (`general`, `heldout`,
transcribe only) measures what the base model keeps.

*multidomain* (the BoostedTSV-M study): European Portuguese (espeak `pt`) in ten domains, each a
topic and an acoustic condition (train / validation / test); out of domain, test only: an unseen
domain (`culture`), European Portuguese general sentences (`general`), Brazilian Portuguese
(espeak `pt-br`, domain `general-br`), English and other languages (`general`).

Each training sentence is spoken by `voices_per_sentence` training speakers; validation and test
sentences by speakers never heard in training (in the multidomain domains, by
`domain_eval_voices` of them: the domain sets are small). A size caps the sentences per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from speechmerge.data.conditions import CLEAN, Condition
from speechmerge.data.sentences import Sentence, ordered_split, sentences
from speechmerge.errors import SpeechmergeError

CORPORA = ("multilingual", "multidomain")
STUDY_LANGUAGES = ("ca", "de", "es", "fr", "it", "id", "nl", "pt", "ru", "sv")


@dataclass(frozen=True)
class CorpusSize:
    """Caps on sentences per split, and how many voices speak them."""

    train: int
    validation: int
    test: int
    heldout: int  # evaluation-only sets: another style, the unseen domain
    train_speakers: int
    eval_speakers: int
    voices_per_sentence: int
    domain_eval_voices: int
    multilingual_languages: tuple[str, ...]
    multidomain_languages: tuple[str, ...]


SIZES = {
    "tiny": CorpusSize(
        train=4,
        validation=2,
        test=3,
        heldout=2,
        train_speakers=2,
        eval_speakers=1,
        voices_per_sentence=1,
        domain_eval_voices=1,
        multilingual_languages=("es",),
        multidomain_languages=("es",),
    ),
    "demo": CorpusSize(
        train=48,
        validation=8,
        test=16,
        heldout=8,
        train_speakers=4,
        eval_speakers=2,
        voices_per_sentence=1,
        domain_eval_voices=1,
        multilingual_languages=("es", "de", "fr"),
        multidomain_languages=("es",),
    ),
    "full": CorpusSize(
        train=200,
        validation=50,
        test=50,
        heldout=40,
        train_speakers=12,
        eval_speakers=4,
        voices_per_sentence=2,
        domain_eval_voices=2,
        multilingual_languages=STUDY_LANGUAGES,
        multidomain_languages=tuple(x for x in STUDY_LANGUAGES if x != "pt"),
    ),
}


@dataclass(frozen=True)
class Domain:
    """A multidomain domain: a topic (its sentence set) and an acoustic condition."""

    topic: str
    condition: Condition


DOMAINS = {
    "health": Domain("symptoms, doctors, hospitals", CLEAN),
    "law": Domain("courts, contracts, rights", Condition(telephone=True)),
    "sport": Domain("matches, training, athletes", Condition(noise="babble", snr_db=10)),
    "finance": Domain("banks, markets, taxes", Condition(noise="white", snr_db=15)),
    "cooking": Domain("recipes, ingredients, kitchens", Condition(rt60=0.5)),
    "travel": Domain("trains, airports, hotels", Condition(noise="pink", snr_db=10)),
    "technology": Domain("computers, phones, software", Condition(speed_factor=1.45)),
    "weather": Domain("forecasts, storms, seasons", Condition(noise="white", snr_db=5)),
    "politics": Domain("parliament, elections, government", Condition(rt60=1.0)),
    "stories": Domain("children's stories: animals, forests, kings", Condition(pitch_shift=30, speed_factor=0.85)),
}
UNSEEN_DOMAIN = "culture"
UNSEEN = Domain("arts: museums, music, theatre (never trained on)", Condition(noise="pink", snr_db=15, telephone=True))


@dataclass(frozen=True)
class ClipPlan:
    """One clip to speak and the manifests it belongs to."""

    id: str
    language: str  # Whisper language code
    voice_language: str  # espeak-side language (`pt-br` for Brazilian Portuguese)
    sentence: Sentence
    domain: str
    split: str
    pool: str  # speaker pool, e.g. `es` or `pt-health`
    speaker: int
    condition: Condition
    tasks: tuple[str, ...]

    @property
    def speaker_label(self) -> str:
        return f"{self.pool}-s{self.speaker:02d}"


def corpus_size(size: str | CorpusSize) -> CorpusSize:
    """A named size (tiny, demo, full) or an explicit `CorpusSize`."""
    if isinstance(size, CorpusSize):
        return size
    if size not in SIZES:
        raise SpeechmergeError(f"corpus size {size!r}: unknown; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def default_languages(name: str, size: CorpusSize) -> tuple[str, ...]:
    """The languages a corpus speaks by default at a size (English is always added)."""
    return size.multilingual_languages if name == "multilingual" else size.multidomain_languages


def plan_corpus(
    name: str,
    size: CorpusSize,
    seed: int,
    languages: Optional[tuple[str, ...]] = None,
    domains: Optional[tuple[str, ...]] = None,
) -> list[ClipPlan]:
    """Every clip of a corpus, in a deterministic order."""
    if name not in CORPORA:
        raise SpeechmergeError(f"corpus {name!r}: unknown; choose one of {', '.join(CORPORA)}")
    chosen = tuple(languages) if languages is not None else default_languages(name, size)
    unknown = [code for code in chosen if code not in STUDY_LANGUAGES and code != "en"]
    if unknown:
        raise SpeechmergeError(
            f"languages {unknown}: the built-in corpus speaks {', '.join(STUDY_LANGUAGES)} and en; choose among them"
        )
    if name == "multilingual":
        return _plan_multilingual(size, [code for code in chosen if code != "en"])
    picked = tuple(domains) if domains else tuple(DOMAINS)
    unknown = [domain for domain in picked if domain not in DOMAINS]
    if unknown:
        raise SpeechmergeError(f"domains {unknown}: unknown; choose among {', '.join(DOMAINS)}")
    return _plan_multidomain(size, [code for code in chosen if code not in ("en", "pt")], picked)


def _plan_multilingual(size: CorpusSize, languages: list[str]) -> list[ClipPlan]:
    plans = []
    for language in [*languages, "en"]:
        tasks = ("transcribe",) if language == "en" else ("transcribe", "translate")
        plans += _plan_trainable(size, "general", language, language, "general", language, CLEAN, tasks, eval_voices=1)
        plans += _plan_test_only(
            size, sentences("heldout", language), language, language, "heldout", language, CLEAN, tasks, size.heldout
        )
    return plans


def _plan_multidomain(size: CorpusSize, languages: list[str], domains: tuple[str, ...]) -> list[ClipPlan]:
    asr = ("transcribe",)
    plans = []
    for domain in domains:
        plans += _plan_trainable(
            size, domain, "pt", "pt", domain, f"pt-{domain}", DOMAINS[domain].condition, asr, size.domain_eval_voices
        )
    unseen = sentences(UNSEEN_DOMAIN, "pt")
    plans += _plan_test_only(
        size, unseen, "pt", "pt", UNSEEN_DOMAIN, f"pt-{UNSEEN_DOMAIN}", UNSEEN.condition, asr, size.heldout
    )
    plans += _plan_test_only(size, _test_split("general", "pt"), "pt", "pt", "general", "pt", CLEAN, asr, size.test)
    plans += _plan_test_only(
        size, _test_split("general", "pt-br"), "pt", "pt-br", "general-br", "pt-br", CLEAN, asr, size.test
    )
    for language in [*languages, "en"]:
        plans += _plan_test_only(
            size, _test_split("general", language), language, language, "general", language, CLEAN, asr, size.test
        )
    return plans


def _plan_trainable(
    size, set_name, language, voice_language, domain, pool, condition, tasks, eval_voices
) -> list[ClipPlan]:
    """Train, validation and test clips of a set: training voices for train, `eval_voices` unseen voices for the rest."""
    by_id = {sentence.id: sentence for sentence in sentences(set_name, voice_language)}
    plans = []
    for rank, key in enumerate(ordered_split(set_name, "train")[: size.train]):
        for voice in range(size.voices_per_sentence):
            speaker = (rank * size.voices_per_sentence + voice) % size.train_speakers
            plans.append(_clip(language, voice_language, by_id[key], domain, "train", pool, speaker, condition, tasks))
    for split in ("validation", "test"):
        for rank, key in enumerate(ordered_split(set_name, split)[: getattr(size, split)]):
            for voice in range(eval_voices):
                speaker = size.train_speakers + (rank * eval_voices + voice) % size.eval_speakers
                plans.append(
                    _clip(language, voice_language, by_id[key], domain, split, pool, speaker, condition, tasks)
                )
    return plans


def _plan_test_only(
    size, sentences_, language, voice_language, domain, pool, condition, tasks, count
) -> list[ClipPlan]:
    """Test clips of evaluation-only sentences, spoken by voices never heard in training."""
    return [
        _clip(
            language,
            voice_language,
            sentence,
            domain,
            "test",
            pool,
            size.train_speakers + rank % size.eval_speakers,
            condition,
            tasks,
        )
        for rank, sentence in enumerate(sentences_[:count])
    ]


def _test_split(set_name: str, voice_language: str) -> list[Sentence]:
    """The test-split sentences of a set that a language's file has, in the set's fixed order."""
    by_id = {sentence.id: sentence for sentence in sentences(set_name, voice_language)}
    return [by_id[key] for key in ordered_split(set_name, "test") if key in by_id]


def _clip(language, voice_language, sentence, domain, split, pool, speaker, condition, tasks) -> ClipPlan:
    clip_id = f"{pool}-{sentence.id}-s{speaker:02d}"
    return ClipPlan(clip_id, language, voice_language, sentence, domain, split, pool, speaker, condition, tasks)
