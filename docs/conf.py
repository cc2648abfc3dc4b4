"""Sphinx configuration of the invsolve documentation.

Why this stack: Sphinx + sphinx-gallery + myst-parser + furo is what DeepInverse and
scikit-image use for the same job. Sphinx's autodoc builds the API reference from the
docstrings, sphinx-gallery executes the examples under ``docs/examples/`` at build time
(so every picture in the gallery comes from the current code), myst-parser lets the
prose pages be Markdown, and furo is a plain, readable theme.

Pages that depend on the code or on stored results are generated here, before the
build reads any source: one page per registered method (``generate_method_pages.py``)
and the results pages from the committed JSON under ``docs/results/``
(``generate_results_pages.py``). Nothing is downloaded: intersphinx is not used, and
every link check is internal (``nitpicky`` with ``-W``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Import the packages of this checkout (invsolve, operators, priors), not an installed copy.
# docs/ itself stays off sys.path: its folders operators/ and priors/ hold pages, not code.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import runpy  # noqa: E402

for _script in ("generate_method_pages.py", "generate_results_pages.py"):
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
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = False
napoleon_numpy_docstring = False

# Internal link checking: every :doc: / :ref: / cross-reference must resolve (with -W a
# broken one fails the build). Python objects outside this project (torch, typing) are not
# documented here, so references to them are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|typing|collections|numpy|dataclasses|pathlib|argparse|types|PIL)(\..*)?"),
    (r"py:.*", r"(Tensor|Any|Callable|Mapping|Iterable|Sequence|ClassVar|Path|optional)"),
    (r"py:.*", r".*"),  # docstrings mention many objects by short name; autodoc targets are not checked
]
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
