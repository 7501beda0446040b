"""`speechmerge methods` and docs/methods.md, both generated from the registry declarations."""

from __future__ import annotations

from speechmerge.merging.registry import FAMILIES, MergeMethod, all_methods, get_method


def _default_text(value) -> str:
    return "null" if value is None else str(value)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a literal | would end the cell."""
    return text.replace("|", "\\|")


def method_markdown(method: MergeMethod) -> str:
    """One method's section of docs/methods.md."""
    rows = "\n".join(
        f"| `{p.name}` | {p.type.__name__} | `{_default_text(p.default)}` | {_cell(p.range_text())} | {_cell(p.doc)} |"
        for p in method.params
    )
    table = (
        "| parameter | type | default | range | meaning |\n|---|---|---|---|---|\n" + rows
        if method.params
        else "No parameters."
    )
    flags = [
        "needs the base model" if method.needs_base else "works without a base model",
        "operates on task vectors τ_t = θ_t − θ_0" if method.space == "deltas" else "operates on whole weights θ_t",
    ]
    if method.randomised:
        flags.append("randomised (reproducible from `seed`)")
    if method.needs:
        flags.append(
            f"needs data statistics of every expert ({', '.join(method.needs)}): each expert names its `data:`"
        )
    if method.statistics is not None:
        flags.append("may gather whole-model statistics in a first streaming pass")
    if method.identical_experts is not None:
        settings = ", ".join(f"{k}={_default_text(v)}" for k, v in method.identical_experts.params.items())
        flags.append(
            f"identical experts merge to the {method.identical_experts.gives}"
            + (f" with {settings}" if settings else "")
        )
    return (
        f"### `{method.name}` — {method.title}\n\n"
        f"*{method.family}; {'; '.join(flags)}.*\n\n"
        f"Maths: {method.doc}\n\n"
        f"Variant: {method.variant}\n\n"
        f"Source: {method.source}\n\n"
        f"{table}\n"
    )


def methods_markdown() -> str:
    """The whole of docs/methods.md."""
    methods = sorted(all_methods(), key=lambda m: (FAMILIES.index(m.family), m.name))
    sections = []
    for family in FAMILIES:
        members = [m for m in methods if m.family == family]
        if members:
            sections.append(f"## {family.capitalize()}\n\n" + "\n".join(method_markdown(m) for m in members))
    return (
        "# Merge methods\n\n"
        "Generated from the method declarations by `speechmerge methods --markdown > docs/methods.md`; "
        "a test keeps it in step with the code.\n\n"
        "Notation: θ_0 the base, θ_t expert t (t = 1..T) with weight w_t, τ_t = θ_t − θ_0 its task vector. "
        '"Block matrices" are the 2-D linear weights of attention, cross-attention and MLP blocks '
        "(decided from the model's structure, see speechmerge/checkpoints/whisper.py); recipe overrides "
        "(`matrix: true|false`) can change that. Every method computes in float32 (or float64 when asked); "
        "tensors whose task vector is zero in every expert are left as the base's and reported.\n\n"
        + "\n".join(sections)
    )


def print_methods(name: str | None = None, markdown: bool = False) -> None:
    """Print the list of methods (or one method, or the Markdown reference)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if markdown:
        print(methods_markdown(), end="")
        return
    if name:
        console.print(method_markdown(get_method(name)), markup=False, highlight=False)
        return
    table = Table(title="speechmerge merge methods", show_lines=False)
    table.add_column("method", no_wrap=True)
    for column in ("family", "parameters (defaults)", "data needed", "source"):
        table.add_column(column, overflow="fold")
    for method in sorted(all_methods(), key=lambda m: (FAMILIES.index(m.family), m.name)):
        params = ", ".join(f"{p.name}={_default_text(p.default)}" for p in method.params) or "-"
        needs = ", ".join(method.needs) or "-"
        table.add_row(method.name, method.family, params, needs, method.source.split(";")[0])
    console.print(table)
