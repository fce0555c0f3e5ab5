"""The split's audit and the review queue through a real Label Studio 1.23.2, as the README's
steps do them (*Auditing the evaluation split*, *The review queue*), over its HTTP API.

Label Studio is not a dependency of relabel: the test installs it once in a virtual environment
of its own, outside the repository (``label_studio_venv``), and reuses it; it is skipped, with
pip's reason, only where that install fails (no network, say). The server runs on a free
loopback port with a data folder of its own and serves the project's images from disk
(``LOCAL_FILES_DOCUMENT_ROOT`` is the project root); the test signs in as a person would,
creates a personal access token (1.23 refuses legacy tokens by default) and calls the API with
the access token it refreshes from it. On a copy of ``iterated_project`` it then audits the
split and judges iteration 0's review queue: a Label Studio project per phase made with the
phase's ``label_config.xml``, a *Local files* storage at the data folder, the phase's
``tasks.json`` imported, every task annotated (predictions accepted unchanged, a box moved,
a class changed, a caption rewritten, an object deleted, one drawn), the JSON export written
where the phase reads it, and the verdict of every label checked as relabel records it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import requests
import yaml
from dagster import AssetCheckKey, DagsterInstance

from pipelines.cli import main
from pipelines.phases import AUDIT_SPLIT_JOB, QUEUE_REVIEW_JOB, READ_VERDICTS_JOB
from relabel.audit import CAPTION_TASKS
from relabel.evaluation_split import read_freeze
from resources.layout import AUDITED_LABELS, FROZEN_SPLIT, REVIEW_VERDICTS, files_dir
from tests.conftest import free_port, run_job

LABEL_STUDIO_VERSION = "1.23.2"
EMAIL, PASSWORD = "auditor@relabel.example", "relabel-audit-1"
AUDITOR_SOURCE = f"human-audit@{EMAIL}"
STARTUP_SECONDS = 600  # the first start migrates a new database: a minute or two on 2 busy cores
MOVE = 5.0  # percentage points of the image's width a moved box goes right (or left)
NEW_CAPTION = "A person wrote this caption in Label Studio."

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------
# Label Studio: its own environment, a server, a client


def label_studio_venv() -> Path:
    """Where Label Studio is installed: ``$RELABEL_LABEL_STUDIO_VENV``, else
    ``label-studio-1.23.2`` in relabel's folder of the user's cache (``$XDG_CACHE_HOME``, else
    ``~/.cache``). ``make label-studio`` installs the same environment."""
    named = os.environ.get("RELABEL_LABEL_STUDIO_VENV")
    if named:
        return Path(named)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "relabel" / f"label-studio-{LABEL_STUDIO_VERSION}"


def install_label_studio(venv: Path) -> Path:
    """``venv/bin/label-studio``, installed first unless an earlier install finished
    (``.relabel-installed``); a half-made environment is made again. Raises
    ``RuntimeError`` with pip's output where the install fails."""
    command, done = venv / "bin" / "label-studio", venv / ".relabel-installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions at once install it once
        if done.is_file() and command.is_file():
            return command
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        steps = (
            [sys.executable, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                f"label-studio=={LABEL_STUDIO_VERSION}",
            ],
        )
        for step in steps:
            try:
                subprocess.run(
                    step, env=own_environment(), check=True, capture_output=True, text=True, timeout=1800
                )
            except (OSError, subprocess.SubprocessError) as error:
                shutil.rmtree(venv, ignore_errors=True)
                output = (getattr(error, "stderr", None) or getattr(error, "stdout", None) or "").strip()
                raise RuntimeError(f"{' '.join(step[:4])} failed: {error}\n{output[-2000:]}") from error
        done.write_text(f"label-studio=={LABEL_STUDIO_VERSION} in {time.monotonic() - started:.0f} s\n")
        print(f"installed Label Studio {LABEL_STUDIO_VERSION} in {venv} ({done.read_text().strip()})")
    return command


