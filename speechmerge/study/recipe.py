"""Study recipes: which base, data, experts, baselines and merge grid a study compares.

```yaml
name: demo
base: builtin:whisper-base
corpus: {builtin: multilingual, size: demo, languages: [es, de], seed: 0}
#   or: {manifests: {train: [a.jsonl], validation: [...], test: [...], out_of_domain: [...], retention: [...]}}
experts:
  per: [language, task]             # one expert per distinct (language, task) of the training data
  languages: [es, de]               # filters on the training data (default: every non-English language)
  tasks: [transcribe, translate]
  training: {mode: decoder, steps: 30, learning_rate: 3.0e-5}
  given:                            # experts that exist already: path + what they were trained on
    - {name: it-asr, path: models/it, languages: [it], tasks: [transcribe]}
baselines: {joint: true, sequential: false}
all_methods: true                   # every registered method at its defaults, plus the grids below
leave_out: [fisher]                 # methods all_methods does not add
methods:
  task_arithmetic: {scale: [0.3, 0.5, 1.0]}   # a list is a grid axis
  ties: {density: [0.1, 0.2], scale: 1.0}
  regmean: {alpha: [0.1, 0.6]}                # data-aware: statistics from each expert's training data
data_statistics: {utterances: 128, seed: 0}  # per expert, for regmean / fisher (docs/data-aware.md)
search:                             # after the grid, from the method's chosen setting (speechmerge search)
  task_arithmetic: {space: {weights: {low: 0.0, high: 1.5}}, trials: 20, timeout: 900}
adamerging: {variant: first, steps: 50}   # task vectors' λ per expert and decoder block, unlabelled validation audio
evaluation: {batch_size: 8, validation_utterances: 8, test_utterances: 16}   # select: best | significant
merge: {output_dtype: float16}
keep_models: selected               # selected | all | none: which merged models stay on disk after scoring
output: runs/demo                   # relative to the current directory
reference: joint                    # the report tests every method against it (default: joint, else task_arithmetic)
```

Every key is checked (unknown keys and bad values name the key and the file); every grid
point is validated against its method's declared parameters before any work starts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from speechmerge.errors import SpeechmergeError
from speechmerge.recipe import DataStatisticsSpec
from speechmerge.study.claims import ClaimSpec
from speechmerge.training.config import TrainingConfig
from speechmerge.validation import Strict, describe_validation_error, read_yaml_file

Label = Literal["language", "task", "domain"]


def _checked_training(settings: dict) -> dict:
    """Training settings as TrainingConfig accepts them; a bad one is named (its key, what is wrong)."""
    try:
        TrainingConfig(**settings)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(settings)"
        message = "unknown training setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{key}: {message}") from None
    return settings


class ManifestSets(Strict):
    train: list[str] = Field(
        min_length=1, description="manifests the experts train on (split train; split validation validates)"
    )
    validation: list[str] = Field(min_length=1, description="manifests the grid search is scored on")
    test: list[str] = Field(min_length=1, description="in-domain test manifests")
    out_of_domain: list[str] = Field(
        default_factory=list,
        description="test manifests of the experts' languages/tasks in another style, accent or domain",
    )
    retention: list[str] = Field(
        default_factory=list, description="test manifests of what no expert trained for (English, other languages)"
    )


class CorpusSpec(Strict):
    builtin: Literal["multilingual", "multidomain"] | None = Field(None, description="a built-in espeak-ng corpus")
    size: Literal["tiny", "demo", "full"] = Field("demo", description="built-in corpus size (docs/data.md)")
    seed: int = Field(0, description="seed of voices and noises")
    languages: list[str] | None = Field(
        None, description="multilingual: the X languages; multidomain: other languages measured out of domain"
    )
    domains: list[str] | None = Field(None, description="multidomain: a subset of the ten domains")
    manifests: ManifestSets | None = Field(None, description="your own manifests instead of a built-in corpus")

    @model_validator(mode="after")
    def _one_source(self) -> CorpusSpec:
        if (self.builtin is None) == (self.manifests is None):
            raise ValueError("give either `builtin` (multilingual or multidomain) or `manifests`, not both or neither")
        return self


class GivenExpert(Strict):
    name: str = Field(description="label in reports")
    path: str = Field(description="model reference: directory, hub id, builtin:..., .pt, CTranslate2 or LoRA directory")
    languages: list[str] = Field(default_factory=list, description="what it was fine-tuned on (empty: any)")
    tasks: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)


class ExpertsSpec(Strict):
    per: list[Label] = Field(
        default_factory=lambda: ["language", "task"],
        min_length=1,
        description="labels whose distinct values make one expert each",
    )
    languages: list[str] | None = Field(None, description="training languages (default: every one but English)")
    tasks: list[str] | None = None
    domains: list[str] | None = None
    training: dict[str, Any] = Field(
        default_factory=dict, description="TrainingConfig settings (speechmerge finetune --help)"
    )
    given: list[GivenExpert] = Field(default_factory=list, description="experts that exist already")
    train: bool = Field(True, description="train the experts of the training data (false: only `given`)")

    @field_validator("training")
    @classmethod
    def _training_settings(cls, value: dict) -> dict:
        return _checked_training(value)

    def config(self) -> TrainingConfig:
        return TrainingConfig(**self.training)


class BaselinesSpec(Strict):
    joint: bool = Field(False, description="one model on the union of the experts' data, experts x steps steps")
    sequential: bool = Field(False, description="one stage per expert's data, each continuing from the last")
    training: dict[str, Any] | None = Field(None, description="TrainingConfig settings (default: the experts')")

    @field_validator("training")
    @classmethod
    def _training_settings(cls, value: dict | None) -> dict | None:
        return None if value is None else _checked_training(value)

    @property
    def enabled(self) -> list[str]:
        """The baselines this study trains, by name."""
        return [kind for kind in ("joint", "sequential") if getattr(self, kind)]


class EvaluationSpec(Strict):
    backend: Optional[Literal["transformers", "torch", "ctranslate2"]] = Field(
        None, description="decoding backend (default: torch for greedy search, transformers for beam search)"
    )
    quantization: Optional[Literal["float32", "int8", "int8_float32", "int16"]] = Field(
        None, description="weight type (default: the backend's; ctranslate2 float32 gives the reference's text)"
    )
    beam_size: int = Field(1, ge=1, le=16)
    batch_size: int = Field(8, ge=1, le=256)
    cross_attention: Literal["keys", "encoder"] = Field(
        "keys", description="torch backend: keys (the reference's text) or encoder (attend over E; equal to rounding)"
    )
    max_new_tokens: int | None = Field(None, ge=4)
    cer: bool = False
    validation_utterances: int | None = Field(
        None, ge=1, description="first N utterances of each validation manifest (default: all)"
    )
    test_utterances: int | None = Field(
        None, ge=1, description="first N utterances of each test manifest (default: all)"
    )
    select_by: Literal["vs_expert", "gain_kept"] = Field(
        "vs_expert", description="validation score that picks each method's setting (mean over in-domain groups)"
    )
    expert_sets: Literal["all", "own"] = Field(
        "all",
        description="all: each expert scored on every set; own: on the in-domain sets it trained for, the "
        "out-of-domain sets of its languages and tasks and every retention set (all that the report reads of it)",
    )
    select: Literal["best", "significant"] = Field(
        "best",
        description="best: the setting with the best validation score; significant: the method's default setting "
        "unless another is significantly better on validation (paired bootstrap, p < 0.05)",
    )


class AdaMergingSpec(Strict):
    """A study's `adamerging:` entry: AdaMerging (speechmerge.search.adamerging) on the audio of the
    study's validation sets (never their text), compared on test with task arithmetic's chosen setting.
    Unset values are AdaMerging's own defaults."""

    variant: Literal["first", "greedy"] = Field(
        "first", description="entropy at the first position or on greedy transcripts"
    )
    steps: int = Field(50, ge=1, description="Adam steps on λ")
    init: float | None = Field(None, allow_inf_nan=False, description="initial λ (AdaMerging's default: 0.3)")
    lr: float | None = Field(None, gt=0, description="Adam's learning rate (AdaMerging's default)")
    batch_size: int | None = Field(None, ge=1, description="clips per step (AdaMerging's default)")
    refresh: int | None = Field(None, ge=1, description="greedy: steps between new transcripts (AdaMerging's default)")
    seed: int = 0

    def options(self) -> dict:
        """The keyword arguments given to `AdaMerging` (those set)."""
        chosen = {"init": self.init, "lr": self.lr, "batch_size": self.batch_size, "refresh": self.refresh}
        return {"variant": self.variant, **{k: v for k, v in chosen.items() if v is not None}}


