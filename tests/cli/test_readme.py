"""The README as a newcomer uses it: its code runs as written, its commands match CI, its links resolve.

The README's Python and shell quick starts are executed here exactly as printed (the shell
lines through ``invsolve.cli.main`` in a scratch folder that holds the image they name);
its list of parts must name every registered operator and method; it stays short (issue
21: at most 12 KB), and everything else lives in ``docs/``, whose pages these links reach.
"""

from __future__ import annotations

import re
import shlex
import shutil
import warnings
from pathlib import Path

import operators
from invsolve import methods
from invsolve.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXECUTED = "<!-- executed by tests/cli/test_readme.py -->"


def blocks_after(text: str, marker: str) -> list[str]:
    """The fenced code block that follows each occurrence of ``marker``."""
    return [
        re.search(r"```(?:python|bash)\n(.*?)```", part, re.DOTALL).group(1)
        for part in text.split(marker)[1:]
    ]


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_is_at_most_12_kb():
    assert len(README.read_bytes()) <= 12 * 1024


def test_readme_python_quick_start_runs(capsys):
    python = [b for b in blocks_after(README.read_text(), EXECUTED) if "import" in b]
    assert len(python) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a newcomer's first example prints no warning
        exec(compile(python[0], "README.md", "exec"), {"__name__": "readme"})
    stdout = capsys.readouterr().out
    assert "ddrm: MatrixOperator has an SVD" in stdout
    assert "posterior mean" in stdout and "exact posterior mean" in stdout


def test_readme_shell_quick_start_runs(tmp_path, monkeypatch):
    shell = [b for b in blocks_after(README.read_text(), EXECUTED) if "import" not in b]
    assert len(shell) == 1
    commands = shell_commands(shell[0])
    assert commands and all(c[0] == "invsolve" for c in commands)
    # the README names files of a source checkout; give the scratch folder the same ones
    for command in commands:
        for word in command:
            if (ROOT / word).is_file():
                (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / word, tmp_path / word)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(command[1:]) == 0, shlex.join(command)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    for command in commands:
        if "--output" in command:
            output = command[command.index("--output") + 1]
            assert output in written
            if "--std" in command:
                assert output.replace(".png", ".std.png") in written
            if "--compare" in command:
                assert output.replace(".png", ".compare.png") in written


def test_ci_runs_the_readme_install_and_test_commands():
    text = README.read_text()
    install = blocks_after(text, "## Install")[0].strip()
    test = blocks_after(text, "## Running the tests")[0].strip()
    assert install == 'pip install -e ".[test]"'
    assert test == "python -m pytest -q"
    script = (ROOT / ".ci" / "run").read_text()
    assert test in script.splitlines()
    assert any(line.strip().endswith(install) for line in script.splitlines())
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script


def test_readme_table_names_every_operator_preset_and_method():
    text = README.read_text()
    for name in [*operators.available(), *methods()]:
        assert f"| `{name}` |" in text, (
            f"README.md does not list {name!r}: add a row to the table under 'What is included'"
        )
    for name in operators.presets():
        assert f"`{name}`" in text, f"README.md does not list the preset {name!r}"


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    assert links
    for link in links:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"


def test_getting_started_offline_examples_run(capsys):
    """The docs' getting-started page: the closed-form example and the offline image example."""
    page = (ROOT / "docs" / "getting_started.md").read_text()
    offline = [b for b in re.findall(r"```python\n(.*?)```", page, re.DOTALL) if 'load_prior("google/' not in b]
    assert len(offline) == 2
    for block in offline:
        exec(compile(block, "docs/getting_started.md", "exec"), {"__name__": "docs"})
    printed = capsys.readouterr().out
    assert "exact posterior mean" in printed
    assert float(re.search(r"PSNR ([\d.]+) dB", printed).group(1)) > 20.0


def test_docs_operator_table_names_every_operator():
    page = (ROOT / "docs" / "operators" / "index.md").read_text()
    for name in operators.available():
        assert f"| `{name}` |" in page, f"docs/operators/index.md does not list {name!r}"