def own_environment() -> dict[str, str]:
    """This process's environment without what belongs to the project's Python: its path would
    shadow Label Studio's apps (``projects``, ``tasks``, ``users``) with this repository's
    modules."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not name.startswith("DJANGO")
    }


@pytest.fixture(scope="session")
def label_studio_command() -> Path:
    """The ``label-studio`` command of its own environment; the test is skipped where it cannot
    be installed."""
    venv = label_studio_venv()
    try:
        return install_label_studio(venv)
    except RuntimeError as error:
        pytest.skip(f"Label Studio {LABEL_STUDIO_VERSION} could not be installed in {venv}: {error}")


@contextlib.contextmanager
def label_studio_server(command: Path, document_root: Path, home: Path) -> Iterator[str]:
    """Label Studio serving ``document_root``'s files, on a free loopback port, its database in
    ``home``, with the user ``EMAIL``; yields its URL. It runs in a session of its own and is
    always stopped: SIGTERM to its process group, SIGKILL where that did not end it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = own_environment()
    env.update(
        LOCAL_FILES_SERVING_ENABLED="true",
        LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        LABEL_STUDIO_BASE_DATA_DIR=str(home / "data"),
        LATEST_VERSION_CHECK="false",  # no call to pypi.org at start
    )
    arguments = ["start", "--internal-host", "127.0.0.1", "--port", str(port), "--no-browser"]
    arguments += ["--username", EMAIL, "--password", PASSWORD]
    log_path = home / "label-studio.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(command), *arguments],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"Label Studio exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"Label Studio not up in {STARTUP_SECONDS} s:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield url
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    for sent, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sent)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)