class MergeOptions(Strict):
    output_dtype: Literal["base", "float32", "float16", "bfloat16"] = "float16"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    memory_budget: str = "1GB"
    seed: int = 0


class StudyRecipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="study name (folder-safe)")
    base: str = Field(description="the pre-trained model the experts start from")
    corpus: CorpusSpec
    experts: ExpertsSpec = Field(default_factory=ExpertsSpec)
    baselines: BaselinesSpec = Field(default_factory=BaselinesSpec)
    all_methods: bool = Field(
        False,
        description="add every registered method at its defaults (the data-aware ones only when every expert "
        "has training data to gather statistics on)",
    )
    leave_out: list[str] = Field(default_factory=list, description="methods that `all_methods` does not add")
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="method -> parameters; a list is a grid axis"
    )
    data_statistics: DataStatisticsSpec = Field(
        default_factory=lambda: DataStatisticsSpec(utterances=128),
        description="how data-aware methods' statistics are gathered on each expert's training data "
        "(default: 128 utterances per expert, seed 0)",
    )
    search: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="method -> a search of its coefficients on validation (keys of `speechmerge search` but merge, "
        "validation, test and output), run after the grid from the method's chosen setting",
    )
    adamerging: AdaMergingSpec | None = Field(
        None, description="AdaMerging after the grid, compared with task arithmetic's chosen setting"
    )
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    merge: MergeOptions = Field(default_factory=MergeOptions)
    keep_models: Literal["selected", "all", "none"] = Field(
        "selected",
        description="merged models kept on disk: the selected ones (tested), all (validation points too) or none",
    )
    output: str | None = Field(None, description="study folder (default: runs/<name>)")
    reference: str | None = Field(
        None,
        description="model every method is tested against in the report: a method, a baseline, base or experts "
        "(default: the joint baseline, else task_arithmetic)",
    )
    claims: list[ClaimSpec] = Field(
        default_factory=list,
        description="paper claims decided on the test sets by paired tests, Holm over the claims (study.claims)",
    )
    _source: str = PrivateAttr("recipe")

    @model_validator(mode="after")
    def _remember_source(self, info: ValidationInfo) -> StudyRecipe:
        """The file (or other place) the recipe was read from, given as validation context `source`."""
        if info.context and "source" in info.context:
            self._source = info.context["source"]
        return self

    @field_validator("methods", mode="before")
    @classmethod
    def _empty_params(cls, value):
        if isinstance(value, dict):
            return {name: ({} if params is None else params) for name, params in value.items()}
        return value

    @model_validator(mode="after")
    def _something_to_merge(self) -> StudyRecipe:
        if not self.methods and not self.all_methods:
            raise ValueError("no merge method: list some under `methods` or set `all_methods: true`")
        if not self.experts.train and not self.experts.given:
            raise ValueError("experts: `train: false` and no `given` experts: nothing to merge")
        return self

    @property
    def source(self) -> str:
        """Where the recipe came from, for error messages (its file)."""
        return self._source

    def with_output(self, output: str) -> StudyRecipe:
        """The same recipe (and source) writing its study into `output`."""
        return self.model_copy(update={"output": output})

    def folder(self) -> Path:
        return Path(self.output or f"runs/{self.name}")


