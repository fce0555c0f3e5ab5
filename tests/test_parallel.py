"""`make test` runs the suite in pytest-xdist workers (`--dist loadgroup`) and relies on one
thing it cannot see fail: every test that reads a session project (``SESSION_PROJECTS``) runs in
one worker, so the project is materialized once. A pytest or xdist upgrade that stops the
grouping would only make the suite slower; this test makes it fail instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SESSION_PROJECTS

PROJECT = sorted(SESSION_PROJECTS)[0]
# a test folder whose conftest groups the tests as ours does; each test writes its worker's id
CONFTEST = f"""
import os
from pathlib import Path

import pytest

from tests.conftest import pytest_collection_modifyitems  # the hook under test

SEEN = Path(__file__).parent / "seen"


@pytest.fixture(scope="session")
def {PROJECT}():
    return None


@pytest.fixture
def record(request):
    SEEN.mkdir(exist_ok=True)
    (SEEN / request.node.name).write_text(os.environ["PYTEST_XDIST_WORKER"])
"""
TESTS = f"""
def test_project_a(record, {PROJECT}):
    pass


def test_project_b(record, {PROJECT}):
    pass


def test_project_c(record, {PROJECT}):
    pass
""" + "".join(f"\n\ndef test_other_{n}(record):\n    pass\n" for n in range(6))


def test_the_tests_of_the_session_projects_run_in_one_worker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_grouping.py").write_text(TESTS)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = {path.name: path.read_text() for path in (tmp_path / "seen").iterdir()}
    assert len(workers) == 9
    grouped = {workers[f"test_project_{letter}"] for letter in "abc"}
    assert len(grouped) == 1, workers
    # the rest is spread over both workers: the suite does run in parallel
    assert set(workers.values()) == {"gw0", "gw1"}, workers
