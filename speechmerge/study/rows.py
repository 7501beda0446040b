"""What a study's store hands to its report: one row per metric of one model on one evaluation group.

The contract between the study runner (which fills the store) and the report (which only reads these
rows and the study's facts); neither looks inside the other.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

ModelKind = Literal["base", "expert", "baseline", "merge"]
Stage = Literal["validation", "test"]
Scope = Literal["in_domain", "out_of_domain", "retention"]


class ScoreRow(BaseModel):
    """One metric of one model on one (language, task, domain) group of one evaluation set.

    `scope` says what the set measures: `in_domain` the experts' own languages/tasks/domains on new
    sentences; `out_of_domain` the same languages/tasks on another style, accent or an unseen domain;
    `retention` what the base could do that no expert was trained for (English, other languages).
    `selected` marks, for a merge, the setting its method chose on validation (always True otherwise).
    """

    job: str
    model_kind: ModelKind
    model: str
    method: Optional[str] = None
    setting: dict[str, Any] = Field(default_factory=dict)
    stage: Stage
    selected: bool = True
    scope: Scope
    evaluation: str
    language: str
    task: str
    domain: str = "-"
    metric: str
    value: float
    utterances: int
    statistics: Optional[dict[str, Any]] = None  # per-utterance: speechmerge.evaluation.statistics.UtteranceStatistics


class EvaluationTime(BaseModel):
    """Decoding done by the evaluation jobs of one kind: models scored, clips decoded, seconds."""

    models: int
    decoded: int
    decode_seconds: float


class StudyFacts(BaseModel):
    """What a report states about how its numbers were made."""

    name: str
    recipe: dict[str, Any]
    recipe_path: str
    command: str
    hardware: str
    executor: str
    started: str
    finished: Optional[str] = None
    wall_seconds: float
    job_seconds: dict[str, float] = Field(default_factory=dict)
    evaluation_time: dict[str, EvaluationTime] = Field(default_factory=dict)  # job kind -> its decoding
    versions: dict[str, str] = Field(default_factory=dict)
    hyperparameters: dict[str, list[str]] = Field(default_factory=dict)
    selection_rules: dict[str, str] = Field(default_factory=dict)  # method -> the rule that chose its setting
