"""The merge-method registry: a method is a small function plus a declaration.

    @merge_method(name="task_arithmetic", title=..., space="deltas", source=..., variant=...,
                  params=[Param("scale", float, None, "λ; default 1/T", gt=0, nullable=True)])
    def task_arithmetic(tasks, base, weights, ctx, *, scale): ...

The declaration is the single source of a method's parameters: it validates recipes (unknown
keys and out-of-range values are errors that name the key), drives `speechmerge methods` and
generates docs/methods.md. The function is pure: it sees the float32 tensors of one output
tensor and returns the merged one; it never opens files.

- `space="deltas"`: `tasks[t] = θ_t − θ_0` and the function returns the merged task vector
  (the engine adds θ_0 back);
- `space="weights"`: `tasks[t] = θ_t` and the function returns merged weights.

The engine hands the stacked `tasks` tensor over to the method, which may modify it in place
to save memory; `base` must not be modified.

The declaration checks itself: its parameters must be exactly the function's keyword-only
parameters (a mismatch fails at import), and a `check` hook states rules across parameters,
applied with the range checks when a recipe is validated (so the error names the recipe file).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

from speechmerge.errors import SpeechmergeError
from speechmerge.validation import describe_validation_error

Space = Literal["deltas", "weights"]
Family = Literal["parameter space", "task vectors", "task-vector subspace", "data-aware"]
FAMILIES: tuple[str, ...] = get_args(Family)  # in the order `speechmerge methods` and docs/methods.md list them


@dataclass(frozen=True)
class Param:
    """One declared parameter: type, default, allowed range and a one-line doc."""

    name: str
    type: type
    default: Any
    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    nullable: bool = False  # None is allowed and its meaning is in `doc` (e.g. λ = 1/T)

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(str(c) for c in self.choices)
        low = f"≥ {self.ge}" if self.ge is not None else f"> {self.gt}" if self.gt is not None else ""
        high = f"≤ {self.le}" if self.le is not None else f"< {self.lt}" if self.lt is not None else ""
        return ", ".join(x for x in (low, high) if x)


@dataclass(frozen=True)
class IdenticalExperts:
    """What T copies of one expert merge to (`gives`: "expert" or "base") under the default
    parameters updated by `params` — a property of the method's definition, checked for every
    method by the conformance tests."""

    gives: Literal["expert", "base"]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method and everything declared about it."""

    name: str
    title: str
    family: Family
    space: Space
    source: str
    variant: str
    fn: Callable
    params: tuple[Param, ...] = ()
    needs_base: bool = True
    randomised: bool = False
    min_experts: int = 1
    statistics: Optional[Callable[..., Any]] = None  # factory of a whole-model StatisticsPass
    tensor_statistics: Optional[Callable[..., Any]] = None  # factory of a per-tensor StatisticsPass
    blockwise: Callable[..., bool] | bool = False
    check: Optional[Callable[[dict], None]] = None  # rules across parameters: raises ValueError(message)
    identical_experts: IdenticalExperts | None = None  # None: no setting makes copies merge to one model
    needs: tuple[str, ...] = ()  # data statistics per expert ("gram", "fisher"), from each expert's `data:`
    revision: int = 1  # raised when a change of the implementation changes results (study job keys name it)
    doc: str = ""
    _model: Any = field(default=None, compare=False, repr=False)

    def is_blockwise(self, ctx, params: dict) -> bool:
        """Whether each output entry of this tensor depends only on the same entries of the
        inputs (and on `ctx.stats` / `ctx.tensor_stats`): then the engine may stream a large
        tensor in row blocks, running any per-tensor statistics pass over the blocks first."""
        return self.blockwise(ctx, params) if callable(self.blockwise) else bool(self.blockwise)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: dict | None, where: str, prefix: str = "params.") -> dict[str, Any]:
        """Fill defaults, check types and ranges, then the cross-parameter `check`; raise one line
        naming the bad key (`where`: the recipe file, `prefix`: the key path of these parameters)."""
        from pydantic import ValidationError

        try:
            resolved = self._model.model_validate(values or {}).model_dump()
        except ValidationError as error:
            raise SpeechmergeError(describe_validation_error(error, where, self.name, prefix)) from None
        if self.check is not None:
            try:
                self.check(resolved)
            except ValueError as error:
                raise SpeechmergeError(f"{where}: {prefix.rstrip('.')}: {self.name}: {error}") from None
        return resolved