GridPoint = dict[str, Any]


def method_grid(recipe: StudyRecipe) -> dict[str, list[GridPoint]]:
    """Every (method, resolved parameters) the study merges, each validated against the method's
    declared parameters: a typo or an out-of-range value fails here, before any work starts."""
    from speechmerge.merging.registry import all_methods, get_method

    for name in recipe.leave_out:
        get_method(name, where=f"{recipe.source}: leave_out")
    left_out = set(recipe.leave_out)
    chosen = {m.name: {} for m in all_methods() if m.name not in left_out} if recipe.all_methods else {}
    chosen = {**chosen, **recipe.methods}
    grid: dict[str, list[GridPoint]] = {}
    for name, params in chosen.items():
        method = get_method(name, where=f"{recipe.source}: methods.{name}")
        axes = {key: value if isinstance(value, list) else [value] for key, value in params.items()}
        for key, values in axes.items():
            if not values:
                raise SpeechmergeError(f"{recipe.source}: methods.{name}.{key}: an empty list; give at least one value")
        points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
        resolved = [method.validate(point, recipe.source, prefix=f"methods.{name}.") for point in points]
        grid[name] = list({_canonical(p): p for p in resolved}.values())
    return grid


LEARNED_KEYS = ("merge", "validation", "test", "output")  # a study gives these to each search itself


