"""Build the built-in espeak-ng corpora once into the cache, and find their manifests.

Layout under the root (default `cache_dir("corpus")`):

    audio/<voice language>/<key[:2]>/<key>.wav     every clip, 16 kHz mono 16-bit, named by a hash
                                                   of what it is (text, voice, condition, seed)
    <name>-<size>-seed<seed>[-<options>]/
        corpus.json                                the index: options, domains, manifests
        manifests/<language>.<domain>.<split>.<task>.jsonl

Builds are deterministic from the seed and incremental: a clip whose file exists is never
spoken again (corpora of different sizes share their common clips), each clip is written
atomically, and a build's manifests and index appear together (temp dir + rename) at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel

from speechmerge.data.audio import audio_duration, write_wav
from speechmerge.data.conditions import apply_condition
from speechmerge.data.designs import (
    DOMAINS,
    UNSEEN,
    UNSEEN_DOMAIN,
    ClipPlan,
    CorpusSize,
    corpus_size,
    default_languages,
    plan_corpus,
)
from speechmerge.data.espeak import Voice, espeak_binary, speak, speaker_voice
from speechmerge.data.manifest import Utterance, read_manifest, write_manifest
from speechmerge.data.sentences import ordered_split, sentences
from speechmerge.errors import SpeechmergeError
from speechmerge.fsutil import atomic_directory, atomic_file
from speechmerge.progress import progress_bar

CORPUS_VERSION = 1
INDEX = "corpus.json"
BABBLE_TALKERS = 4
SENTENCES_PER_TALKER = 3


class ManifestInfo(BaseModel):
    """One manifest of a corpus: its labels, its path (relative to the corpus folder) and size."""

    language: str
    task: str
    domain: str
    split: str
    path: str
    utterances: int
    seconds: float


class CorpusIndex(BaseModel):
    """What `corpus.json` records about a build."""

    version: int
    plan: str  # digest of every clip and its labels: a changed design is rebuilt
    name: str
    size: str
    seed: int
    languages: list[str]
    domains: dict[str, str]
    manifests: list[ManifestInfo]


class Corpus:
    """A built corpus: select its manifests by language, task, domain and split."""

    def __init__(self, directory: Path, index: CorpusIndex):
        self.directory = Path(directory)
        self.index = index

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def languages(self) -> list[str]:
        return sorted({info.language for info in self.index.manifests})

    @property
    def domains(self) -> list[str]:
        return sorted({info.domain for info in self.index.manifests})

    def select(
        self,
        language: Optional[str] = None,
        task: Optional[str] = None,
        domain: Optional[str] = None,
        split: Optional[str] = None,
    ) -> list[ManifestInfo]:
        """Every manifest matching the given labels (None matches anything)."""
        wanted = {"language": language, "task": task, "domain": domain, "split": split}
        return [
            info
            for info in self.index.manifests
            if all(value is None or getattr(info, key) == value for key, value in wanted.items())
        ]

    def path(self, info: ManifestInfo) -> Path:
        """Absolute path of a manifest."""
        return self.directory / info.path

    def manifest(self, language: str, task: str, domain: str, split: str) -> Path:
        """The path of the one manifest with these labels; a clear error if the corpus has none."""
        found = self.select(language, task, domain, split)
        if not found:
            have = ", ".join(sorted({f"{i.language}/{i.task}/{i.domain}/{i.split}" for i in self.index.manifests}))
            raise SpeechmergeError(
                f"{self.directory}: no manifest for {language}/{task}/{domain}/{split}; this corpus has: {have}"
            )
        return self.path(found[0])

    def utterances(
        self,
        language: Optional[str] = None,
        task: Optional[str] = None,
        domain: Optional[str] = None,
        split: Optional[str] = None,
    ) -> list[Utterance]:
        """The utterances of every matching manifest, in index order."""
        return [
            utterance
            for info in self.select(language, task, domain, split)
            for utterance in read_manifest(self.path(info))
        ]


def open_corpus(directory: Path) -> Corpus:
    """A corpus built earlier, from its folder."""
    index_path = Path(directory) / INDEX
    if not index_path.is_file():
        raise SpeechmergeError(f"{directory}: not a built corpus (no {INDEX}); build one with `speechmerge data build`")
    try:
        index = CorpusIndex.model_validate_json(index_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SpeechmergeError(
            f"{index_path}: unreadable corpus index ({error}); rebuild it with `speechmerge data build`"
        ) from error
    return Corpus(Path(directory), index)


def corpus_folder_name(
    name: str, size: str | CorpusSize, seed: int, languages: Optional[Iterable[str]], domains: Optional[Iterable[str]]
) -> str:
    """`<name>-<size>-seed<seed>`, plus a short hash of any non-default choice of size, languages or domains."""
    label = size if isinstance(size, str) else "custom"
    options = {
        "size": None if isinstance(size, str) else asdict(corpus_size(size)),
        "languages": sorted(languages) if languages is not None else None,
        "domains": sorted(domains) if domains is not None else None,
    }
    base = f"{name}-{label}-seed{seed}"
    if all(value is None for value in options.values()):
        return base
    return f"{base}-{hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class _Job:
    plan: ClipPlan
    voice: Voice
    key: str
    path: Path


def build_corpus(
    name: str = "multilingual",
    size: str | CorpusSize = "demo",
    root: Optional[Path] = None,
    seed: int = 0,
    languages: Optional[Iterable[str]] = None,
    domains: Optional[Iterable[str]] = None,
    progress: bool = False,
    workers: Optional[int] = None,
    on_clip: Optional[Callable[[int, int], None]] = None,
) -> Corpus:
    """Build (or reuse) a corpus; return it. Only clips whose audio is missing are spoken.

    `languages`: multilingual: the X languages (English is always added); multidomain: the other
    languages measured out of domain. `domains`: a subset of the multidomain domains.
    `on_clip(done, total)` is called after each clip is spoken; `progress` shows a rich bar."""
    from speechmerge.cache import cache_dir

    spec = corpus_size(size)
    languages, domains = chosen_options(name, spec, languages, domains)
    plans = plan_corpus(name, spec, seed, languages, domains)
    root = Path(root) if root is not None else cache_dir("corpus")
    directory = root / corpus_folder_name(name, size, seed, languages, domains)
    jobs = [_job(plan, seed, root) for plan in plans]
    digest = _plan_digest(jobs)
    missing = [job for job in jobs if not job.path.is_file()]
    if not missing and _is_current(directory, digest):
        return open_corpus(directory)
    if missing:
        espeak_binary()
        _speak_all(missing, seed, workers or max(1, os.cpu_count() or 1), progress, on_clip)
    chosen = languages if languages is not None else default_languages(name, spec)
    index = _write_build(directory, name, size, seed, sorted({*chosen, "en"}), domains, jobs, digest)
    return Corpus(directory, index)


def chosen_options(
    name: str, size: CorpusSize, languages: Optional[Iterable[str]], domains: Optional[Iterable[str]]
) -> tuple:
    """Languages and domains as given, or None where they are the corpus's defaults (English and,
    for multidomain, Portuguese are always in), so that equal choices share one build folder."""
    implied = {"en"} if name == "multilingual" else {"en", "pt"}
    languages = tuple(sorted(set(languages) - implied)) if languages else None
    if languages is not None and languages == tuple(sorted(set(default_languages(name, size)) - implied)):
        languages = None
    domains = tuple(sorted(set(domains))) if domains else None
    if domains is not None and set(domains) == set(DOMAINS):
        domains = None
    return languages, domains


def _plan_digest(jobs: list[_Job]) -> str:
    labels = [
        (job.key, job.plan.id, job.plan.language, job.plan.domain, job.plan.split, job.plan.tasks) for job in jobs
    ]
    return hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16]


def _is_current(directory: Path, digest: str) -> bool:
    try:
        index = open_corpus(directory).index
    except SpeechmergeError:
        return False
    return index.version == CORPUS_VERSION and index.plan == digest


def _job(plan: ClipPlan, seed: int, root: Path) -> _Job:
    condition = plan.condition
    voice = speaker_voice(
        plan.voice_language, plan.pool, plan.speaker, seed, condition.speed_factor, condition.pitch_shift
    )
    what = {
        "version": CORPUS_VERSION,
        "text": plan.sentence.text,
        "voice": voice.arguments(),
        "condition": condition.as_dict(),
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]
    return _Job(plan, voice, key, root / "audio" / plan.voice_language / key[:2] / f"{key}.wav")


def _speak_all(jobs: list[_Job], seed: int, workers: int, progress: bool, on_clip) -> None:
    """Speak every job's clip, `workers` espeak-ng processes at a time."""
    talkers = _BabbleTalkers(seed)

    def render(job: _Job) -> None:
        speech = speak(job.plan.sentence.text, job.voice)
        rng = np.random.default_rng(int(job.key[:16], 16))
        babble = talkers.get(job.plan.voice_language) if job.plan.condition.noise == "babble" else ()
        write_wav(job.path, apply_condition(speech, job.plan.condition, rng, babble))

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("speaking clips (espeak-ng)", total=len(jobs))
            for done, _ in enumerate(pool.map(render, jobs), start=1):
                bar.update(task, completed=done)
                if on_clip:
                    on_clip(done, len(jobs))
    finally:  # on an error or Ctrl-C, clips not yet started are dropped (finished ones are kept)
        pool.shutdown(wait=True, cancel_futures=True)


