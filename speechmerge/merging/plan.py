"""From a validated recipe to a merge plan: open every input lazily, check that they share one
Whisper architecture, and decide the fate of every output tensor — before any work is done."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from speechmerge.checkpoints.dtypes import FLOAT_DTYPES
from speechmerge.checkpoints.resolve import Checkpoint, open_checkpoint
from speechmerge.checkpoints.whisper import ARCHITECTURE_KEYS, TensorRole, whisper_layout
from speechmerge.errors import SpeechmergeError
from speechmerge.merging.coefficients import tensor_weights
from speechmerge.merging.registry import MergeMethod, get_method
from speechmerge.recipe import MergeRecipe


@dataclass
class PlanEntry:
    """One output tensor: where it comes from and how it is made."""

    name: str
    shape: tuple[int, ...]
    role: TensorRole
    out_dtype: torch.dtype
    method: MergeMethod | None  # None: copied from the base (`keep: base`)
    params: dict = field(default_factory=dict)
    is_matrix: bool = False
    weights: tuple[float, ...] = ()  # each expert's weight for this tensor (coefficients.tensor_weights)


@dataclass
class MergePlan:
    recipe: MergeRecipe
    base: Checkpoint | None
    experts: list[Checkpoint]
    weights: list  # each expert's weight as the recipe gives it: a number or a list over depth
    entries: list[PlanEntry]
    device: torch.device
    compute_dtype: torch.dtype
    params: dict  # the method's resolved global parameters
    skipped_aliases: list[str]  # tied names present in inputs and not written (proj_out)
    needs: tuple[str, ...] = ()  # data statistics some entry's method reads (see `data_needs`)
    data_statistics: list | None = None  # per expert, filled by merging.api.gather_data_statistics

    @property
    def method(self) -> MergeMethod:
        return get_method(self.recipe.method)

    @property
    def reference(self) -> Checkpoint:
        """The checkpoint that defines the architecture: the base, or the first expert."""
        return self.base if self.base is not None else self.experts[0]


def resolve_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "cuda":
        raise SpeechmergeError("device: cuda was asked for but no CUDA GPU is visible; use device: cpu or auto")
    return torch.device("cpu")


def check_same_architecture(reference: Checkpoint, others: list[Checkpoint]) -> None:
    """Same config (d_model, layers, heads, vocab, ...), tensor names and shapes as the reference."""
    layout = whisper_layout(reference.config)
    expected = {n: r for n, r in layout.roles.items() if n not in layout.tied}
    for ckpt in [reference, *others]:
        for key in ARCHITECTURE_KEYS:
            if ckpt.config.get(key) != reference.config.get(key):
                raise SpeechmergeError(
                    f"{ckpt.path}: config {key} is {ckpt.config.get(key)}, but {reference.path} has "
                    f"{reference.config.get(key)}; all inputs must share one Whisper architecture"
                )
        names = set(ckpt.names())
        missing = [n for n in expected if n not in names]
        if missing:
            raise SpeechmergeError(
                f"{ckpt.path}: tensor {missing[0]} is missing ({len(missing)} missing in all); "
                "the checkpoint is incomplete or not a Whisper model"
            )
        unexpected = sorted(n for n in names if n not in layout.roles)
        if unexpected:
            raise SpeechmergeError(
                f"{ckpt.path}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all) for a Whisper "
                f"architecture; is it a different model type?"
            )
        for name in expected:
            if ckpt.shape(name) != reference.shape(name):
                raise SpeechmergeError(
                    f"{ckpt.path}: tensor {name} has shape {tuple(ckpt.shape(name))}, but {reference.path} has "
                    f"{tuple(reference.shape(name))}; all inputs must share one architecture"
                )
            if not ckpt.dtype(name).is_floating_point:
                raise SpeechmergeError(
                    f"{ckpt.path}: tensor {name} has dtype {ckpt.dtype(name)}; expected floating point"
                )


def _apply_overrides(recipe: MergeRecipe, names: list[str]) -> dict[str, dict]:
    """For each tensor name, the merged override fields of every matching override, in order."""
    patterns = [re.compile(o.match) for o in recipe.overrides]
    found = {}
    for i, (override, pattern) in enumerate(zip(recipe.overrides, patterns)):
        matched = [n for n in names if pattern.fullmatch(n)]
        if not matched:
            raise SpeechmergeError(
                f"{recipe.source}: overrides[{i}].match: {override.match!r} matches no tensor (patterns must match whole names, "
                f"e.g. 'model\\.encoder\\..*'); fix the pattern"
            )
        for name in matched:
            fields = found.setdefault(name, {"params": {}})
            fields["params"].update(override.params)
            for key in ("method", "keep", "matrix", "weights"):
                value = getattr(override, key)
                if value is not None:
                    fields[key] = value
            fields.setdefault("sources", []).append(i)
    return found


def _method_and_params(recipe: MergeRecipe):
    where = recipe.source
    method = get_method(recipe.method, where=f"{where}: method")
    global_params = method.validate(recipe.params, where=where)
    if method.needs_base and recipe.base is None:
        raise SpeechmergeError(f"{where}: base: method {method.name!r} works on task vectors and needs the base model")
    if len(recipe.experts) < method.min_experts:
        raise SpeechmergeError(f"{where}: experts: method {method.name!r} needs at least {method.min_experts} experts")
    return method, global_params


def build_plan(recipe: MergeRecipe) -> MergePlan:
    """Open every input and decide every output tensor's fate; raise before any work on bad input."""
    _method_and_params(recipe)
    base = open_checkpoint(recipe.base, label="base") if recipe.base is not None else None
    experts = [
        open_checkpoint(spec.path, label=recipe.expert_label(i), base=base) for i, spec in enumerate(recipe.experts)
    ]
    reference = base if base is not None else experts[0]
    check_same_architecture(reference, [e for e in experts if e is not reference])
    layout = whisper_layout(reference.config)
    skipped = sorted({n for ckpt in [reference, *experts] for n in ckpt.names() if n in layout.tied})
    opened = MergePlan(recipe, base, experts, [], [], resolve_device(recipe.device), torch.float32, {}, skipped)
    return replan(opened, recipe)


