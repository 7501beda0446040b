"""From the store to what a report is made of: `ScoreRow`s and the study's `StudyFacts`.

A merge's row is `selected` when its setting is the one its method chose on validation (the
store's `selections`); rows of base, experts, baselines and learned models (a study's `search:`
and `adamerging:` entries) are always selected.
"""

from __future__ import annotations

import json

from speechmerge.study.jobs import LEARNED_KINDS
from speechmerge.study.rows import EvaluationTime, ScoreRow, StudyFacts
from speechmerge.study.store import Store


def score_rows(store: Store, planned_only: bool = True) -> list[ScoreRow]:
    """Every finished score of the study as the report's rows."""
    chosen = store.selections()
    rows = []
    for r in store.scores(planned_only):
        selected = True
        if r["model_kind"] == "merge" and r["kind"] not in LEARNED_KINDS:  # a learned model is its entry's one result
            pick = chosen.get(r["method"])
            selected = pick is not None and json.dumps(pick["setting"], sort_keys=True) == json.dumps(
                r["setting"], sort_keys=True
            )
        rows.append(
            ScoreRow(
                job=r["job"],
                model_kind=r["model_kind"],
                model=r["model"],
                method=r["method"],
                setting=r["setting"] or {},
                stage=r["stage"],
                selected=selected,
                scope=r["scope"],
                evaluation=r["evaluation"],
                language=r["language"],
                task=r["task"],
                domain=r["domain"],
                metric=r["metric"],
                value=r["value"],
                utterances=r["utterances"],
                statistics=r.get("statistics"),
            )
        )
    return rows


def evaluation_times(jobs: list[dict]) -> dict[str, EvaluationTime]:
    """Per job kind, the models its jobs scored and their decoding (clips, seconds: each result's timing)."""
    times: dict[str, EvaluationTime] = {}
    for job in jobs:
        timing = (job.get("result") or {}).get("timing")
        if job["status"] == "done" and timing:
            seen = times.get(job["kind"], EvaluationTime(models=0, decoded=0, decode_seconds=0.0))
            times[job["kind"]] = EvaluationTime(
                models=seen.models + 1,
                decoded=seen.decoded + timing["decoded"],
                decode_seconds=seen.decode_seconds + timing["decode_seconds"],
            )
    return times


def study_facts(store: Store) -> StudyFacts:
    """How the study's numbers were made, from the store's meta and its jobs' times (summed per kind)."""
    meta = store.meta()
    job_seconds: dict[str, float] = {}
    jobs = store.jobs()
    for job in jobs:
        job_seconds[job["kind"]] = round(job_seconds.get(job["kind"], 0.0) + (job["seconds"] or 0.0), 1)
    return StudyFacts(
        name=meta["name"],
        recipe=meta["recipe"],
        recipe_path=meta["recipe_path"],
        command=meta["command"],
        hardware=meta["hardware"],
        executor=meta["executor"],
        started=meta["started"],
        finished=meta.get("finished"),
        wall_seconds=meta.get("wall_seconds") or 0.0,
        job_seconds=job_seconds,
        evaluation_time=evaluation_times(jobs),
        versions=meta.get("versions", {}),
        hyperparameters=meta.get("hyperparameters", {}),
        selection_rules={method: s["criterion"] or "" for method, s in store.selections().items()},
    )