class _BabbleTalkers:
    """Per voice language, a few talkers each reading several training sentences: the babble noise sources."""

    def __init__(self, seed: int):
        self.seed = seed
        self.lock = threading.Lock()
        self.cache: dict[str, list[np.ndarray]] = {}

    def get(self, voice_language: str) -> list[np.ndarray]:
        with self.lock:
            if voice_language not in self.cache:
                self.cache[voice_language] = self._speak(voice_language)
            return self.cache[voice_language]

    def _speak(self, voice_language: str) -> list[np.ndarray]:
        by_id = {sentence.id: sentence for sentence in sentences("general", voice_language)}
        chosen = [by_id[key] for key in ordered_split("general", "train") if key in by_id][
            -BABBLE_TALKERS * SENTENCES_PER_TALKER :
        ]
        talkers = []
        for talker in range(BABBLE_TALKERS):
            voice = speaker_voice(voice_language, f"{voice_language}-babble", talker, self.seed)
            lines = chosen[talker * SENTENCES_PER_TALKER : (talker + 1) * SENTENCES_PER_TALKER]
            talkers.append(np.concatenate([speak(sentence.text, voice) for sentence in lines]))
        return talkers


def _write_build(
    directory: Path, name: str, size, seed: int, languages: list[str], domains, jobs: list[_Job], digest: str
) -> CorpusIndex:
    """Write every manifest and the index into a temporary folder, then rename it into place."""
    groups: dict[tuple[str, str, str, str], list[Utterance]] = defaultdict(list)
    for job in jobs:
        plan = job.plan
        duration = audio_duration(job.path)
        for task in plan.tasks:
            groups[(plan.language, task, plan.domain, plan.split)].append(
                Utterance(
                    id=plan.id,
                    audio=job.path.resolve(),
                    text=plan.sentence.text,
                    translation=None if plan.language == "en" else plan.sentence.translation,
                    language=plan.language,
                    task=task,
                    domain=plan.domain,
                    split=plan.split,
                    speaker=plan.speaker_label,
                    duration=duration,
                )
            )
    infos = []
    with atomic_directory(directory, force=True) as tmp:
        for (language, task, domain, split), utterances in groups.items():
            relative = f"manifests/{language}.{domain}.{split}.{task}.jsonl"
            write_manifest(tmp / relative, utterances, relative_audio=True)
            seconds = round(sum(u.duration for u in utterances), 2)
            infos.append(
                ManifestInfo(
                    language=language,
                    task=task,
                    domain=domain,
                    split=split,
                    path=relative,
                    utterances=len(utterances),
                    seconds=seconds,
                )
            )
        index = CorpusIndex(
            version=CORPUS_VERSION,
            plan=digest,
            name=name,
            size=size if isinstance(size, str) else "custom",
            seed=seed,
            languages=languages,
            domains=_domain_descriptions(name, domains),
            manifests=infos,
        )
        with atomic_file(tmp / INDEX) as index_tmp:
            index_tmp.write_text(index.model_dump_json(indent=2), encoding="utf-8")
    return index


def _domain_descriptions(name: str, domains) -> dict[str, str]:
    if name == "multilingual":
        return {
            "general": "everyday sentences; clean",
            "heldout": "questions, dialogue, headlines, instructions (test only); clean",
        }
    described = {
        domain: f"{DOMAINS[domain].topic}; {DOMAINS[domain].condition.describe()}" for domain in (domains or DOMAINS)
    }
    described[UNSEEN_DOMAIN] = f"{UNSEEN.topic}; {UNSEEN.condition.describe()}"
    described["general"] = "everyday sentences (test only); clean"
    described["general-br"] = "everyday sentences in Brazilian Portuguese, espeak pt-br (test only); clean"
    return described
