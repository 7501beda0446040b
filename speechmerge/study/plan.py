"""A study's jobs, laid out from its recipe: experts, baselines, reference scores, the grid on
validation, and the test job of a selected point.

Every job is content-addressed (speechmerge/study/jobs.py): its key is built from the identities
of its input models, the digests of the data it reads and its settings. A merge's identity is
its method, parameters, base, experts and merge options (and, for a data-aware method, the
statistics settings); an evaluation's is the decoding options and the sets it scores
(`set_identity`). Data-aware methods' merges wait for one statistics job per expert
(speechmerge/study/statistics.py).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from speechmerge.errors import SpeechmergeError
from speechmerge.study.claims import check_claims
from speechmerge.study.data import EvalSet, StudyData, prepare_data, same_languages_tasks
from speechmerge.study.jobs import Job, job_key
from speechmerge.study.recipe import StudyRecipe, method_grid

MODEL_FOLDERS = {"expert": "experts", "baseline": "baselines", "merge": "merges"}


@dataclass(frozen=True)
class ModelRef:
    """A model the study scores or merges: its label, identity (for keys), path and making job."""

    name: str
    identity: str
    path: str
    job: str | None = None


@dataclass
class StudyPlan:
    """The jobs of a study up to validation, and what its test jobs are built from."""

    recipe: StudyRecipe
    folder: Path
    data: StudyData
    base: ModelRef
    experts: list[ModelRef]
    training: list[Job]
    references: list[Job]
    validation: list[Job]
    grid: dict[str, list[dict]]
    statistics: list[Job] = field(default_factory=list)
    statistics_data: dict[str, Path] = field(default_factory=dict)  # expert -> manifest of its statistics data

    @property
    def jobs(self) -> list[Job]:
        """Every job up to validation, in queue order."""
        return self.training + self.statistics + self.references + self.validation

    def eval_options(self) -> dict:
        spec = self.recipe.evaluation
        decode = {
            # torch: greedy from the cached encoder outputs, the reference's text (docs/evaluation.md, "Backends")
            "backend": spec.backend or ("torch" if spec.beam_size == 1 else "transformers"),
            "quantization": spec.quantization,
            "beam_size": spec.beam_size,
            "batch_size": spec.batch_size,
            "max_new_tokens": spec.max_new_tokens,
        }
        if spec.cross_attention != "keys":  # named only when set, so existing studies keep their keys
            decode["cross_attention"] = spec.cross_attention
        return {"decode": decode, "cer": spec.cer}

    def eval_identity(self) -> dict:
        from speechmerge.evaluation.options import DecodeOptions

        options = self.eval_options()
        return {"predictions": DecodeOptions(**options["decode"]).prediction_key(), "cer": options["cer"]}


def plan_study(recipe: StudyRecipe, progress: bool = True) -> StudyPlan:
    """Validate the grid, build the data, and lay out every job up to validation."""
    from speechmerge.study.statistics import data_aware_grid, write_statistics_manifest

    grid = method_grid(recipe)
    check_claims(recipe.claims, list(grid), recipe.baselines.enabled, recipe.source)
    data = prepare_data(recipe, progress=progress)
    statistics_data = data_aware_grid(grid, recipe, data.experts)
    base = ModelRef("base", _content_hash(recipe.base, recipe, "base"), recipe.base)
    plan = StudyPlan(recipe, recipe.folder(), data, base, [], [], [], [], grid)
    expert_jobs = _expert_jobs(plan)
    plan.training = interleaved_by_audio(expert_jobs)
    plan.statistics_data = {
        name: write_statistics_manifest(plan.folder, name, utterances) for name, utterances in statistics_data.items()
    }
    plan.statistics = _statistics_jobs(plan)
    baselines = _baseline_jobs(plan)
    plan.training += baselines
    references = [
        (base, "base"),
        *((e, "expert") for e in plan.experts),
        *((ModelRef(j.model, j.key, j.spec["output"], j.key), "baseline") for j in baselines),
    ]
    plan.references = [_reference_job(plan, ref, kind) for ref, kind in references]
    validation_sets = data.stage("validation")
    for method, points in grid.items():
        for point in points:
            key = job_key(
                "validate",
                merge=_merge_identity(plan, method, point),
                **set_identity(validation_sets),
                evaluation=plan.eval_identity(),
            )
            # a method's only point is surely the one its test scores: its model stays for the test job
            keep = recipe.keep_models == "all" or len(points) == 1
            label = setting_label(method, point, points)
            plan.validation.append(_merge_job(plan, "validate", key, method, point, label, validation_sets, keep))
    return plan


def _expert_jobs(plan: StudyPlan) -> list[Job]:
    """Records every expert in `plan.experts`; returns the training jobs of those not given."""
    recipe, data = plan.recipe, plan.data
    config = recipe.experts.config().model_dump(mode="json")
    jobs = []
    for group in data.experts:
        if group.path is not None:
            identity = _content_hash(group.path, recipe, f"experts.given {group.name}")
            plan.experts.append(ModelRef(group.name, identity, group.path))
            continue
        selection = group.selection.model_dump(mode="json")
        key = job_key(
            "expert",
            base=plan.base.identity,
            data=data.training_digest[group.name],
            selection=_labels(selection),
            config=config,
        )
        output = plan.folder / MODEL_FOLDERS["expert"] / f"{group.name}-{key[:8]}"
        spec = {"base": recipe.base, "selection": selection, "config": config, "output": str(output)}
        jobs.append(
            Job(key, "expert", f"expert {group.name}", "train_expert", spec, model_kind="expert", model=group.name)
        )
        plan.experts.append(ModelRef(group.name, key, str(output), key))
    return jobs


def statistics_settings(plan: StudyPlan, needs: tuple[str, ...]) -> dict:
    """The `StatisticsSettings` (as JSON) of the statistics a method with `needs` reads: those the
    merge API builds from the merge recipe's `data_statistics`, so both meet in the cache."""
    from speechmerge.datastats import StatisticsSettings

    spec = plan.recipe.data_statistics
    settings = StatisticsSettings(
        statistics=tuple(sorted(needs)), utterances=spec.utterances, seed=spec.seed, batch_size=spec.batch_size
    )
    return settings.model_dump(mode="json")