class LabelStudio:
    """Label Studio's HTTP API with a personal access token: each request carries an access
    token (``Authorization: Bearer``) refreshed from it at ``/api/token/refresh/`` (access
    tokens live 5 minutes)."""

    def __init__(self, url: str, personal_access_token: str):
        self.url, self.token, self.access = url, personal_access_token, ""
        self.renew()

    @classmethod
    def sign_in(cls, url: str, email: str, password: str) -> LabelStudio:
        """Sign in with the login form, create a personal access token as *Account & Settings >
        Personal Access Token > Create* does, then leave the browser session behind: every
        later call authenticates with the token only."""
        with requests.Session() as browser:
            browser.get(f"{url}/user/login/", timeout=30).raise_for_status()
            form = {"email": email, "password": password, "csrfmiddlewaretoken": browser.cookies["csrftoken"]}
            signed_in = browser.post(
                f"{url}/user/login/", data=form, headers={"Referer": f"{url}/user/login/"}, timeout=30
            )
            assert signed_in.ok and "sessionid" in browser.cookies, signed_in.text[-500:]
            created = browser.post(
                f"{url}/api/token/",
                headers={"X-CSRFToken": browser.cookies["csrftoken"], "Referer": f"{url}/"},
                timeout=30,
            )
            assert created.status_code == 201, created.text
        return cls(url, created.json()["token"])

    def renew(self) -> None:
        response = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": self.token}, timeout=30)
        assert response.status_code == 200, response.text
        self.access = response.json()["access"]

    def get(self, path: str, **options: Any) -> requests.Response:
        return self.call("GET", path, **options)

    def post(self, path: str, **options: Any) -> requests.Response:
        return self.call("POST", path, **options)

    def call(self, method: str, path: str, expect: int | None = None, **options: Any) -> requests.Response:
        """``method path`` (a path of the server, ``/api/...`` or a file URL of a task); fails
        unless the answer is ``expect`` (else any 2xx)."""
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.access}"}
            response = requests.request(method, self.url + path, headers=headers, timeout=120, **options)
            if response.status_code != 401 or attempt == 2:
                break
            self.renew()  # the access token expired
        if expect is None:
            assert response.ok, f"{method} {path}: {response.status_code} {response.text[:1000]}"
        else:
            assert response.status_code == expect, (
                f"{method} {path}: {response.status_code} {response.text[:1000]}"
            )
        return response

    def project(self, title: str, folder: Path, storage: Path) -> int:
        """A project made with ``folder``'s ``label_config.xml``, a *Local files* storage at
        ``storage`` (not synced: the tasks name their images) and ``folder``'s ``tasks.json``
        imported; its id."""
        config = (folder / "label_config.xml").read_text()
        project = self.post("/api/projects/", json={"title": title, "label_config": config}).json()["id"]
        local_files = {
            "project": project,
            "title": "project data",
            "path": str(storage),
            "use_blob_urls": False,
        }
        self.post("/api/storages/localfiles/", json=local_files, expect=201)
        tasks = json.loads((folder / "tasks.json").read_text())
        imported = self.post(f"/api/projects/{project}/import", json=tasks, expect=201).json()
        assert imported["task_count"] == len(tasks), imported
        return project

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project, with its predictions, as Label Studio holds them."""
        listed = self.get("/api/tasks/", params={"project": project, "page_size": 10_000}).json()["tasks"]
        return [self.get(f"/api/tasks/{task['id']}/").json() for task in listed]

    def annotate(self, task: dict, result: list[dict]) -> None:
        """Submit an annotation of ``task`` (as the *Submit* button does), started from its
        prediction."""
        annotation = {
            "result": result,
            "was_cancelled": False,
            "parent_prediction": task["predictions"][0]["id"],
        }
        self.post(f"/api/tasks/{task['id']}/annotations/", json=annotation, expect=201)

    def export(self, project: int) -> list[dict]:
        """The project's JSON export, each annotation's ``completed_by`` the user (id, email,
        name), not only their id: a snapshot export with ``annotations__completed_by``'s
        ``only_id`` false, downloaded as JSON."""
        options = {"annotations__completed_by": {"only_id": False}}
        snapshot = self.post(
            f"/api/projects/{project}/exports/", json={"title": "relabel", "serialization_options": options}
        ).json()
        for _ in range(120):
            status = self.get(f"/api/projects/{project}/exports/{snapshot['id']}").json()["status"]
            if status in ("completed", "failed"):
                break
            time.sleep(1)
        assert status == "completed", status
        download = f"/api/projects/{project}/exports/{snapshot['id']}/download"
        return self.get(download, params={"exportType": "JSON"}).json()


# --------------------------------------------------------------------------------------
# an auditor's hand: what a person does to a task in the labeling interface


def regions(results: list[dict]) -> dict[str, list[dict]]:
    """A task's results by the region they show: an object's polygon (``<id>_p``) with its
    box."""
    grouped: dict[str, list[dict]] = {}
    for result in results:
        region = result["id"]
        if result["from_name"] == "object_polygon":
            region = region.removesuffix("_p")
        grouped.setdefault(region, []).append(result)
    return grouped


def is_object(parts: list[dict]) -> bool:
    return all(part["from_name"] in ("object", "object_polygon") for part in parts)


def is_caption(parts: list[dict]) -> bool:
    return all(part["type"] == "textarea" and part["from_name"].startswith(CAPTION_TASKS) for part in parts)


def moved(parts: list[dict]) -> list[dict]:
    """The object moved right by MOVE percentage points of the width (left where it would
    leave the image): its box and its polygon."""
    right = max(
        part["value"]["x"] + part["value"]["width"]
        if "width" in part["value"]
        else max(x for x, _ in part["value"]["points"])
        for part in parts
    )
    step = MOVE if right + MOVE <= 100 else -MOVE
    parts = copy.deepcopy(parts)
    for part in parts:
        value = part["value"]
        if "points" in value:
            value["points"] = [[x + step, y] for x, y in value["points"]]
        else:
            value["x"] += step
    return parts


def relabelled(parts: list[dict], category: str) -> list[dict]:
    parts = copy.deepcopy(parts)
    for part in parts:
        part["value"][part["type"]] = [category]
    return parts


def with_box_deleted(parts: list[dict]) -> list[dict]:
    """What is left of an object once the auditor deleted it: of an object shown as a box and a
    polygon, the polygon (they deleted the box); of one shown once, nothing."""
    return [part for part in parts if part["from_name"] == "object_polygon"] if len(parts) > 1 else []


def rewritten(parts: list[dict], text: str) -> list[dict]:
    parts = copy.deepcopy(parts)
    for part in parts:
        part["value"]["text"] = [text]
    return parts


def drawn(region_id: str, category: str, width: int, height: int) -> dict:
    """A box the auditor drew, as the labeling interface writes it: a new region id, the box in
    percent of the image."""
    return {
        "id": region_id,
        "from_name": "object",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 10.0,
            "y": 12.5,
            "width": 25.0,
            "height": 20.0,
            "rotation": 0,
            "rectanglelabels": [category],
        },
    }


def is_grounding(parts: list[dict]) -> bool:
    return any(part["from_name"] == "phrase_grounding_text" for part in parts)


def with_phrase(parts: list[dict], phrase: str) -> list[dict]:
    """A phrase grounding whose phrase the auditor typed anew."""
    parts = copy.deepcopy(parts)
    for part in parts:
        if part["from_name"] == "phrase_grounding_text":
            part["value"]["text"] = [phrase]
    return parts


def edited(action: str, parts: list[dict], category: str | None, phrase: str | None) -> list[dict]:
    """The results a region's ``parts`` become when the auditor does ``action``."""
    if action == "rephrased":
        return with_phrase(parts, phrase)
    if action == "deleted":
        return with_box_deleted(parts)
    if action == "moved":
        return moved(parts)
    if action == "relabelled":
        return relabelled(parts, category)
    if action == "rewritten":
        return rewritten(parts, NEW_CAPTION)
    return copy.deepcopy(parts)  # accepted: submitted as predicted


