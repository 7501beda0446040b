"""`evaluate(model, data, options) -> EvalResult`: one model on any manifests, scored as papers do.

`data` is any mix of manifest files (.jsonl/.csv), built corpus folders (every manifest of the
corpus, optionally filtered by labels) and lists of `Utterance`s. Predictions come from the
prediction cache where possible; the result carries per-utterance predictions, metrics per
(language, task, domain, split), macro averages, the sacrebleu signatures and timings.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel

from speechmerge.data.manifest import Utterance
from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.options import EvalOptions
from speechmerge.evaluation.scoring import GroupScore, MacroScore, Prediction

DataSource = Union[str, Path, Sequence[Utterance]]


@dataclass(frozen=True)
class LabelFilter:
    """Keep utterances whose labels are among the given values (None keeps every value)."""

    language: Optional[tuple[str, ...]] = None
    task: Optional[tuple[str, ...]] = None
    domain: Optional[tuple[str, ...]] = None
    split: Optional[tuple[str, ...]] = None

    def keeps(self, labelled) -> bool:
        """True if `labelled` (an `Utterance` or a corpus `ManifestInfo`) matches every label given."""
        return all(values is None or getattr(labelled, name) in values for name, values in vars(self).items())


class Timing(BaseModel):
    """Where the evaluation's time went (seconds, wall clock)."""

    utterances: int
    decoded: int
    from_cache: int
    load_seconds: float
    decode_seconds: float
    score_seconds: float
    seconds_per_decoded_clip: Optional[float] = None
    encoder_batches: int


class EvalResult(BaseModel):
    """Everything one evaluation produced."""

    model: str
    model_path: str
    model_key: str
    options: EvalOptions
    data: list[str]
    predictions: list[Prediction]
    groups: list[GroupScore]
    macro: list[MacroScore]
    bleu_signature: Optional[str] = None
    chrf_signature: Optional[str] = None
    timing: Timing

    def scores(self, metric: str, split: Optional[str] = None) -> dict[str, float]:
        """`{"language/task[/domain]": value}` of one metric, for normalised performance and tables.

        Groups are keyed by language and task, plus the domain when the data has several; with
        `split` only that split's groups count (otherwise every split must be the same)."""
        groups = [g for g in self.groups if (split is None or g.split == split) and g.metric(metric) is not None]
        domains = len({g.domain for g in groups}) > 1
        out: dict[str, float] = {}
        for group in groups:
            key = f"{group.language}/{group.task}" + (f"/{group.domain}" if domains else "")
            if key in out:
                raise SpeechmergeError(
                    f"{self.model}: several splits give {metric} for {key}; choose one split (e.g. split='test')"
                )
            out[key] = group.metric(metric)
        return out


def load_data(
    data: Iterable[DataSource], skip_bad: bool = False, labels: LabelFilter = LabelFilter()
) -> list[tuple[str, Utterance]]:
    """(source name, utterance) pairs from manifests, corpus folders and utterance lists."""
    from speechmerge.data.corpus import open_corpus
    from speechmerge.data.manifest import read_manifest

    items: list[tuple[str, Utterance]] = []
    for source in data:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                corpus = open_corpus(path)
                manifests = [corpus.path(info) for info in corpus.select() if labels.keeps(info)]
                if not manifests:
                    raise SpeechmergeError(f"{path}: no manifest of this corpus matches the label filters; relax them")
            else:
                manifests = [path]
            for manifest in manifests:
                items += [(str(manifest), u) for u in read_manifest(manifest, skip_bad=skip_bad) if labels.keeps(u)]
        else:
            items += [("<utterances>", u) for u in source if labels.keeps(u)]
    if not items:
        raise SpeechmergeError("no utterance to evaluate: the data is empty or no utterance matches the label filters")
    seen: dict[tuple[str, str], str] = {}
    for name, utterance in items:
        key = (utterance.id, utterance.task)
        if key in seen:
            raise SpeechmergeError(
                f"{name}: utterance id {utterance.id!r} ({utterance.task}) also appears in {seen[key]}; "
                "ids must be unique across the data of one evaluation"
            )
        seen[key] = name
    return items


def evaluate(
    model: str | Path,
    data: Iterable[DataSource],
    options: EvalOptions = EvalOptions(),
    skip_bad: bool = False,
    labels: LabelFilter = LabelFilter(),
    progress: bool = False,
) -> EvalResult:
    """Decode every utterance of `data` with `model` (cached) and score the predictions."""
    from speechmerge.evaluation.decoding import decode_utterances
    from speechmerge.evaluation.model import check_data, open_eval_model
    from speechmerge.evaluation.scoring import add_intervals, group_scores, macro_scores, score_prediction

    eval_model = open_eval_model(model)
    items = load_data(data, skip_bad=skip_bad, labels=labels)
    utterances = [u for _, u in items]
    check_data(eval_model, ((u.language, u.task, f"{name}: id {u.id!r}") for name, u in items))
    decoded, stats = decode_utterances(
        eval_model, utterances, options.decode, use_cache=options.prediction_cache, progress=progress
    )
    start = time.perf_counter()
    predictions = [score_prediction(u, name, d, options.cer) for (name, u), d in zip(items, decoded)]
    groups, signatures = group_scores(predictions)
    macro = macro_scores(groups)
    add_intervals(groups, macro, predictions, confidence=options.confidence)
    result = EvalResult(
        model=eval_model.label,
        model_path=str(eval_model.directory),
        model_key=eval_model.key,
        options=options,
        data=sorted({name for name, _ in items}),
        predictions=predictions,
        groups=groups,
        macro=macro,
        bleu_signature=signatures.get("bleu"),
        chrf_signature=signatures.get("chrf"),
        timing=Timing(
            utterances=len(utterances),
            decoded=stats.decoded,
            from_cache=stats.from_cache,
            load_seconds=stats.load_seconds,
            decode_seconds=stats.decode_seconds,
            score_seconds=0.0,
            seconds_per_decoded_clip=stats.seconds_per_clip if stats.decoded else None,
            encoder_batches=stats.encoder_batches,
        ),
    )
    result.timing.score_seconds = time.perf_counter() - start
    return result
