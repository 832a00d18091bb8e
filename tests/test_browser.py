"""The app in a real browser: start `streamlit run app/main.py`, drive headless Chromium with Playwright,
run a tiny attack on the live page, wait for the reconstructions and take a screenshot.

Needs Chromium at /usr/bin/chromium (`apt-get install -y chromium`); Playwright never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
STARTUP_S = 90
ATTACK_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "(Playwright must not download its own browser)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _healthy(url):
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read().decode(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer {url}/_stcore/health within {STARTUP_S} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture()
def page(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                viewport={"width": 1440, "height": 1700},
            )
            try:
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_live_attack_in_chromium(server: str, page: object, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # A small budget through the URL (the same kind of link a visitor could share): 30 iDLG steps on LeNet
    # are enough for the undefended reconstruction to show the cat, which makes docs/screenshot.png useful.
    page.goto(f"{server}/live?iterations=30&defenses=none,dp_paper,tip&dataset=cifar10&image_id=cifar10-01",
              wait_until="domcontentloaded")
    page.get_by_role("heading", name="Live attack").wait_for(timeout=STARTUP_S * 1000)

    # Pick an image from the gallery thumbnails.
    page.locator(".st-key-browse_gallery").get_by_text("Browse the gallery").click()
    use = page.locator(".st-key-pick_cifar10-00").get_by_role("button", name="Use")
    use.wait_for(timeout=30_000)
    use.click()
    expect(page.get_by_text("cifar10-00 · cat (label 3)").first).to_be_visible(timeout=30_000)
    page.locator(".st-key-browse_gallery").get_by_text("Browse the gallery").click()  # fold the thumbnails

    run = page.get_by_role("button", name="Run attack")
    expect(run).to_be_enabled(timeout=30_000)
    run.click()
    page.get_by_role("heading", name="Results").wait_for(timeout=ATTACK_S * 1000)
    expect(page.get_by_text("PSNR").first).to_be_visible()
    expect(page.get_by_role("button", name="Metrics (CSV)")).to_be_visible()
    page.wait_for_timeout(1500)  # let the images and the loss chart finish drawing

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
    if os.environ.get("TIP_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture only when asked,
        page.screenshot(path=str(SCREENSHOT), full_page=False)  # so a test run never dirties the tree
    assert SCREENSHOT.stat().st_size > 10_000
    assert (tmp_path / "live.png").stat().st_size > 10_000