OBJECT_ACTIONS = ("accepted", "deleted", "moved", "relabelled")
"""What the auditor does to the objects shown, in order (one each), the rest accepted."""


def audit_in_label_studio(client: LabelStudio, project: int, categories: list[str]) -> dict[str, dict]:
    """Annotate every task of ``project``: the objects (by label id) get OBJECT_ACTIONS in
    order, the first caption is rewritten, one new object is drawn on the first image, and
    everything else is submitted as predicted. Returns what was done, by label id (``"new"``
    for the drawn object): ``{"action", "parts": the results sent, ...}``."""
    done: dict[str, dict] = {}
    objects = iter(OBJECT_ACTIONS)
    rewrote = rephrased = drew = False
    for task in sorted(client.tasks(project), key=lambda task: task["data"]["image_id"]):
        result: list[dict] = []
        for region_id, parts in sorted(regions(task["predictions"][0]["result"]).items()):
            label_id = parts[0]["meta"]["label_id"]
            action = "accepted"
            if is_object(parts):
                action = next(objects, "accepted")
            elif is_caption(parts) and not rewrote:
                action, rewrote = "rewritten", True
            elif is_grounding(parts) and not rephrased:
                action, rephrased = "rephrased", True
            category = None
            if is_object(parts):  # a class other than its own, for a relabel
                category = next(name for name in categories if name != parts[0]["value"][parts[0]["type"]][0])
            phrase = None
            if action == "rephrased":  # another phrase of its caption, typed in another case
                words = task["data"]["phrase_grounding_texts"][region_id].rstrip(".").split()
                phrase = " ".join(words[-2:]).swapcase()
            sent = edited(action, parts, category, phrase)
            done[label_id] = {"action": action, "parts": sent, "category": category, "phrase": phrase}
            result += sent
        if not drew:
            width, height = task["data"]["width"], task["data"]["height"]
            new = drawn("drawnByHand", categories[-1], width, height)
            done["new"] = {"action": "added", "parts": [new], "width": width, "height": height}
            result.append(new)
            drew = True
        client.annotate(task, result)
    return done


# --------------------------------------------------------------------------------------
# the project, the phases