REGISTRY: dict[str, MergeMethod] = {}


def check_signature(name: str, fn: Callable, params: tuple[Param, ...]) -> None:
    """The declared parameters must be exactly `fn`'s keyword-only parameters."""
    keywords = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    declared = [p.name for p in params]
    listed = f"(its keyword-only parameters: {', '.join(keywords) or 'none'})"
    for extra in [d for d in declared if d not in keywords]:
        raise TypeError(
            f"merge method {name!r}: declared parameter {extra!r} is not a keyword of {fn.__name__} {listed}"
        )
    for missing in [k for k in keywords if k not in declared]:
        raise TypeError(f"merge method {name!r}: keyword parameter {missing!r} of {fn.__name__} is not declared")


def _pydantic_model(name: str, params: tuple[Param, ...]):
    from typing import Literal as Lit

    from pydantic import ConfigDict, Field, create_model

    fields = {}
    for p in params:
        annotation: Any = Lit[p.choices] if p.choices else p.type
        if p.nullable:
            annotation = Optional[annotation]
        fields[p.name] = (
            annotation,
            Field(p.default, ge=p.ge, gt=p.gt, le=p.le, lt=p.lt, description=p.doc, allow_inf_nan=False)
            if p.type in (int, float)
            else Field(p.default, description=p.doc),
        )
    return create_model(f"{name}_params", __config__=ConfigDict(extra="forbid", strict=False), **fields)


def merge_method(
    *,
    name: str,
    title: str,
    family: Family,
    space: Space,
    source: str,
    variant: str,
    params: list[Param] | tuple[Param, ...] = (),
    needs_base: bool = True,
    randomised: bool = False,
    min_experts: int = 1,
    statistics: Optional[Callable[..., Any]] = None,
    tensor_statistics: Optional[Callable[..., Any]] = None,
    blockwise: Callable[..., bool] | bool = False,
    check: Optional[Callable[[dict], None]] = None,
    identical_experts: IdenticalExperts | None = None,
    needs: tuple[str, ...] = (),
    revision: int = 1,
):
    """Register `fn` as a merge method under `name` with its declared parameters.

    Both statistics factories take `(num_tasks, ctx, params)` and return a StatisticsPass or
    None (nothing to gather for this tensor): `statistics` a whole-model pass (run over every
    tensor the method merges before the merge; result in `ctx.stats`), `tensor_statistics` a
    per-tensor one (run over the tensor, or its row blocks, before the method sees it; result
    in `ctx.tensor_stats`). `blockwise` (a bool or a predicate of (ctx, params)) says the method
    is entry-wise given those statistics. `check(params)` raises ValueError on values that are
    each in range but wrong together. `needs` names the data statistics the method reads for
    every expert (speechmerge.datastats: "gram", "fisher"), handed to it as `ctx.data`.
    `revision` is raised when a change of the implementation changes what the method computes:
    from 2 on it is part of a study merge's job key, so a study recomputes that method's merges
    (and only those) instead of reusing results of the earlier code.
    """

    def register(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"merge method {name!r} registered twice")
        params_tuple = tuple(params)
        check_signature(name, fn, params_tuple)
        REGISTRY[name] = MergeMethod(
            name=name,
            title=title,
            family=family,
            space=space,
            source=source,
            variant=variant,
            fn=fn,
            params=params_tuple,
            needs_base=needs_base,
            randomised=randomised,
            min_experts=min_experts,
            statistics=statistics,
            tensor_statistics=tensor_statistics,
            blockwise=blockwise,
            check=check,
            identical_experts=identical_experts,
            needs=tuple(needs),
            revision=revision,
            doc=(fn.__doc__ or "").strip(),
            _model=_pydantic_model(name, params_tuple),
        )
        return fn

    return register


def get_method(name: str, where: str = "method") -> MergeMethod:
    """The registered method called `name`, or one line suggesting the closest names."""
    import speechmerge.merging.methods  # noqa: F401 - registers every method

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run `speechmerge methods` to list them"
        raise SpeechmergeError(f"{where}: unknown merge method {name!r}; {hint}")
    return REGISTRY[name]


def all_methods() -> list[MergeMethod]:
    import speechmerge.merging.methods  # noqa: F401 - registers every method

    return list(REGISTRY.values())