def _needs(method: str) -> tuple[str, ...]:
    from speechmerge.merging.registry import get_method

    return tuple(sorted(get_method(method).needs))


def _statistics_key(plan: StudyPlan, expert: ModelRef, needs: tuple[str, ...]) -> str:
    group = next(g for g in plan.data.experts if g.name == expert.name)
    return job_key(
        "statistics",
        model=expert.identity,
        base=plan.base.identity,
        data=plan.data.training_digest[expert.name],
        selection=_labels(group.selection.model_dump(mode="json")),
        settings=statistics_settings(plan, needs),
    )


def _statistics_jobs(plan: StudyPlan) -> list[Job]:
    """One job per expert and statistic kind the grid's data-aware methods read."""
    kinds = sorted({_needs(method) for method in plan.grid if _needs(method)})
    jobs = []
    for needs in kinds:
        for expert in plan.experts:
            spec = {
                "model": expert.path,
                "base": plan.recipe.base,
                "manifest": str(plan.statistics_data[expert.name]),
                "settings": statistics_settings(plan, needs),
            }
            jobs.append(
                Job(
                    _statistics_key(plan, expert, needs),
                    "statistics",
                    f"statistics {'+'.join(needs)} {expert.name}",
                    "gather_statistics",
                    spec,
                    model=expert.name,
                    depends=(expert.job,) if expert.job else (),
                )
            )
    return jobs


def _reference_job(plan: StudyPlan, ref: ModelRef, kind: str) -> Job:
    """Score a reference model (base, expert, baseline) on every set of the study (`expert_sets: own`:
    an expert on its own sets, `expert_sets`)."""
    sets = plan.data.sets if kind != "expert" else expert_sets(plan, ref.name)
    key = job_key("evaluate", model=ref.identity, **set_identity(sets), evaluation=plan.eval_identity())
    spec = {"model": ref.path, "sets": [s.spec() for s in sets], "options": plan.eval_options()}
    return Job(
        key,
        "evaluate",
        f"score {kind} {ref.name}",
        "evaluate_model",
        spec,
        model_kind=kind,
        model=ref.name,
        depends=(ref.job,) if ref.job else (),
    )


