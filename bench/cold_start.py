"""Cold start of the explorer, measured in Debian's Chromium: `python bench/cold_start.py [--repeat 3]`.

Each repetition starts a fresh `streamlit run app/main.py` (a new process: nothing imported, nothing warm) with
Chromium already open, and times from the server process's spawn:

* **health**: the server answers /_stcore/health;
* **first view**: the first page (Punchline) shows its precomputed result, i.e. its first PSNR metric is drawn;
* **live ready**: the Live attack page, opened in a second tab right after the first view, offers an enabled
  Run button (the engine is loaded: what a visitor who goes on to run an attack waits for).

The browser navigates as soon as the server is healthy, as a visitor opening the link would. Prints a Markdown
table (each repetition, then the median). Run it on a quiet machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
LIMIT_S = 180.0


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


def one_start(browser, cache_dir: str) -> dict[str, float]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TIP_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not _healthy(url):
                if proc.poll() is not None or time.perf_counter() - t0 > LIMIT_S:
                    log.seek(0)
                    raise SystemExit(f"the server did not start:\n{log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.02)
            health = time.perf_counter() - t0
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="commit")
            page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=LIMIT_S * 1000)
            first_view = time.perf_counter() - t0
            live = browser.new_page(viewport={"width": 1400, "height": 1000})
            live.goto(f"{url}/live", wait_until="commit")
            run = live.get_by_role("button", name="Run attack")
            run.wait_for(timeout=LIMIT_S * 1000)
            live.wait_for_function("(b) => !b.disabled", arg=run.element_handle(), timeout=LIMIT_S * 1000)
            live_ready = time.perf_counter() - t0
            live.close()
            page.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"health": health, "first view": first_view, "live ready": live_ready}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as cache:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        for _ in range(args.repeat):
            rows.append(one_start(browser, cache))
        browser.close()
    load = os.getloadavg()[0]
    print(f"# cold start, {os.cpu_count()} CPUs, load average {load:.1f} at the end; seconds from the server's spawn")
    keys = list(rows[0])
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for i, row in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[k] for r in rows):.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
