"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The root of this checkout (params.yaml, dvc.yaml, workspace.yaml)."""
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def coco_mini_dir() -> Path:
    """The 80 real COCO photos in ../shared/data/coco-mini; the test skips where it is absent."""
    path = SHARED_DATA / "coco-mini"
    if not (path / "annotations" / "instances.json").is_file():
        pytest.skip(f"coco-mini is not present at {path}")
    return path