def expert_sets(plan: StudyPlan, name: str) -> list[EvalSet]:
    """The sets an expert is scored on: all, or with `evaluation.expert_sets: own` the in-domain sets
    its group covers, the out-of-domain sets of its languages and tasks, and the retention sets (an
    expert's scores elsewhere are never read: the report scores a group by the expert named for it,
    else by the best expert scored there)."""
    if plan.recipe.evaluation.expert_sets == "all":
        return plan.data.sets
    group = next(g for g in plan.data.experts if g.name == name)
    return [
        s
        for s in plan.data.sets
        if s.scope == "retention"
        or any(
            group.covers(language, task, None if domain == "-" else domain)
            if s.scope == "in_domain"
            else same_languages_tasks([group], language, task)
            for language, task, domain, _ in s.labels
        )
    ]


def set_identity(sets: list[EvalSet]) -> dict:
    """The key part of the sets a job scores: their digests; and their names where two of them hold
    the same (language, task, domain, split) labels, which are scored apart, each under its name
    (before they were pooled into one group, so those jobs are keyed anew)."""
    labels = [label for s in sets for label in s.labels]
    if len(labels) == len(set(labels)):
        return {"sets": [s.digest for s in sets]}
    return {"sets": [s.digest for s in sets], "scored_per_set": [s.name for s in sets]}


def test_job(plan: StudyPlan, method: str, point: dict) -> Job:
    """The job that scores a method's selected point on every test set (merging it again unless its
    validation job kept the model: merging is deterministic, and both jobs use the same folder)."""
    test_sets = plan.data.stage("test")
    key = job_key(
        "test",
        merge=_merge_identity(plan, method, point),
        **set_identity(test_sets),
        evaluation=plan.eval_identity(),
    )
    keep = plan.recipe.keep_models != "none"
    return _merge_job(plan, "test", key, method, point, method, test_sets, keep)


LEARNED = {"search": "search_and_test", "adamerging": "adamerge_and_test"}  # job kind -> task


def learned_jobs(plan: StudyPlan, chosen: list[dict]) -> list[Job]:
    """The recipe's `search:` and `adamerging:` entries, each starting from (and compared with) the
    setting its method chose on validation: learn on the validation sets, merge, score on test.
    An entry whose method chose no setting (its grid failed) has no job."""
    from speechmerge.study.recipe import learned_searches

    settings = {c["method"]: c["setting"] for c in chosen}
    entries = [("search", method, spec) for method, spec in learned_searches(plan.recipe, plan.grid).items()]
    if plan.recipe.adamerging is not None:
        entries.append(("adamerging", "task_arithmetic", plan.recipe.adamerging.model_dump(mode="json")))
    validation, test = plan.data.stage("validation"), plan.data.stage("test")
    jobs = []
    for kind, method, spec in entries:
        if method not in settings:
            continue
        point = settings[method]
        key = job_key(
            kind,
            merge=_merge_identity(plan, method, point),
            learn=spec,
            validation=set_identity(validation),
            **set_identity(test),
            evaluation=plan.eval_identity(),
        )
        label = f"{kind}:{method}"
        job = _merge_job(plan, "test", key, method, point, label, test, plan.recipe.keep_models != "none")
        output = plan.folder / "learned" / f"{kind}-{method}-{key[:8]}"
        job_spec = {
            **job.spec,
            "learn": spec,
            "validation": [s.spec() for s in validation],
            "work": str(output),
            "output": str(output / "model"),
        }
        jobs.append(
            Job(
                key,
                kind,
                f"{kind} {method}",
                LEARNED[kind],
                job_spec,
                stage="test",
                model_kind="merge",
                model=label,
                method=label,
                setting={},
                depends=job.depends,
            )
        )
    return jobs


def _merge_job(
    plan: StudyPlan, kind: str, key: str, method: str, point: dict, label: str, sets: list[EvalSet], keep: bool
) -> Job:
    merge_key = job_key("merge", merge=_merge_identity(plan, method, point))
    output = plan.folder / MODEL_FOLDERS["merge"] / f"{method}-{merge_key[:8]}"
    merge_options = plan.recipe.merge
    needs = _needs(method)
    recipe = {
        "base": plan.base.path,
        "experts": [
            {"path": e.path, "name": e.name, **({"data": [str(plan.statistics_data[e.name])]} if needs else {})}
            for e in plan.experts
        ],
        "method": method,
        "params": point,
        "output_dtype": merge_options.output_dtype,
        "device": merge_options.device,
        "memory_budget": merge_options.memory_budget,
        "seed": merge_options.seed,
    }
    statistics = [_statistics_key(plan, e, needs) for e in plan.experts] if needs else []
    if needs:
        recipe["data_statistics"] = plan.recipe.data_statistics.model_dump(mode="json")
    spec = {
        "recipe": recipe,
        "output": str(output),
        "keep": keep,
        "sets": [s.spec() for s in sets],
        "options": plan.eval_options(),
        "label": label,
    }
    return Job(
        key,
        kind,
        f"{kind} {label}",
        "merge_and_evaluate",
        spec,
        stage="validation" if kind == "validate" else "test",
        model_kind="merge",
        model=label,
        method=method,
        setting=point,
        depends=(*(e.job for e in plan.experts if e.job), *statistics),
    )


