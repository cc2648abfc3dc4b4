"""Sphinx configuration of the invsolve documentation.

Why this stack: Sphinx + sphinx-gallery + myst-parser + furo is what DeepInverse and
scikit-image use for the same job. Sphinx's autodoc builds the API reference from the
docstrings, sphinx-gallery executes the examples under ``docs/examples/`` at build time
(so every picture in the gallery comes from the current code), myst-parser lets the
prose pages be Markdown, and furo is a plain, readable theme.

Pages that depend on the code or on stored results are generated here, before the
build reads any source: one page per registered method (``generate_method_pages.py``)
the results pages from the committed JSON under ``docs/results/``
(``generate_results_pages.py``) and the module reference (``generate_module_pages.py``).
Nothing is downloaded: intersphinx is not used, and
every link check is internal (``nitpicky`` with ``-W``).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Import the packages of this checkout (invsolve, operators, priors), not an installed copy.
# docs/ itself stays off sys.path: its folders operators/ and priors/ hold pages, not code.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import runpy  # noqa: E402

for _script in ("generate_method_pages.py", "generate_results_pages.py", "generate_module_pages.py"):
    runpy.run_path(str(DOCS / _script), run_name="__main__")

project = "invsolve"
author = "the invsolve authors"
copyright = "the invsolve authors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md", "method_notes/*", "results/*.json", "examples/*.py", "examples/README.rst", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.json"]
root_doc = "index"

html_theme = "furo"
html_title = "invsolve"
html_static_path = ["_static"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_inherit_docstrings = False  # torch's own docstrings (autograd.Function, nn.Module) are not ours
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = False
napoleon_numpy_docstring = False

# Internal link checking: every :doc: / :ref: / cross-reference must resolve (with -W a
# broken one fails the build). Only objects outside this project are exempt: the standard
# library, torch and the other third-party packages are not documented here.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|typing|collections|numpy|dataclasses|pathlib|argparse|types|abc|PIL|diffusers|transformers)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Any|Callable|Mapping|Iterable|Sequence|ClassVar|Path|optional)"),
    (r"py:.*", r"(.+\.)?_[A-Za-z]\w*"),  # private names are not part of the documented API
]


def python_object(name: str) -> Any:
    """The object a dotted name denotes (a module, or an attribute of one), or None."""
    if not name:
        return None
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None
        return obj
    return None


def resolve_within_project(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a docstring's reference to one of this project's objects by a name it is not filed under.

    Docstrings name objects as their module sees them: a helper by its bare name
    (``:func:`quad_timesteps```), a class by its package's re-export
    (``invsolve.samplers.DivergenceError`` for ``invsolve.samplers.base.DivergenceError``).
    Such a reference resolves when the documented objects of the project whose names end
    with it (Sphinx's own rule for ``:func:`.name```), narrowed to the member of the class
    the reference is written in where there is one, are all one Python object (filed
    under several names: a class and its re-export). A constant of the reference's own
    module that has no documentation entry is shown unlinked. Anything else (a name that
    exists nowhere, or an ambiguous one) stays unresolved and fails the build.
    """
    if node.get("refdomain") != "py":
        return None
    from sphinx.util.nodes import make_refnode

    domain = env.get_domain("py")
    target = node["reftarget"].lstrip(".~")
    package = target.split(".")[0] if "." in target else None
    last = target.rsplit(".", 1)[-1]
    matches = {
        name: entry for name, entry in domain.objects.items()
        if (name == target or name.endswith("." + target) or (package and name.startswith(package + ".") and name.endswith("." + last)))
        and name.split(".")[0] in ("invsolve", "operators", "priors") and not entry.aliased
    }
    # a member of the class (or module) the reference is written in comes first, also when
    # that class is documented under another name or inherits the member
    context = ".".join(filter(None, (node.get("py:module"), node.get("py:class"))))
    owner = python_object(context) if context else None
    member = getattr(owner, last, None) if owner is not None and "." not in target else None
    if member is not None:
        matches = {name: entry for name, entry in matches.items() if python_object(name) is member} or matches
    if not matches:
        # an undocumented constant of the module the reference is written in (no ``#:``
        # comment): the name exists, so show it unlinked; a name that exists nowhere fails
        module = python_object(node.get("py:module") or "")
        exists = module is not None and "." not in target and hasattr(module, target)
        return contnode if exists else None
    if len(matches) > 1:
        objects = {id(python_object(name)) for name in matches}
        if len(objects) != 1 or python_object(next(iter(matches))) is None:
            return None
    name = min(matches, key=len)  # the shortest name: the package's re-export
    entry = matches[name]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)


def prose_attribute_docstrings() -> None:
    """Attribute docstrings here are prose: "Gaussian-window settings (Wang et al.): ..." has no type.

    Napoleon reads a first line ``X: Y`` of an attribute's docstring as ``type: description``
    and turns ``X`` into a class reference; keep the line whole instead.
    """
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    def parse(self: Any) -> list[str]:
        return self._format_field("", "", self._consume_to_end())

    GoogleDocstring._parse_attribute_docstring = parse


prose_attribute_docstrings()


def setup(app: Any) -> None:
    app.connect("missing-reference", resolve_within_project)


# linkcheck (if someone runs it) must not go to the internet.
linkcheck_ignore = [r"https?://.*"]

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    "abort_on_example_error": True,
}

warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")
