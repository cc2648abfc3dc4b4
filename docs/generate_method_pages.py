"""Write one docs page per registered method, from the method registry (run by conf.py).

Each page is built from the class itself: ``name``, ``summary``, the docstring (paper,
official code, deviations), ``default_steps``, ``needs``, the ``task_defaults`` table
with the source of every row, ``noiseless_only``, ``cost`` and the dataclass fields
with their defaults. Nothing here is typed by hand, so a new method gets its page as
soon as it is registered. The pages go to ``docs/methods/`` (ignored by git).

Docstrings are references (paper, official code, update rule, deviations); what was
measured about a method (benchmark runs, iteration counts, timings) lives in
``docs/method_notes/<name>.md`` and is appended to its page under "Notes and
measurements". ``docs/method_notes/operators.md`` holds the same for the operators'
engines and becomes ``methods/operator_notes``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "methods"
NOTES = Path(__file__).resolve().parent / "method_notes"
OPERATOR_NOTES = "operators"


def code(value: Any) -> str:
    """``value`` as inline code for a Markdown table cell."""
    text = repr(value) if not isinstance(value, str) else repr(value)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") or "–"


def options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"`{key}={value!r}`".replace("|", "\\|") for key, value in options.items()) or "–"


def field_default(item: dataclasses.Field) -> str:
    if item.default is not dataclasses.MISSING:
        return code(item.default)
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return code(item.default_factory())  # type: ignore[misc]
    return "(required)"


def annotation(item: dataclasses.Field) -> str:
    kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
    return "`" + str(kind).replace("|", "\\|") + "`"


def defaults_table(cls: type) -> list[str]:
    rows = dict(cls.task_defaults)
    if not rows:
        return ["No per-task table: every task uses the field defaults below.", ""]
    lines = [
        "Looked up by the operator's `task`, then its family (`kind`); any other task uses the",
        "field defaults and `solve()` warns, naming these tasks. `Result.options['task']` records",
        "the row that applied.",
        "",
        "| task | options | source | noisy measurements (`noise_sigma > 0`) | noisy source |",
        "|---|---|---|---|---|",
    ]
    for task, row in rows.items():
        noisy = options_text(dict(row.noisy)) if row.noisy else "–"
        lines.append(
            f"| `{task}` | {options_text(dict(row.options))} | {cell(row.source)} | {noisy} | {cell(row.noisy_source)} |"
        )
    return [*lines, ""]


def fields_table(cls: type) -> list[str]:
    lines = ["| field | type | default |", "|---|---|---|"]
    for item in dataclasses.fields(cls):
        lines.append(f"| `{item.name}` | {annotation(item)} | {field_default(item)} |")
    return [*lines, ""]


def notes(name: str) -> list[str]:
    """The method's notes file, under its own heading (nothing when it has none).

    The file's headings move one level down, so they nest under "Notes and measurements"."""
    path = NOTES / f"{name}.md"
    if not path.exists():
        return []
    body = [("#" + line) if line.startswith("#") else line for line in path.read_text(encoding="utf-8").splitlines()]
    return ["## Notes and measurements", "", *body, ""]


def page(cls: type) -> str:
    needs = ", ".join(f"`{need}`" for need in cls.needs) or "–"
    cost = getattr(cls, "cost", None)
    lines = [
        f"# `{cls.name}`",
        "",
        cell(cls.summary) if cls.summary else "",
        "",
        "| | |",
        "|---|---|",
        f"| class | `{cls.__module__}.{cls.__qualname__}` |",
        f"| default steps | {cls.default_steps} |",
        f"| needs | {needs} |",
        f"| noiseless only | {cell(cls.noiseless_only) if cls.noiseless_only else 'no'} |",
        f"| cost | {cell(cost) if cost else 'not stated'} |",
        f"| clamps x0 like its official code | {'yes' if cls.clips_denoised else 'no'} |",
        "",
        "`needs` lists what the operator and the prior must provide (`a|b`: either).",
        "",
        "## Reference",
        "",
        "```{eval-rst}",
        f".. autoclass:: {cls.__module__}.{cls.__qualname__}",
        "   :no-members:",
        "   :no-index:",
        "```",
        "",
        "## Defaults per task",
        "",
        *defaults_table(cls),
        "## Hyperparameters",
        "",
        f"Pass any of them to `solve(..., method=\"{cls.name}\", name=value)` or as",
        "`--method-arg name=value` on the command line.",
        "",
        *fields_table(cls),
        *notes(cls.name),
    ]
    return "\n".join(lines)


def index(methods: dict[str, type]) -> str:
    lines = [
        "# Methods",
        "",
        "One page per registered method, generated from the method registry",
        "(`invsolve.samplers.registered()`) when the docs are built. How all of them run",
        "(grids, clamping, batches, seeds) is in {doc}`../method_overview`.",
        "",
        "| method | summary | default steps | needs |",
        "|---|---|---|---|",
    ]
    for name, cls in methods.items():
        needs = ", ".join(f"`{need}`" for need in cls.needs).replace("|", "\\|")
        lines.append(f"| {{doc}}`{name}` | {cell(cls.summary)} | {cls.default_steps} | {needs} |")
    extra = []
    if (NOTES / f"{OPERATOR_NOTES}.md").exists():
        lines += ["", "Measurements of the operators' engines (timings, iteration counts) are in",
                  "{doc}`operator_notes`."]
        extra = ["operator_notes"]
    lines += ["", "```{toctree}", ":hidden:", "", *methods, *extra, "```", ""]
    return "\n".join(lines)


def write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def main() -> None:
    from invsolve.samplers import registered

    methods = dict(sorted(registered().items()))
    OUT.mkdir(exist_ok=True)
    keep = {"index", *methods}
    operator_notes = NOTES / f"{OPERATOR_NOTES}.md"
    if operator_notes.exists():
        keep.add("operator_notes")
        write_if_changed(OUT / "operator_notes.md", operator_notes.read_text(encoding="utf-8"))
    for old in OUT.glob("*.md"):
        if old.stem not in keep:
            old.unlink()
    for name, cls in methods.items():
        write_if_changed(OUT / f"{name}.md", page(cls))
    write_if_changed(OUT / "index.md", index(methods))


if __name__ == "__main__":
    main()
