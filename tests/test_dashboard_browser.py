"""The dashboard in a real browser: ``mmai serve`` on 127.0.0.1, driven by headless Chromium.

A tiny memory (synthetic photos with the diary's times and places, two notes) is served by
``mmai_apps.serve.main`` in a subprocess, exactly as ``mmai serve`` runs it. Playwright drives
Debian's Chromium (``/usr/bin/chromium``; ``apt-get install chromium``): a query is typed,
the results gallery fills, a result is clicked and its saliency overlay appears; a photo is
uploaded through the form. Every request the page makes is checked to stay on 127.0.0.1 (nothing
may reach the internet). Screenshots go to ``tmp_path`` and, when ``MMAI_SCREENSHOTS`` is set,
are copied to ``runs/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason=f"{CHROMIUM} is absent: apt-get install chromium to run the browser test")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mmai serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mmai serve did not answer at {url} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def served(tmp_path):
    """URL of ``mmai serve`` over a tiny re-ranker memory (default host: 127.0.0.1)."""
    from test_serve import build_collection
    from tiny_checkpoints import make_reranker_ckpt

    checkpoint = make_reranker_ckpt(tmp_path / "ckpt")
    build_collection(tmp_path, checkpoint).close()
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-c", "import sys; from mmai_apps.serve import main; sys.exit(main(sys.argv[1:]))",
               "--root", str(tmp_path / "memory"), "--port", str(port)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def save(page, folder: Path, name: str) -> Path:
    """A full-page screenshot in ``folder``, copied to runs/screenshots/ when MMAI_SCREENSHOTS is set."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("MMAI_SCREENSHOTS"):
        target = REPO / "runs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / f"dashboard_{path.name}")
    return path


@pytest.mark.slow  # ~40 s: a model load in the server process and a real browser
def test_dashboard_search_select_and_upload_in_headless_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright  # a dev dependency: missing playwright is a failure, not a skip
    from test_serve import jpeg_bytes

    shots = tmp_path / "screenshots"
    shots.mkdir()
    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        def local_only(route):
            if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        page.goto(served)
        page.wait_for_selector("#mmai-query textarea", timeout=120_000)
        save(page, shots, "1_opened")

        page.fill("#mmai-query textarea", "a bird with a long orange bill")
        page.click("#mmai-search")
        results = page.locator("#mmai-results .thumbnail-item")
        results.first.wait_for(timeout=120_000)
        assert results.count() == 12
        assert "12 memories" in page.locator("#mmai-status").inner_text()
        captions = page.locator("#mmai-results").inner_text()
        assert "#1 · " in captions and "#12 · " in captions
        save(page, shots, "2_results")

        page.locator("#mmai-top-down input").check()  # issue 22: the top-down mode from the dashboard
        page.click("#mmai-search")
        page.locator("#mmai-status").get_by_text("top-down: scored").wait_for(timeout=120_000)
        assert "stage 1 (top-down)" in page.locator("#mmai-status").inner_text()
        assert results.count() == 12
        save(page, shots, "2b_top_down")
        page.locator("#mmai-top-down input").uncheck()

        page.locator("#mmai-modality input").click()
        page.get_by_role("option", name="image").click()
        page.click("#mmai-search")
        page.get_by_text("modality=image").wait_for(timeout=120_000)
        assert results.count() == 12  # the 12 photos; the notes are filtered out
        save(page, shots, "3_photos_only")

        results.first.click()
        overlay = page.locator("#mmai-overlay img")
        overlay.wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('#mmai-overlay img').naturalWidth > 0")
        size = overlay.evaluate("image => [image.naturalWidth, image.naturalHeight]")
        assert size[0] > size[1] > 0  # the original | heatmap | overlay panel
        related = page.locator("#mmai-related")
        related.get_by_text("Associated memories").wait_for(timeout=90_000)
        assert "same outing" in related.inner_text() or "similar content" in related.inner_text()
        assert "score" in page.locator("#mmai-details").inner_text()
        save(page, shots, "4_selected_overlay")

        photo, broken = tmp_path / "new_heron.jpg", tmp_path / "broken.jpg"
        photo.write_bytes(jpeg_bytes(7, size=96))
        broken.write_bytes(jpeg_bytes(8, size=96)[:400])
        page.get_by_text("Add memories").click()
        page.locator("#mmai-upload input[type=file]").set_input_files([str(photo), str(broken)])
        # Gradio renders an uploaded file's name as two spans ("broken" ".jpg") once the upload is
        # done, so its text is not "broken.jpg"; the cell's label is.
        page.locator('#mmai-upload [aria-label="broken.jpg"]').wait_for(timeout=90_000)
        page.fill("#mmai-upload-place textarea", "Powai Lake, Mumbai")
        page.locator("#mmai-merge-bursts input").check()  # the write-time policy: nothing here to merge into
        page.click("#mmai-add")
        report = page.locator("#mmai-upload-report")
        report.get_by_text("new_heron.jpg").wait_for(timeout=120_000)
        assert "added new_heron.jpg (image)" in report.inner_text()
        assert "rejected broken.jpg" in report.inner_text() and "corrupt" in report.inner_text()
        save(page, shots, "5_uploaded")

        page.get_by_text("Forget by use").click()  # a preview forgets nothing
        page.fill("#mmai-forget-budget textarea", "100%")
        page.click("#mmai-forget-preview")
        page.locator("#mmai-forget-list").get_by_text("every one of the").wait_for(timeout=120_000)
        page.click("#mmai-forget")
        page.locator("#mmai-forget-report").get_by_text("Preview first").wait_for(timeout=60_000)
        save(page, shots, "6_forget_preview")
        browser.close()

    assert outside == [], f"the page tried to reach the internet: {outside}"
