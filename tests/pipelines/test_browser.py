"""The Dagster UI in a real browser: `relabel ui` on the session's tiny project taken through
iteration 0's model, opened in headless Chromium (Debian's, driven by Playwright). The pages a
person reads have no dead ends: the asset lineage, a gate's check with its Data Docs link
(http, and it loads), the held-out report with its plots, the training curve, the runs; no
broken image, no ``file://`` link, no GraphQL error and no error in the browser's console on
any of them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import RELABEL, default_sigint, graphql

pytestmark = pytest.mark.slow

LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }
"""
# the pages that matter, and what each must show
LINEAGE = "/asset-groups"
GATE = "/assets/audit/frozen_split?view=checks"
HELDOUT = "/assets/model/heldout_scores"
MODEL = "/assets/model/florence2"
RUNS = "/runs"


def _chromium() -> str:
    """Debian's Chromium: found, or installed with apt-get where this runs as root; else the
    test is skipped, saying why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        reason = "no chromium on PATH, and apt-get cannot install it here (not root, or no apt-get)"
    else:
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, capture_output=True, timeout=900, check=False).returncode != 0:
            # stale package lists: update them and try once more
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=900, check=False)
            subprocess.run(install, capture_output=True, timeout=900, check=False)
        found = shutil.which("chromium")
        if found:
            return found
        reason = "apt-get install -y chromium gave no chromium on PATH (no network or no such package?)"
    print(f"test_browser skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> tuple:
    """Playwright's sync API and the path of Chromium; the test is skipped, saying why, before
    anything is materialized where either is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip: playwright)"
    )
    return sync_api, _chromium()


@pytest.fixture(scope="module")
def ui_project(browser, headless_project, iterated_project):
    """The session's project taken through iteration 0's model and into iteration 1
    (``iterated_project``), its runs in its own Dagster instance (asking for
    ``headless_project`` makes the session's project the command line's, whose instance is
    persistent, so that ``dagster dev`` reads it): ``(root, Dagster home)``."""
    root, _ = iterated_project
    home = root / "data" / "dagster_home"
    assert (home / "dagster.yaml").is_file(), home
    return root, home


def _ui_params(root: Path):
    from relabel.config import load_params

    return load_params(root / "params.yaml").ui


def _wait_for_ui(server: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{base}/server_info", timeout=2).ok:
                entries = graphql(f"{base}/graphql", LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
                if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                    return
        except requests.ConnectionError:
            pass
        assert server.poll() is None, f"relabel ui exited with {server.returncode}"
        assert time.monotonic() < deadline, "relabel ui did not come up in 180 s"
        time.sleep(1)


class _Problems:
    """What the browser met that a person would see as broken: GraphQL errors, console errors,
    uncaught page errors, ``file://`` links and images that did not load."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def watch(self, page) -> None:
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.found.append(f"{page.url}: page error {error}"))
        page.on("response", self._response)

    def _console(self, page, message) -> None:
        if message.type == "error":
            self.found.append(f"{page.url}: console error {message.text}")

    def _response(self, response) -> None:
        if "/graphql" not in response.url or response.request.method != "POST":
            return
        try:
            body = response.json()
        except Exception:  # a response the page did not read to the end (it navigated on)
            return
        if isinstance(body, dict) and body.get("errors"):
            self.found.append(f"GraphQL error: {str(body['errors'])[:500]}")

    def check_page(self, page) -> None:
        """No ``file://`` link and no broken image on what ``page`` shows now."""
        hrefs = page.eval_on_selector_all("a[href]", "links => links.map(link => link.href)")
        self.found += [f"{page.url}: file link {href}" for href in hrefs if href.startswith("file:")]
        images = page.eval_on_selector_all(
            "img",
            "images => images.map(image => [image.src.slice(0, 80), image.complete, image.naturalWidth])",
        )
        self.found += [
            f"{page.url}: broken image {src}" for src, done, width in images if not (done and width)
        ]


def _show_markdown(page, key: str):
    """The dialog in which the asset page shows its Markdown metadata entry ``key``."""
    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first
    row.get_by_text("[Show Markdown]").click()
    return page.get_by_role("dialog")


def _expect_pictures(sync_api, dialog, count: int) -> None:
    """``count`` pictures in ``dialog``, each decoded (a broken image has no natural width)."""
    pictures = dialog.locator("img")
    sync_api.expect(pictures).to_have_count(count)
    for picture in pictures.all():
        picture.scroll_into_view_if_needed()
        assert picture.evaluate("image => image.complete && image.naturalWidth > 0"), picture


def _open(page, url: str) -> None:
    response = page.goto(url, wait_until="networkidle")
    assert response is not None and response.ok, url
    # Dagster's first-visit "Join the Dagster community" dialog covers the page
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()


def test_the_ui_pages_that_matter_have_no_dead_ends(browser, ui_project, tmp_path):
    sync_api, chromium = browser
    root, home = ui_project
    ui = _ui_params(root)
    base = f"http://{ui.host}:{ui.dagster_port}"
    env = {**os.environ, "RELABEL_ROOT": str(root), "DAGSTER_HOME": str(home)}
    started = time.monotonic()
    server = subprocess.Popen(
        [RELABEL, "--root", str(root), "ui", "--no-mlflow"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "ui.log").open("w"),
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    problems = _Problems()
    try:
        _wait_for_ui(server, base)
        up = time.monotonic() - started
        with sync_api.sync_playwright() as playwright:
            chrome = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = chrome.new_page(viewport={"width": 1600, "height": 1000})
            problems.watch(page)

            _open(page, base + LINEAGE)
            for group in ("world", "ingest", "audit", "filter", "model"):
                sync_api.expect(page.get_by_text(group, exact=True).first).to_be_visible()
            problems.check_page(page)

            _open(page, base + GATE)
            sync_api.expect(page.get_by_text("split_unchanged").first).to_be_visible()
            sync_api.expect(page.get_by_text("data_docs", exact=True)).to_be_visible()
            problems.check_page(page)
            docs = page.eval_on_selector_all(
                "a[href]",
                f"links => links.map(link => link.href).filter(h => h.startsWith('{ui.docs_url}/'))",
            )
            assert docs, "the gate's check links no Data Docs page served over http"
            for url in sorted(set(docs)):
                assert requests.get(url, timeout=10).status_code == 200, url
                # the link opens in the browser too (the docs' own CDN styles are not checked)
                docs_page = chrome.new_page()
                response = docs_page.goto(url)
                assert response is not None and response.status == 200, url
                assert docs_page.title() == "Data Docs created by Great Expectations", url
                docs_page.close()

            _open(page, base + HELDOUT)
            dialog = _show_markdown(page, "report")
            sync_api.expect(dialog.get_by_text("Iteration 0 on the frozen split")).to_be_visible()
            _expect_pictures(sync_api, dialog, 4)  # the report's four plots
            problems.check_page(page)
            page.keyboard.press("Escape")

            _open(page, base + MODEL)
            _expect_pictures(sync_api, _show_markdown(page, "training_curve"), 1)
            problems.check_page(page)
            page.keyboard.press("Escape")

            _open(page, base + RUNS)
            sync_api.expect(page.get_by_text("Success").first).to_be_visible()
            problems.check_page(page)
            chrome.close()
        print(
            f"relabel ui up in {up:.0f} s; pages in {time.monotonic() - started - up:.0f} s",
            file=sys.stderr,
        )
    finally:
        # relabel ui stops dagster dev and the docs server on SIGTERM; the group is killed if not
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert not problems.found, "\n".join(problems.found)