def replan(plan: MergePlan, recipe: MergeRecipe) -> MergePlan:
    """The plan of another recipe over the same opened inputs (same base and expert paths):
    method, parameters, weights and overrides decided again, nothing reopened."""
    where = recipe.source
    method, global_params = _method_and_params(recipe)
    base, reference = plan.base, plan.reference
    layout = whisper_layout(reference.config)
    names = [n for n in reference.names() if n not in layout.tied]
    overrides = _apply_overrides(recipe, names)
    expert_weights = [spec.weight for spec in recipe.experts]
    entries = []
    for name in names:
        fields = overrides.get(name, {"params": {}})
        role = layout.role(name)
        layers = reference.config.get(f"{role.component}_layers", 1)
        weights = tensor_weights(expert_weights, role, layers, fields.get("weights"))
        source_dtype = reference.dtype(name)
        out_dtype = source_dtype if recipe.output_dtype == "base" else FLOAT_DTYPES[recipe.output_dtype]
        shape = tuple(reference.shape(name))
        is_matrix = fields.get("matrix", role.is_block_matrix) and len(shape) == 2
        if fields.get("keep") == "base":
            if base is None:
                raise SpeechmergeError(f"{where}: overrides: keep: base for {name} needs a base model in the recipe")
            entries.append(PlanEntry(name, shape, role, out_dtype, None, {}, is_matrix, weights))
            continue
        tensor_method = (
            get_method(fields["method"], where=f"{where}: overrides (for {name})") if "method" in fields else method
        )
        if tensor_method.needs_base and base is None:
            raise SpeechmergeError(f"{where}: overrides: method {tensor_method.name!r} for {name} needs a base model")
        prefix = f"overrides[{fields['sources'][-1]}].params." if fields.get("sources") else "params."
        base_params = global_params if tensor_method is method else {}
        params = tensor_method.validate({**base_params, **fields["params"]}, where=where, prefix=prefix)
        entries.append(PlanEntry(name, shape, role, out_dtype, tensor_method, params, is_matrix, weights))
    needs = data_needs(recipe, entries)
    return MergePlan(
        recipe=recipe,
        base=base,
        experts=plan.experts,
        weights=expert_weights,
        entries=entries,
        device=resolve_device(recipe.device),
        compute_dtype=FLOAT_DTYPES[recipe.compute_dtype],
        params=global_params,
        skipped_aliases=plan.skipped_aliases,
        needs=needs,
    )


def data_needs(recipe: MergeRecipe, entries: list[PlanEntry]) -> tuple[str, ...]:
    """The data statistics the plan's methods read; every expert must then name its data."""
    needs = tuple(sorted({need for e in entries if e.method is not None for need in e.method.needs}))
    if needs:
        for i, spec in enumerate(recipe.experts):
            if not spec.data:
                users = sorted({e.method.name for e in entries if e.method is not None and e.method.needs})
                raise SpeechmergeError(
                    f"{recipe.source}: experts[{i}] ({recipe.expert_label(i)}): method {', '.join(users)} needs "
                    f"data statistics ({', '.join(needs)}) of each expert; give it data: [manifests of its "
                    "training utterances]"
                )
    return needs
