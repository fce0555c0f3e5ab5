"""The layer contract (pyproject.toml, ``[tool.importlinter]``) holds on this checkout, and it
would catch an upward import even when it hides inside a function."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("relabel", "models", "resources", "data_checks", "assets", "pipelines")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        # the packages of ``root``, not the installed checkout's
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_and_the_acyclic_packages_hold(project_root):
    result = lint_imports(project_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_lazy_upward_import_breaks_the_contract(project_root, tmp_path):
    for package in PACKAGES:
        shutil.copytree(
            project_root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(project_root / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "relabel" / "labels.py"
    core.write_text(core.read_text() + "\n\ndef _upward():\n    from pipelines import cli  # noqa\n")

    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "relabel is not allowed to import pipelines" in result.stdout
    assert "relabel.labels -> pipelines.cli" in result.stdout