def _merge_identity(plan: StudyPlan, method: str, point: dict) -> dict:
    identity = {
        "method": method,
        "params": point,
        "base": plan.base.identity,
        "experts": [e.identity for e in plan.experts],
        "options": plan.recipe.merge.model_dump(mode="json"),
    }
    needs = _needs(method)
    if needs:
        identity["statistics"] = [_statistics_key(plan, e, needs) for e in plan.experts]
    from speechmerge.merging.registry import get_method

    revision = get_method(method).revision
    if revision > 1:  # the keys of revision 1 predate revisions: unchanged, so earlier stores still resume
        identity["revision"] = revision
    return identity


def interleaved_by_audio(jobs: list[Job]) -> list[Job]:
    """Expert jobs round-robin over the audio they train on (languages, domains): the ASR and ST
    experts of one language read the same clips, whose encoder outputs the first of them caches,
    so parallel workers should start with different languages rather than encode the same clips
    twice at once."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        selection = job.spec["selection"]
        audio = (tuple(selection.get("languages") or ()), tuple(selection.get("domains") or ()))
        groups.setdefault(audio, []).append(job)
    return [job for turn in itertools.zip_longest(*groups.values()) for job in turn if job is not None]


def _baseline_jobs(plan: StudyPlan) -> list[Job]:
    spec = plan.recipe.baselines
    trained = [g for g in plan.data.experts if g.path is None]
    kinds = spec.enabled
    if kinds and len(trained) < 2:
        raise SpeechmergeError(
            f"{plan.recipe.source}: baselines: need at least two trained experts' data; "
            f"this study trains {len(trained)}"
        )
    from speechmerge.training.config import TrainingConfig

    settings = spec.training if spec.training is not None else plan.recipe.experts.training
    config = TrainingConfig(**settings).model_dump(mode="json")
    selections = [g.selection.model_dump(mode="json") for g in trained]
    data = [plan.data.training_digest[g.name] for g in trained]
    jobs = []
    for kind in kinds:
        key = job_key(
            "baseline",
            baseline=kind,
            base=plan.base.identity,
            data=data,
            selections=[_labels(s) for s in selections],
            config=config,
        )
        output = plan.folder / MODEL_FOLDERS["baseline"] / f"{kind}-{key[:8]}"
        job_spec = {
            "baseline": kind,
            "base": plan.recipe.base,
            "selections": selections,
            "config": config,
            "output": str(output),
        }
        jobs.append(
            Job(key, "baseline", f"baseline {kind}", "train_baseline", job_spec, model_kind="baseline", model=kind)
        )
    return jobs


def _labels(selection: dict) -> dict:
    """A selection without its source paths (the data digest stands for them)."""
    return {k: v for k, v in selection.items() if k != "sources"}


def _content_hash(reference: str, recipe: StudyRecipe, key: str) -> str:
    from speechmerge.checkpoints.resolve import open_checkpoint

    try:
        return open_checkpoint(reference).content_hash()
    except SpeechmergeError as error:
        raise SpeechmergeError(f"{recipe.source}: {key}: {error}") from None


def varying_parameters(points: list[dict]) -> list[str]:
    """The parameters a method's grid varies (in the order they first appear)."""
    keys = dict.fromkeys(k for p in points for k in p)
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in points}) > 1]


def setting_label(method: str, point: dict, points: list[dict]) -> str:
    """`method` alone, or `method[k=v,...]` naming the parameters its grid varies."""
    varying = [k for k in varying_parameters(points) if k in point]
    return method if not varying else f"{method}[{','.join(f'{k}={point[k]}' for k in varying)}]"


def searched_parameters(grid: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Per method, the sorted parameters its grid varies (the report's hyper-parameter curves)."""
    return {method: sorted(varying_parameters(points)) for method, points in grid.items()}
