"""A study's data: the experts' training selections and the evaluation sets of each stage and scope.

For a built-in corpus the scopes follow from the experts (docs/study.md):

- validation: the `validation` split of every (language, task, domain) an expert trains on;
- in-domain test: the `test` split of those groups;
- out-of-domain test: other `test` groups in the experts' languages and tasks (held-out styles,
  an unseen domain, Brazilian Portuguese);
- retention test: `test` groups in languages no expert trains on (English, other languages).

With manifests, the recipe names each set's role. Every set is digested (its manifest bytes and
the utterance limit) so that jobs scored on it are keyed by what they read.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.study.recipe import StudyRecipe
from speechmerge.training.selection import DataSelection

LABELS = ("language", "task", "domain")


@dataclass(frozen=True)
class ExpertGroup:
    """One expert to train (or given): what it covers, and where its data comes from."""

    name: str
    selection: DataSelection
    path: str | None = None  # given experts: the model reference

    def covers(self, language: str, task: str, domain: str | None) -> bool:
        return self.selection.keeps(language, task, domain)


GroupLabels = tuple[str, str, str, str]  # (language, task, domain, split), "-" for a missing label


@dataclass(frozen=True)
class EvalSet:
    """One manifest scored in one stage and scope (its first `limit` utterances), under a name of
    its own: a job scores each of its sets apart, so two sets with the same labels stay two."""

    name: str
    path: str
    stage: str
    scope: str
    limit: int | None
    digest: str
    labels: frozenset[GroupLabels]  # the (language, task, domain, split) groups it holds

    def spec(self) -> dict:
        return {"name": self.name, "path": self.path, "stage": self.stage, "scope": self.scope, "limit": self.limit}


@dataclass(frozen=True)
class StudyData:
    experts: list[ExpertGroup]
    sets: list[EvalSet]
    sources: tuple[Path, ...]  # what the experts' selections read
    training_digest: dict[str, str]  # expert name -> digest of its training manifests

    def stage(self, stage: str) -> list[EvalSet]:
        return [s for s in self.sets if s.stage == stage]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare_data(recipe: StudyRecipe, progress: bool = True) -> StudyData:
    """Build (or reuse) the corpus and work out experts and evaluation sets."""
    if recipe.corpus.builtin:
        return _builtin(recipe, progress)
    return _from_manifests(recipe)


def _builtin(recipe: StudyRecipe, progress: bool) -> StudyData:
    from speechmerge.data.corpus import build_corpus

    spec = recipe.corpus
    corpus = build_corpus(
        spec.builtin, spec.size, seed=spec.seed, languages=spec.languages, domains=spec.domains, progress=progress
    )
    train_infos = [i for i in corpus.index.manifests if i.split == "train"]
    groups = _expert_groups(recipe, [(i.language, i.task, i.domain) for i in train_infos], (corpus.directory,))
    evaluation = recipe.evaluation
    sets = []
    for info in corpus.index.manifests:
        covered = any(g.covers(info.language, info.task, info.domain) for g in groups)
        if info.split == "validation" and covered:
            scope, stage, limit = "in_domain", "validation", evaluation.validation_utterances
        elif info.split == "test":
            stage, limit = "test", evaluation.test_utterances
            scope = (
                "in_domain"
                if covered
                else "out_of_domain"
                if same_languages_tasks(groups, info.language, info.task)
                else "retention"
            )
        else:
            continue
        path = corpus.path(info)
        labels = frozenset({(info.language, info.task, info.domain or "-", info.split or "-")})
        sets.append(EvalSet(Path(info.path).stem, str(path), stage, scope, limit, _set_digest(path, limit), labels))
    digests = {
        g.name: _digest_files(
            corpus.path(i)
            for i in corpus.index.manifests
            if i.split in ("train", "validation") and g.covers(i.language, i.task, i.domain)
        )
        for g in groups
    }
    return StudyData(groups, sets, (corpus.directory,), digests)


def same_languages_tasks(groups: list[ExpertGroup], language: str, task: str) -> bool:
    """Whether some expert trains on this language and task (in whatever domain)."""
    return any(
        (not g.selection.languages or language in g.selection.languages)
        and (not g.selection.tasks or task in g.selection.tasks)
        for g in groups
    )


def _from_manifests(recipe: StudyRecipe) -> StudyData:
    from speechmerge.data.manifest import read_manifest

    sets_spec = recipe.corpus.manifests
    train = tuple(Path(p) for p in sets_spec.train)
    labels = {
        (u.language, u.task, u.domain)
        for path in train
        for u in read_manifest(_existing(path, recipe, "corpus.manifests.train"))
    }
    groups = _expert_groups(recipe, sorted(labels, key=str), train)
    evaluation = recipe.evaluation
    roles = [
        ("validation", "validation", "in_domain", evaluation.validation_utterances),
        ("test", "test", "in_domain", evaluation.test_utterances),
        ("out_of_domain", "test", "out_of_domain", evaluation.test_utterances),
        ("retention", "test", "retention", evaluation.test_utterances),
    ]
    chosen = [
        (_existing(Path(text), recipe, f"corpus.manifests.{role}"), stage, scope, limit)
        for role, stage, scope, limit in roles
        for text in getattr(sets_spec, role)
    ]
    paths = [path for path, *_ in chosen]
    repeated = next((p for p in paths if paths.count(p) > 1), None)
    if repeated is not None:
        raise SpeechmergeError(
            f"{recipe.source}: corpus.manifests: {str(repeated)!r} is listed twice; give each manifest one role"
        )
    names = set_names(paths)
    sets = [
        EvalSet(name, str(path), stage, scope, limit, _set_digest(path, limit), _labels_of(path, limit))
        for name, (path, stage, scope, limit) in zip(names, chosen)
    ]
    digests = {g.name: _digest_files(train) for g in groups}
    return StudyData(groups, sets, train, digests)


def set_names(paths: list[Path]) -> list[str]:
    """A distinct name per manifest: its file stem, with its folder where two stems are the same,
    its whole path where even those are."""
    stems = [p.stem for p in paths]
    folders = [f"{p.parent.name}/{p.stem}" for p in paths]
    return [
        stem if stems.count(stem) == 1 else folder if folders.count(folder) == 1 else str(path)
        for path, stem, folder in zip(paths, stems, folders)
    ]


def _labels_of(path: Path, limit: int | None) -> frozenset[GroupLabels]:
    return frozenset(
        (u.language, u.task, u.domain or "-", u.split or "-") for u in load_set({"path": str(path), "limit": limit})
    )


def _existing(path: Path, recipe: StudyRecipe, key: str) -> Path:
    if not path.is_file():
        raise SpeechmergeError(
            f"{recipe.source}: {key}: manifest {str(path)!r} not found; fix the path (relative to the current directory)"
        )
    return path


def _expert_groups(
    recipe: StudyRecipe, labels: list[tuple[str, str, str | None]], sources: tuple[Path, ...]
) -> list[ExpertGroup]:
    """One group per distinct value of the `per` labels among the training data the filters keep,
    in the order of the recipe's filter lists; then the given experts."""
    spec = recipe.experts
    filters = {"language": spec.languages, "task": spec.tasks, "domain": spec.domains}
    groups: list[ExpertGroup] = []
    if spec.train:
        kept = [
            dict(zip(LABELS, label))
            for label in labels
            if all(filters[name] is None or value in filters[name] for name, value in zip(LABELS, label))
            and (filters["language"] is not None or label[0] != "en")
        ]
        if not kept:
            raise SpeechmergeError(
                f"{recipe.source}: experts: no training data matches the filters (languages/tasks/domains); the corpus has {sorted(set(labels), key=str)}"
            )
        keys = sorted(
            {tuple(item[name] for name in spec.per) for item in kept}, key=lambda key: _rank(key, spec.per, filters)
        )
        for key in keys:
            values = dict(zip(spec.per, key))
            # labels not split on are the kept training data's values, so that test-only domains stay out of domain
            chosen = {
                name: _filter_values([values[name]] if name in values else [k[name] for k in kept]) for name in LABELS
            }
            selection = DataSelection(
                sources=sources, languages=chosen["language"], tasks=chosen["task"], domains=chosen["domain"]
            )
            groups.append(ExpertGroup("-".join(str(v) for v in key), selection))
    for given in spec.given:
        selection = DataSelection(
            sources=sources, languages=tuple(given.languages), tasks=tuple(given.tasks), domains=tuple(given.domains)
        )
        groups.append(ExpertGroup(given.name, selection, path=given.path))
    names = [g.name for g in groups]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpeechmergeError(
            f"{recipe.source}: experts: two experts are called {repeated[0]!r}; rename the given one"
        )
    return groups


def _filter_values(values: list[str | None]) -> tuple[str, ...]:
    """A DataSelection filter keeping these values; unlabelled data (None) makes it keep anything."""
    return () if None in values else tuple(sorted(set(values)))


def _rank(key: tuple, per: list[str], filters: dict) -> tuple:
    ranks = []
    for name, value in zip(per, key):
        given = filters[name] or []
        ranks.append((given.index(value), "") if value in given else (len(given), str(value)))
    return tuple(ranks)


def _set_digest(path: Path, limit: int | None) -> str:
    return hashlib.sha256(f"{file_digest(path)}:{limit}".encode()).hexdigest()


def _digest_files(paths) -> str:
    return hashlib.sha256("".join(sorted(file_digest(p) for p in paths)).encode()).hexdigest()


def load_set(spec: dict):
    """The utterances of an evaluation set spec (the first `limit` of its manifest)."""
    from speechmerge.data.manifest import read_manifest

    utterances = read_manifest(Path(spec["path"]))
    return list(itertools.islice(utterances, spec["limit"]))
