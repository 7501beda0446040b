"""Merge recipes: YAML validated by pydantic; unknown keys and out-of-range values are errors
that name the key.

```yaml
base: builtin:whisper-base          # HF dir, hub id, CT2 dir, openai .pt, builtin:...
experts:
  - {path: experts/es, name: es, weight: 1.0}
  - {path: experts/de, name: de, weight: [0.2, 1.0]}   # a gradient over depth (see below)
method: ties
params: {density: 0.2, scale: 1.0}
overrides:                          # applied in order; later matches win
  - {match: 'model\\.encoder\\..*', params: {scale: 0.5}}
  - {match: 'model\\.decoder\\.embed_positions\\.weight', keep: base}
  - {match: 'model\\.decoder\\..*encoder_attn\\..*', weights: [0.5, 0.8]}   # one per expert
output: merged/ties
device: auto                        # cpu | cuda | auto
compute_dtype: float32              # arithmetic precision
output_dtype: base                  # base | float32 | float16 | bfloat16
seed: 0
shard_size: 2GB
memory_budget: 1GB                  # large tensors are streamed in row blocks to stay under it
```

An expert's `weight` is a number or a list over depth, interpolated linearly across each
stack's blocks (speechmerge.merging.coefficients gives the exact rule); an override's `weights`
give every expert's weight for the tensors it matches (a layer group) and win over both.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from speechmerge.errors import SpeechmergeError
from speechmerge.validation import Strict, describe_validation_error, read_yaml_file


class ExpertSpec(Strict):
    path: str = Field(description="model reference: directory, hub id, .pt, CT2 dir, LoRA adapter dir")
    name: Optional[str] = Field(None, description="label used in reports (default: the folder name)")
    weight: Union[float, list[float]] = Field(
        1.0, description="w_t, the expert's weight: a number, or a list interpolated over each stack's depth"
    )

    data: Optional[list[str]] = Field(
        None,
        min_length=1,
        description="manifests of utterances (its training data) for data-aware methods' statistics",
    )

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, value):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("a weight list needs at least one value")
        if not all(math.isfinite(v) for v in values):
            raise ValueError("weights must be finite numbers")
        return value


class DataStatisticsSpec(Strict):
    """How data-aware methods gather each expert's statistics from its `data:` (speechmerge.datastats)."""

    utterances: Optional[int] = Field(
        None, gt=0, description="sample this many utterances per expert (seeded); default all"
    )
    seed: int = Field(0, description="seed of that sample")
    batch_size: int = Field(8, gt=0, description="utterances per forward pass when only Gram matrices are gathered")


class OverrideSpec(Strict):
    match: str = Field(description="regular expression matched against the full tensor name")
    params: dict[str, Any] = Field(default_factory=dict, description="parameters that replace the method's")
    method: Optional[str] = Field(None, description="a different method for the matching tensors")
    keep: Optional[Literal["base"]] = Field(None, description="'base': leave matching tensors as the base's")
    weights: Optional[list[float]] = Field(
        None, description="every expert's weight for the matching tensors, one per expert, in order"
    )
    matrix: Optional[bool] = Field(
        None, description="treat matching 2-D tensors as block matrices (SVD/pruning) or not"
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression ({error})") from None
        return value


class MergeRecipe(Strict):
    base: Optional[str] = Field(None, description="the pre-trained model the experts were fine-tuned from")
    experts: list[ExpertSpec] = Field(min_length=1)
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    overrides: list[OverrideSpec] = Field(default_factory=list)
    output: Optional[str] = None
    device: Literal["cpu", "cuda", "auto"] = "auto"
    compute_dtype: Literal["float32", "float64"] = "float32"
    output_dtype: Literal["base", "float32", "float16", "bfloat16"] = "base"
    seed: int = 0
    shard_size: str = "2GB"
    memory_budget: str = Field(
        "1GB",
        description="bytes of input and work held at once; large tensors of entry-wise methods are streamed in row blocks to stay under it",
    )
    processor_from: Optional[str] = Field(None, description="where tokenizer/processor files come from (default: base)")
    data_statistics: DataStatisticsSpec = Field(default_factory=DataStatisticsSpec)
    _source: str = PrivateAttr("recipe")

    @property
    def source(self) -> str:
        """Where the recipe came from (its file, as given to `parse_recipe`), for error messages;
        kept by `model_copy` and `updated`."""
        return self._source

    def updated(self, **changes: Any) -> MergeRecipe:
        """The recipe with some keys replaced (e.g. command-line options), validated again; errors
        and the result keep naming the recipe's file."""
        return parse_recipe({**self.model_dump(), **changes}, where=self.source)

    @field_validator("experts", mode="before")
    @classmethod
    def _expert_strings(cls, value):
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> MergeRecipe:
        names = [e.name for e in self.experts if e.name]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"expert names must be unique; repeated: {', '.join(sorted(dup))}")
        for index, override in enumerate(self.overrides):
            if override.weights is not None and len(override.weights) != len(self.experts):
                raise ValueError(
                    f"overrides[{index}].weights has {len(override.weights)} values for {len(self.experts)} experts; "
                    "give one weight per expert"
                )
            if override.weights is not None and not all(math.isfinite(v) for v in override.weights):
                raise ValueError(f"overrides[{index}].weights must be finite numbers")
        return self

    def expert_label(self, index: int) -> str:
        spec = self.experts[index]
        return spec.name or Path(spec.path.rstrip("/")).name or f"expert{index}"


def parse_recipe(data: Any, where: str = "recipe") -> MergeRecipe:
    """Validate a recipe given as a dict; one-line errors name `where` and the key, and the
    recipe remembers `where` as its source."""
    if not isinstance(data, dict):
        raise SpeechmergeError(f"{where}: expected a mapping of recipe keys, found {type(data).__name__}")
    try:
        recipe = MergeRecipe.model_validate(data)
    except ValidationError as error:
        raise SpeechmergeError(describe_validation_error(error, where)) from None
    recipe._source = where
    return recipe


def load_recipe(path: Path) -> MergeRecipe:
    """Read and validate a YAML recipe file; relative model paths are relative to the recipe."""
    path = Path(path)
    return resolve_relative_paths(parse_recipe(read_yaml_file(path, "recipe"), where=str(path)), path.parent)


def _relative_to(folder: Path, reference: str | None) -> str | None:
    if reference is None or reference.startswith("builtin:"):
        return reference
    candidate = folder / reference
    if not Path(reference).is_absolute() and (candidate.exists() or reference.startswith(".")):
        return str(candidate)
    return reference


def resolve_relative_paths(recipe: MergeRecipe, folder: Path) -> MergeRecipe:
    """Make relative model and output paths relative to the recipe's folder."""
    update: dict[str, Any] = {
        "base": _relative_to(folder, recipe.base),
        "processor_from": _relative_to(folder, recipe.processor_from),
        "experts": [
            e.model_copy(
                update={
                    "path": _relative_to(folder, e.path),
                    "data": [_relative_to(folder, m) for m in e.data] if e.data else e.data,
                }
            )
            for e in recipe.experts
        ],
    }
    if recipe.output and not Path(recipe.output).is_absolute():
        update["output"] = str(folder / recipe.output)
    return recipe.model_copy(update=update)


def recipe_yaml(recipe: MergeRecipe, resolved_params: dict | None = None) -> str:
    """The recipe as YAML, with every parameter resolved (defaults filled in)."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    if resolved_params is not None:
        data["params"] = resolved_params
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
