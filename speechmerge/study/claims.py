"""A study's `claims:`: statements from a paper, each decided on the test sets by a paired test.

A claim says that a model (or the best of several) beats another model (or the best of several)
on one main-table column, optionally by more than a margin in that column's units:

    claims:
      - {text: "BoostedTSV-M beats TSV-M in-domain", better: boosted_tsv_m, than: tsv_m, column: ID WER}
      - {text: "subspace methods best in-domain", better: [tsv_m, iso_c], than: [ties, task_arithmetic],
         column: ID WER}
      - {text: "LoRS beats joint by > 20 %", better: lors, than: joint, column: norm. vs experts, margin: 20}

For each claim, A is the `better` model with the best observed score on the column and B the
`than` model with the best; the effect is A − B (signed so that positive means A is better),
with its paired bootstrap interval (both on the same resamples of the same utterances, the main
table's stratified bootstrap) and two-sided p-value; the p-values of every claim of the study
are Holm-adjusted together (one family). The verdict:

- supported: A is better, the adjusted p is below α, and the interval's lower end exceeds the margin;
- better, margin not shown: as supported, but the interval reaches below the margin;
- contradicted: B is significantly better (adjusted p below α);
- not decided: anything else (no significant difference at this test-set size).

Picking A and B as the best observed of a list favours the list's best member on the test sets;
the report names the members it picked so the reader can judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from speechmerge.errors import SpeechmergeError
from speechmerge.study.summary import METRICS, NORMALISED
from speechmerge.validation import Strict

SCOPE_PREFIXES = ("ID", "OOD", "ret. en", "ret. other")
NORMALISED_VERSUS = ("vs experts", "gain kept", "vs base")  # and "vs <baseline>" for each baseline
REFERENCE_NAMES = ("base", "experts")
VERDICTS = ("supported", "better, margin not shown", "contradicted", "not decided")


class ClaimSpec(Strict):
    """One `claims:` entry."""

    text: str = Field(min_length=1, description="the claim, as the paper states it")
    better: list[str] = Field(
        min_length=1, description="the model(s) claimed better: methods, baselines, base, experts"
    )
    than: list[str] = Field(min_length=1, description="the model(s) claimed worse")
    column: str = Field(description="a main-table column: 'ID WER', 'OOD BLEU', 'ret. en WER', 'norm. vs experts', ...")
    margin: float = Field(0.0, ge=0.0, description="the claimed lead, in the column's units (points or %)")

    @field_validator("better", "than", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def claim_columns(baselines: list[str]) -> list[str]:
    """Every main-table column a claim may name (the label without its unit and arrow)."""
    scoped = [f"{prefix} {style.label}" for prefix in SCOPE_PREFIXES for style in METRICS.values()]
    versus = [*NORMALISED_VERSUS, *(f"vs {name}" for name in baselines)]
    return scoped + [f"{NORMALISED.label} {name}" for name in versus]


def check_claims(claims: list[ClaimSpec], models: list[str], baselines: list[str], where: str) -> None:
    """Refuse, in one line, a claim naming a model the study does not have or a column it cannot show."""
    known = [*models, *baselines, *REFERENCE_NAMES]
    columns = claim_columns(baselines)
    for index, claim in enumerate(claims):
        at = f"{where}: claims[{index}] ({claim.text!r})"
        for name in (*claim.better, *claim.than):
            if name not in known:
                raise SpeechmergeError(f"{at}: {name!r} is not a model of this study; name one of {', '.join(known)}")
        if overlap := set(claim.better) & set(claim.than):
            raise SpeechmergeError(f"{at}: {', '.join(sorted(overlap))} on both sides; a claim compares two sides")
        if claim.column not in columns:
            raise SpeechmergeError(
                f"{at}: column {claim.column!r} is not a main-table column; name one of {', '.join(columns)}"
            )


@dataclass(frozen=True)
class ClaimResult:
    """A claim as tested: the two models picked, their scores, the effect and the verdict."""

    claim: ClaimSpec
    better: str
    than: str
    scores: tuple  # (A's Average value, B's, A's resampled values, B's)
    test: Any  # evaluation.bootstrap.PairedBootstrap of B's side minus A's, as `paired_bootstrap` gives it
    adjusted: float
    effect: float  # A − B, positive when A is better
    low: float  # the effect's interval, same sign convention
    high: float
    verdict: str


def _best(names: list[str], find: Callable, compute: Callable, higher_is_better: bool):
    """The named line with the best observed value (None if none is scored)."""
    scored = [(line, compute(line)) for line in map(find, names) if line is not None]
    scored = [(line, value) for line, value in scored if value is not None]
    if not scored:
        return None
    return max(scored, key=lambda item: item[1].value if higher_is_better else -item[1].value)[0]


def decide_claims(
    claims: list[ClaimSpec],
    find: Callable[[str], Any],
    columns: dict[str, tuple[Callable, Callable, bool, bool]],
    confidence: float,
) -> list[ClaimResult | None]:
    """Each claim tested (None where a side or the column is not scored yet). `find(name)` gives a
    test-stage line; `columns[label]` = (compute Average, resampled values, percent, higher is better)."""
    from speechmerge.evaluation.bootstrap import paired_bootstrap
    from speechmerge.evaluation.significance import holm

    alpha = 1 - confidence
    tested: list[tuple[int, ClaimSpec, Any, Any, tuple, Any, bool, bool]] = []
    for index, claim in enumerate(claims):
        if claim.column not in columns:
            continue
        compute, samples, percent, higher = columns[claim.column]
        a = _best(claim.better, find, compute, higher)
        b = _best(claim.than, find, compute, higher)
        if a is None or b is None or samples(a) is None or samples(b) is None:
            continue
        scores = (compute(a).value, compute(b).value, samples(a), samples(b))
        test = paired_bootstrap(scores[1], scores[0], scores[3], scores[2], higher, confidence)
        tested.append((index, claim, a, b, scores, test, percent, higher))
    adjusted = holm([t[5].p_value for t in tested])
    results: list[ClaimResult | None] = [None] * len(claims)
    for (index, claim, a, b, scores, test, percent, higher), p in zip(tested, adjusted):
        sign, scale = (1 if higher else -1), (100 if percent else 1)
        ends = sorted(sign * scale * end + 0.0 for end in (test.interval.low, test.interval.high))  # no -0.0
        effect = sign * scale * test.difference + 0.0
        if p < alpha and effect > 0:
            verdict = VERDICTS[0] if ends[0] > claim.margin else VERDICTS[1]
        elif p < alpha:
            verdict = VERDICTS[2]
        else:
            verdict = VERDICTS[3]
        results[index] = ClaimResult(claim, a.name, b.name, scores, test, p, effect, ends[0], ends[1], verdict)
    return results


def describe_missing(claim: ClaimSpec, columns: dict) -> str:
    """Why an untested claim has no verdict."""
    if claim.column not in columns:
        return f"column {claim.column} is not in this study's main table"
    return "a side is not scored on the test sets yet"
