"""Search recipes: a merge recipe, the space to search in it, validation data and budgets.

```yaml
merge:                                # a merge recipe (its weights and params are the start point)
  base: base
  experts: [experts/es, experts/de]
  method: ties
include: 'model\\.decoder\\..*'        # tensors merged per trial (the rest: the base's)
space:
  weights: {low: 0.0, high: 1.5}      # one weight per expert
  gradient: {points: 3, low: 0.0, high: 1.5}   # or: per expert, a list over depth
  groups:                             # or/and: a scale per layer group, on every expert's weight
    cross_attention: {match: '.*encoder_attn\\..*', low: 0.5, high: 1.5}
  params:                             # the method's own hyper-parameters
    density: {low: 0.1, high: 0.9}
    scale: {low: 0.1, high: 1.0, log: true}
validation: [data/val.jsonl]
test: [data/test.jsonl]               # optional: the best recipe against the best grid point
validation_utterances: 4              # optional: the first N of each validation (test_utterances: test) manifest
grid: {scale: [0.3, 0.5, 1.0]}         # the method's grid: the best point on validation is the test baseline
objective: primary                    # the study's score (macro over groups, normalised) or a metric
select_by: vs_expert                  # vs_expert | gain_kept (as a study's evaluation.select_by)
sampler: tpe                          # tpe | cmaes
encoder_window: full                  # full | audio: cross-attend to the clips' audio positions only (faster)
workers: 1                            # trials run at once (processes sharing the SQLite study)
executor: local                       # local | ray (ray_address: a cluster; default a local instance)
trials: 30
timeout: 900                          # seconds, for the whole search
pruning: {first_clips: 16}            # median pruner after the first clips (null: no pruning)
output: searched/ties
seed: 0
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from speechmerge.errors import SpeechmergeError
from speechmerge.evaluation.metrics import METRICS
from speechmerge.recipe import MergeRecipe, parse_recipe, resolve_relative_paths
from speechmerge.validation import Strict, describe_validation_error, read_yaml_file


class Range(Strict):
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"empty or inverted range [{self.low}, {self.high}]; give low < high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class GradientRange(Range):
    points: int = Field(ge=2, description="values per expert, interpolated over depth")


class GroupRange(Range):
    match: str = Field(description="regular expression over tensor names: the layer group")


class Space(Strict):
    weights: Optional[Range] = None
    gradient: Optional[GradientRange] = None
    groups: dict[str, GroupRange] = Field(default_factory=dict)
    params: dict[str, Range] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> Space:
        if self.weights is not None and self.gradient is not None:
            raise ValueError("give weights or gradient, not both")
        if self.weights is None and self.gradient is None and not self.groups and not self.params:
            raise ValueError("the space is empty; give weights, gradient, groups or params")
        return self


class Pruning(Strict):
    first_clips: int = Field(ge=1, description="clips scored before a trial may be pruned")


def check_grid(grid: dict) -> None:
    """Every grid parameter lists at least one value."""
    for name, values in grid.items():
        if not values:
            raise ValueError(f"grid.{name} is empty; give at least one value")


class SearchRecipe(Strict):
    merge: dict
    include: Optional[str] = r"model\.decoder\..*"
    space: Space
    validation: list[str] = Field(min_length=1)
    test: list[str] = Field(default_factory=list)
    validation_utterances: Optional[int] = Field(
        None, ge=1, description="first N utterances of each validation manifest"
    )
    test_utterances: Optional[int] = Field(None, ge=1, description="first N utterances of each test manifest")
    grid: dict[str, list[float]] = Field(default_factory=dict)
    objective: str = "primary"
    select_by: Literal["vs_expert", "gain_kept"] = "vs_expert"
    sampler: Literal["tpe", "cmaes"] = "tpe"
    encoder_window: Literal["full", "audio"] = "full"
    workers: int = Field(1, ge=1)
    executor: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None
    trials: int = Field(100, ge=1)
    timeout: float = Field(900, gt=0)
    pruning: Optional[Pruning] = None
    output: str
    seed: int = 0

    @field_validator("include")
    @classmethod
    def _compiles(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression ({error})") from None
        return value

    @model_validator(mode="after")
    def _objective(self) -> SearchRecipe:
        if self.objective != "primary" and self.objective not in METRICS:
            raise ValueError(f"objective {self.objective!r} is not primary or one of {', '.join(METRICS)}")
        check_grid(self.grid)
        return self


def load_search(path: Path) -> tuple[SearchRecipe, MergeRecipe]:
    """Read and validate a search recipe; paths are relative to its folder. One-line errors."""
    path = Path(path)
    return parse_search(read_yaml_file(path, "search recipe"), where=str(path), folder=path.parent)


def parse_search(data, where: str, folder: Path = Path(".")) -> tuple[SearchRecipe, MergeRecipe]:
    """A search spec from a mapping; relative paths are made absolute from `folder`, so that the
    recipes written into the output folder stay valid wherever they are read from."""
    folder = Path(folder).resolve()
    if not isinstance(data, dict):
        raise SpeechmergeError(f"{where}: expected a mapping of search recipe keys")
    try:
        spec = SearchRecipe.model_validate(data)
    except ValidationError as error:
        raise SpeechmergeError(describe_validation_error(error, where)) from None
    merge = resolve_relative_paths(parse_recipe(spec.merge, where=f"{where}: merge"), folder)
    relative = {
        "validation": [str(folder / p) for p in spec.validation],
        "test": [str(folder / p) for p in spec.test],
        "output": str(folder / spec.output),
    }
    return spec.model_copy(update=relative), merge


class AdaMergingRecipe(Strict):
    """`speechmerge adamerge RECIPE` (speechmerge/search/adamerging.py says what each key does):

    ```yaml
    merge: {base: builtin:whisper-base, experts: [experts/es, experts/de], method: task_arithmetic}
    vectors: task_arithmetic      # or ties: TIES-AdaMerging (density: 0.2)
    data: [data/test.jsonl]       # unlabelled: only audio, language and task are read
    variant: first                # first | greedy
    granularity: block            # block | tensor
    steps: 100
    timeout: 900
    validation: [data/val.jsonl]  # optional, labelled: picks the grid point the test compares with
    grid: {scale: [0.3, 0.5, 1.0]}
    test: [data/test.jsonl]
    output: learned/ada
    ```
    """

    merge: dict
    vectors: Literal["task_arithmetic", "ties"] = "task_arithmetic"
    density: float = Field(0.2, gt=0, le=1)
    data: list[str] = Field(min_length=1)
    data_utterances: Optional[int] = Field(None, ge=1, description="first N utterances of each data manifest")
    variant: Literal["first", "greedy"] = "first"
    granularity: Literal["block", "tensor"] = "block"
    init: float = Field(0.3, allow_inf_nan=False)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(4, ge=1)
    refresh: int = Field(5, ge=1)
    encoder_window: Literal["full", "audio"] = "full"
    steps: int = Field(100, ge=1)
    timeout: float = Field(900, gt=0)
    validation: list[str] = Field(default_factory=list)
    grid: dict[str, list[float]] = Field(default_factory=dict)
    select_by: Literal["vs_expert", "gain_kept"] = "vs_expert"
    test: list[str] = Field(default_factory=list)
    validation_utterances: Optional[int] = Field(
        None, ge=1, description="first N utterances of each validation manifest"
    )
    test_utterances: Optional[int] = Field(None, ge=1, description="first N utterances of each test manifest")
    output: str
    seed: int = 0

    @model_validator(mode="after")
    def _grid(self) -> AdaMergingRecipe:
        check_grid(self.grid)
        return self


def load_adamerging(path: Path) -> tuple[AdaMergingRecipe, MergeRecipe]:
    """Read and validate an AdaMerging recipe; paths are relative to its folder. One-line errors."""
    path = Path(path)
    return parse_adamerging(read_yaml_file(path, "AdaMerging recipe"), where=str(path), folder=path.parent)


def parse_adamerging(data, where: str, folder: Path = Path(".")) -> tuple[AdaMergingRecipe, MergeRecipe]:
    """An AdaMerging spec from a mapping; relative paths are made absolute from `folder`."""
    folder = Path(folder).resolve()
    if not isinstance(data, dict):
        raise SpeechmergeError(f"{where}: expected a mapping of AdaMerging recipe keys")
    try:
        spec = AdaMergingRecipe.model_validate(data)
    except ValidationError as error:
        raise SpeechmergeError(describe_validation_error(error, where)) from None
    merge = resolve_relative_paths(parse_recipe(spec.merge, where=f"{where}: merge"), folder)
    if merge.base is None:
        raise SpeechmergeError(f"{where}: merge.base: AdaMerging needs the base the task vectors start from")
    relative = {key: [str(folder / p) for p in getattr(spec, key)] for key in ("data", "validation", "test")}
    return spec.model_copy(update={**relative, "output": str(folder / spec.output)}), merge
