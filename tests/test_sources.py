"""Every module compiles without a SyntaxWarning: a string followed by a parenthesised string
on the next line is a call of the first, which only fails when that line runs."""

import subprocess
import warnings

import pytest


def _python_files(root):
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True)
    return [root / name for name in listed.stdout.split()]


def test_every_module_compiles_without_a_syntax_warning(project_root):
    files = _python_files(project_root)
    assert len(files) > 100
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)
            try:
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            except SyntaxError as error:
                pytest.fail(f"{path.relative_to(project_root)}: {error}")
