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
test: [data/test.jsonl]               # optional: scored once, for the best and the start recipe
objective: primary                    # primary (mean over groups of 1 − WER / BLEU/100) or a metric
sampler: tpe                          # tpe | cmaes
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


class SearchRecipe(Strict):
    merge: dict
    include: Optional[str] = r"model\.decoder\..*"
    space: Space
    validation: list[str] = Field(min_length=1)
    test: list[str] = Field(default_factory=list)
    objective: str = "primary"
    sampler: Literal["tpe", "cmaes"] = "tpe"
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
        return self


def load_search(path: Path) -> tuple[SearchRecipe, MergeRecipe]:
    """Read and validate a search recipe; paths are relative to its folder. One-line errors."""
    path = Path(path)
    return parse_search(read_yaml_file(path, "search recipe"), where=str(path), folder=path.parent)


def parse_search(data, where: str, folder: Path = Path(".")) -> tuple[SearchRecipe, MergeRecipe]:
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
