"""Write the module reference, one page per package with every module of it (run by conf.py).

``api.md`` documents what a user imports (``invsolve.solve``, ``operators.Blur``, ...);
these pages document every module of ``invsolve``, ``operators`` and ``priors`` as it is
laid out, so that a docstring's reference to a helper (``invsolve.schedules``,
``priors.vp.learned_range_variance``) has a target and the ``-W`` build can check it.
Pages go to ``docs/reference/`` (ignored by git); the module list is read from the
packages, so a new module appears without editing anything.
"""

from __future__ import annotations

import pkgutil
import sys
from importlib import import_module
from pathlib import Path

DOCS = Path(__file__).resolve().parent
OUT = DOCS / "reference"
PACKAGES = {
    "invsolve": "The entry point, results, I/O, metrics, schedules, the command line and the methods.",
    "operators": "The forward operators, their closed forms and SVDs.",
    "priors": "The priors behind the VE-denoiser contract, their loaders and wrappers.",
}


def modules(package: str) -> dict[str, bool]:
    """Every public module of ``package``: name -> whether it is a package (an ``__init__``)."""
    root = import_module(package)
    names = {package: True}
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            names[info.name] = info.ispkg
    return dict(sorted(names.items()))


def page(package: str) -> str:
    lines = [f"# `{package}` modules", "", PACKAGES[package], ""]
    for name, is_package in modules(package).items():
        # a package's __init__ re-exports its modules' objects (documented under their
        # modules here, and under the package in api.md): its docstring only
        options = ["   :no-members:"] if is_package else ["   :members:", "   :undoc-members:"]
        lines += [f"## `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", *options, "```", ""]
    return "\n".join(lines)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    pages = {"index": "\n".join([
        "# Module reference", "",
        "Every module of the three packages, generated from the docstrings. What a user",
        "imports is in {doc}`../api`.", "",
        "```{toctree}", ":maxdepth: 1", "", *PACKAGES, "```", "",
    ])}
    pages.update({package: page(package) for package in PACKAGES})
    for name, text in pages.items():
        target = OUT / f"{name}.md"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(DOCS.parent))
    main()