def learned_searches(recipe: StudyRecipe, grid: dict[str, list[GridPoint]]) -> dict[str, dict]:
    """The recipe's `search:` entries, each checked as `speechmerge search` checks its recipe (space
    against the method's parameters, ranges, budgets); its method must be in the grid, whose chosen
    setting the search starts from and is compared with. AdaMerging needs task arithmetic in the grid."""
    from speechmerge.merging.registry import get_method
    from speechmerge.recipe import parse_recipe
    from speechmerge.search.space import check_space
    from speechmerge.search.spec import SearchRecipe

    if recipe.adamerging is not None and "task_arithmetic" not in grid:
        raise SpeechmergeError(
            f"{recipe.source}: adamerging: its test comparison is with task arithmetic's chosen setting; "
            "add task_arithmetic to methods"
        )
    checked = {}
    for name, entry in recipe.search.items():
        where = f"{recipe.source}: search.{name}"
        if name not in grid:
            raise SpeechmergeError(
                f"{where}: {name} is not in the study's grid; add it to methods (the search starts from its chosen "
                "setting and is compared with it)"
            )
        if get_method(name).needs:
            raise SpeechmergeError(
                f"{where}: {name} reads data statistics, which the search's in-memory merges do not gather; "
                "search a weight-only method"
            )
        given = sorted(set(entry or {}) & set(LEARNED_KEYS))
        if given:
            raise SpeechmergeError(
                f"{where}.{given[0]}: the study sets it (its experts, validation and test sets); remove it"
            )
        placeholders = {"merge": {}, "validation": ["-"], "output": "-"}
        try:
            spec = SearchRecipe.model_validate({**(entry or {}), **placeholders})
        except ValidationError as error:
            raise SpeechmergeError(describe_validation_error(error, where)) from None
        stand_in = parse_recipe({"base": recipe.base, "experts": [{"path": recipe.base}], "method": name}, where)
        check_space(spec.space, stand_in, where)
        checked[name] = spec.model_dump(mode="json", exclude=set(LEARNED_KEYS))
    return checked


def _canonical(point: GridPoint) -> str:
    import json

    return json.dumps(point, sort_keys=True)


def parse_study(data: Any, where: str) -> StudyRecipe:
    """Validate a study given as a dict; one line naming the key on error."""
    if not isinstance(data, dict):
        raise SpeechmergeError(f"{where}: expected a mapping of study keys, found {type(data).__name__}")
    try:
        return StudyRecipe.model_validate(data, context={"source": where})
    except ValidationError as error:
        raise SpeechmergeError(describe_validation_error(error, where)) from None


def load_study(path: Path) -> StudyRecipe:
    """Read and validate a study YAML file, and validate its whole method grid."""
    recipe = parse_study(read_yaml_file(path, "study recipe"), str(path))
    learned_searches(recipe, method_grid(recipe))
    return recipe