def failures(result) -> str:
    return "\n".join(event.step_failure_data.error.message for event in result.get_step_failure_events())


@pytest.fixture(scope="module")
def live(label_studio_command, iterated_project, tmp_path_factory):
    """A copy of the iterated tiny project whose audit and review wait for a person
    (``audit.auditor`` and ``review.reviewer``: label-studio), Label Studio serving its files,
    and a client signed in with a personal access token: ``(root, instance, client)``."""
    original, _ = iterated_project
    base = tmp_path_factory.mktemp("label-studio")
    root = base / "project"
    shutil.copytree(original, root, symlinks=True, ignore=shutil.ignore_patterns("dagster_home"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["audit"]["auditor"] = "label-studio"
    params["review"]["reviewer"] = "label-studio"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with (
        pytest.MonkeyPatch.context() as patch,
        DagsterInstance.ephemeral(tempdir=str(base / "dagster_home")) as instance,
        label_studio_server(label_studio_command, root, base / "label-studio") as url,
    ):
        patch.setenv("RELABEL_ROOT", str(root))
        instance.add_dynamic_partitions("iteration", ["0"])
        yield root, instance, LabelStudio.sign_in(url, EMAIL, PASSWORD)


def categories_of(root: Path) -> list[str]:
    ontology = json.loads((root / "data" / "world" / "ontology.json").read_text())
    return [category["name"] for category in ontology["categories"]]


def check_images_load(client: LabelStudio, root: Path, project: int) -> None:
    """Every task's image comes from Label Studio, byte for byte (200, not 403 or 404)."""
    tasks = client.tasks(project)
    assert tasks
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith("/data/local-files/?d="), url
        served = client.get(url, expect=200)
        assert served.content == (root / url.removeprefix("/data/local-files/?d=")).read_bytes(), url


def check_verdicts(
    done: dict[str, dict],
    decisions: pl.DataFrame,
    audited: pl.DataFrame,
    quarantine: pl.DataFrame,
    judged: pl.DataFrame,
) -> None:
    """Each label's verdict is what the auditor did: accepted as predicted, corrected (moved,
    relabelled, rewritten) into a new label that replaces it, rejected (deleted) into the
    quarantine; the drawn object added. ``judged``: the labels the tasks showed. The deleted
    objects are checked last."""
    by_label = {row["label_id"]: row for row in decisions.iter_rows(named=True) if row["label_id"]}
    assert set(by_label) == set(judged["label_id"])
    actions = {label_id: what["action"] for label_id, what in done.items() if label_id != "new"}
    verdict = {
        "accepted": "accepted",
        "moved": "corrected",
        "relabelled": "corrected",
        "rewritten": "corrected",
    }
    kept = [label_id for label_id, action in actions.items() if action not in ("deleted", "rephrased")]
    assert {label_id: by_label[label_id]["decision"] for label_id in kept} == {
        label_id: verdict[actions[label_id]] for label_id in kept
    }
    # auditors are named: the user's email, never Label Studio's user id
    assert set(decisions["auditor"]) == {EMAIL}
    assert set(audited["source"]) == {AUDITOR_SOURCE}
    assert set(audited["status"].cast(pl.String)) == {"audited"}

    labels = {row["label_id"]: row for row in audited.iter_rows(named=True)}
    before = {row["label_id"]: row for row in judged.iter_rows(named=True)}

    def reasons(label_id: str) -> list[str]:
        return quarantine.filter(pl.col("label_id") == label_id)["reason"].to_list()

    for label_id in kept:
        action, decision, old = actions[label_id], by_label[label_id], before[label_id]
        new = labels[decision["new_label_id"]]
        if action == "accepted":
            assert decision["new_label_id"] == label_id
            assert (new["box"], new["category"], new["text"]) == (old["box"], old["category"], old["text"])
            continue
        assert new["replaces"] == label_id and label_id not in labels
        assert reasons(label_id) == ["corrected_in_audit"]
        if action == "moved":
            # the box the auditor left: the rectangle, else the bounds of the polygon
            assert new["box"] == pytest.approx(box_of(done[label_id]["parts"]), abs=0.01), old["box"]
            assert (
                abs(new["box"][0] - old["box"][0]) > MOVE / 200 * done[label_id]["parts"][0]["original_width"]
            )
            assert new["category"] == old["category"]
        elif action == "relabelled":
            assert new["category"] == done[label_id]["category"] != old["category"]
            assert new["box"] == pytest.approx(old["box"], abs=0.5)
        else:
            assert (new["task"], new["text"]) == (old["task"], NEW_CAPTION)

    (added,) = decisions.filter(pl.col("decision") == "added").iter_rows(named=True)
    new, drew = labels[added["new_label_id"]], done["new"]
    width, height = drew["width"], drew["height"]
    assert (new["task"], new["category"]) == ("object", drew["parts"][0]["value"]["rectanglelabels"][0])
    assert new["box"] == pytest.approx([0.1 * width, 0.125 * height, 0.35 * width, 0.325 * height], abs=0.01)

    # a phrase typed in another case than its caption's is found in the caption
    for label_id in [label_id for label_id, action in actions.items() if action == "rephrased"]:
        assert by_label[label_id]["decision"] == "corrected", by_label[label_id]
        new, old = labels[by_label[label_id]["new_label_id"]], before[label_id]
        assert new["text"] == old["text"] and new["replaces"] == label_id
        assert (
            new["text"][new["phrase_start"] : new["phrase_end"]].lower() == done[label_id]["phrase"].lower()
        )

    # an object deleted is rejected, also one whose box the auditor deleted and whose polygon
    # (a region of its own in Label Studio) is left
    deleted = [label_id for label_id, action in actions.items() if action == "deleted"]
    assert {label_id: by_label[label_id]["decision"] for label_id in deleted} == dict.fromkeys(
        deleted, "rejected"
    )
    for label_id in deleted:
        assert by_label[label_id]["new_label_id"] is None and label_id not in labels
        assert reasons(label_id) == ["rejected_in_audit"]


def box_of(parts: list[dict]) -> list[float]:
    """``[x0, y0, x1, y1]`` in pixels of a region's rectangle, else of its polygon's bounds."""
    width, height = parts[0]["original_width"], parts[0]["original_height"]
    for part in parts:
        if part["type"] == "rectanglelabels":
            value = part["value"]
            x, y, w, h = (value[key] for key in ("x", "y", "width", "height"))
            return [x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100]
    xs, ys = zip(*parts[0]["value"]["points"], strict=True)
    return [min(xs) * width / 100, min(ys) * height / 100, max(xs) * width / 100, max(ys) * height / 100]


# --------------------------------------------------------------------------------------
# the tests


def test_a_person_audits_the_split_in_label_studio(live):
    root, instance, client = live
    data = root / "data"
    folder = files_dir(AUDITED_LABELS, data)
    # README step 1, for a re-audit: lift the freeze; the audit phase writes the tasks and
    # stops for the person
    assert (
        main(["--root", str(root), "unfreeze", "--by", "maria", "--reason", "audited in Label Studio"]) == 0
    )
    (folder / "completed.json").unlink()
    waiting = run_job(root, instance, AUDIT_SPLIT_JOB)
    assert not waiting.success and f"no completed audit at {folder / 'completed.json'}" in failures(waiting)

    # steps 2 to 5: a project with the phase's config, storage and tasks; audit; export
    project = client.project("relabel audit", folder, storage=data)
    check_images_load(client, root, project)
    done = audit_in_label_studio(client, project, categories_of(root))
    assert {what["action"] for what in done.values()} >= {
        "accepted",
        "deleted",
        "moved",
        "rewritten",
        "added",
    }
    export = client.export(project)
    (folder / "completed.json").write_text(json.dumps(export, indent=1) + "\n")
    audited_run = run_job(root, instance, AUDIT_SPLIT_JOB)
    assert audited_run.success, failures(audited_run)

    record = read_freeze(files_dir(FROZEN_SPLIT, data))
    assert record["auditors"] == [EMAIL]
    (check,) = [
        evaluation
        for evaluation in audited_run.get_asset_check_evaluations()
        if evaluation.asset_check_key == AssetCheckKey(FROZEN_SPLIT, "split_unchanged")
    ]
    assert check.passed

    tasks = json.loads((folder / "tasks.json").read_text())
    shown = {result["meta"]["label_id"] for task in tasks for result in task["predictions"][0]["result"]}
    human = pl.read_parquet(data / "ingest" / "human_labels" / "*.parquet")
    check_verdicts(
        done,
        pl.read_parquet(folder / "decisions.parquet"),
        pl.read_parquet(data / "audit" / "audited_labels.parquet"),
        pl.read_parquet(folder / "quarantine.parquet"),
        human.filter(pl.col("label_id").is_in(list(shown))),
    )


def test_a_person_judges_the_review_queue_in_label_studio(live):
    root, instance, client = live
    data = root / "data"
    folder = files_dir(REVIEW_VERDICTS, data, "0")
    (folder / "completed.json").unlink()
    waiting = run_job(root, instance, QUEUE_REVIEW_JOB, "0")
    assert waiting.success, failures(waiting)
    waiting = run_job(root, instance, READ_VERDICTS_JOB, "0")
    assert not waiting.success and f"no completed audit at {folder / 'completed.json'}" in failures(waiting)

    project = client.project("relabel review, iteration 0", folder, storage=data)
    check_images_load(client, root, project)
    done = audit_in_label_studio(client, project, categories_of(root))
    assert {what["action"] for what in done.values()} == {
        "accepted",
        "deleted",
        "moved",
        "relabelled",
        "rewritten",
        "rephrased",
        "added",
    }
    (folder / "completed.json").write_text(json.dumps(client.export(project), indent=1) + "\n")
    judged_run = run_job(root, instance, READ_VERDICTS_JOB, "0")
    assert judged_run.success, failures(judged_run)

    queue = pl.read_parquet(data / "review" / "queue" / "0.parquet")
    filtered = pl.read_parquet(data / "filter" / "filtered_labels" / "iteration-0" / "*.parquet")
    check_verdicts(
        done,
        pl.read_parquet(folder / "decisions.parquet"),
        pl.read_parquet(data / "review" / "verdicts" / "0.parquet"),
        pl.read_parquet(folder / "quarantine.parquet"),
        filtered.filter(pl.col("label_id").is_in(queue["label_id"].implode())),
    )


def test_every_image_of_every_source_loads_from_a_storage_at_the_data_folder(live):
    """A *Local files* storage at the data folder serves the images of every source (the
    world's renders in ``data/world/images`` and its alt-text images in ``data/world/web``) by
    the URL the tasks name them with; one at ``data/world/images`` serves only the first."""
    from assets.audit import image_url_for
    from resources.services import ProjectResource

    root, _, client = live
    data = root / "data"
    image_url = image_url_for(ProjectResource(root=str(root)))
    uris = pl.read_parquet(data / "ingest" / "images" / "*.parquet")["uri"].to_list()
    assert {uri.split("/")[1] for uri in uris} == {"images", "web"}
    folder = files_dir(AUDITED_LABELS, data)
    # only this test's projects grant access to files: the other tests' go
    for project in client.get("/api/projects/", params={"page_size": 1000}).json()["results"]:
        client.call("DELETE", f"/api/projects/{project['id']}/", expect=204)
    narrow = client.project("the renders only", folder, storage=data / "world" / "images")
    for uri in uris:
        client.get(image_url(uri), expect=200 if uri.startswith("world/images/") else 404)
    client.call("DELETE", f"/api/projects/{narrow}/", expect=204)
    client.project("every source", folder, storage=data)
    for uri in uris:
        assert client.get(image_url(uri), expect=200).content == (data / uri).read_bytes(), uri
