"""Run pressed → first snapshot, with a fresh worker and with the server's warm spare: `python bench/run_latency.py`.

Two measurements of the class demo's run (LeNet, iDLG, no defense, the gallery's first image):

* **engine**: ``tipcore.explorer.worker`` alone, in this process: a fresh ``WorkerRun`` (spawn, import torch
  and the engine, run) against ``Spare.take`` on a spare that has reported Ready; seconds from the call to
  the first ``LiveSnapshot``, ``--repeat`` times each.
* **browser** (unless ``--no-browser``): a fresh `streamlit run app/main.py` in Debian's Chromium; the Live
  page is opened, the bench waits until the server's spare worker is idle (it has loaded the engine and waits
  for a plan: its CPU time stops growing), presses Run and times until the live panel draws its first
  attack step ("step N · loss ..."). The panel polls every 0.75 s, so up to that much of the time is the poll.
  Then the same run with 5000 iterations is stopped with the page's Stop once it draws its steps: seconds
  from the click to the page showing the stopped results ("Stopped early").

Prints a Markdown table. Run it on a quiet machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cold_start import CHROMIUM, _free_port, _healthy  # noqa: E402
from tipcore.explorer import worker  # noqa: E402  (no torch at import)

LIMIT_S = 180.0


def demo_plan() -> list:
    from tipcore.federation.fl import RoundConfig
    from tipcore.pipeline import experiment

    spec = experiment.RunSpec(model="lenet", round=RoundConfig(clip=5.0), defense="none", attack="idlg",
                              attack_cfg={"iterations": 50}, report_every=1)
    return [("none", spec)]


def first_snapshot(run: worker.WorkerRun, t0: float) -> float:
    try:
        while True:
            for event in run.events(timeout=0.05):
                if isinstance(event, worker.LiveSnapshot):
                    return time.perf_counter() - t0
            if run.finished or time.perf_counter() - t0 > LIMIT_S:
                raise SystemExit("the worker ended without a snapshot")
    finally:
        run.close()


def engine(repeat: int) -> dict[str, list[float]]:
    plan = demo_plan()
    out: dict[str, list[float]] = {"fresh worker": [], "warm spare": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        out["fresh worker"].append(first_snapshot(worker.WorkerRun(plan).start(), t0))
        spare = worker.Spare()
        spare.refill()
        waiting = spare.waiting()
        while not waiting.ready:
            waiting.events(timeout=0.1)
        t0 = time.perf_counter()
        out["warm spare"].append(first_snapshot(spare.take(plan), t0))
    return out


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def _wait_for_idle_spare(server_pid: int) -> None:
    """Until a child of the server (the spare) has used no CPU for a second: it has loaded and waits."""
    deadline = time.monotonic() + LIMIT_S
    last: dict[int, int | None] = {}
    while time.monotonic() < deadline:
        now = {pid: _cpu_ticks(pid) for pid in _children(server_pid)}
        if any(pid in last and ticks is not None and ticks == last[pid] and ticks > 50 for pid, ticks in now.items()):
            return
        last = now
        time.sleep(1.0)
    raise SystemExit("no idle spare worker appeared")


def browser(repeat: int) -> tuple[list[float], list[float]]:
    """(Run → first step drawn, Stop → the stopped results drawn) on a warm server."""
    from playwright.sync_api import sync_playwright

    times, stops = [], []
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryFile() as log, sync_playwright() as p:
        env = dict(os.environ, TIP_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + LIMIT_S
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)
            b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            for i in range(repeat):
                # a new seed each time: the result cache must not answer instead of the worker
                page.goto(f"{url}/live?seed={100 + i}", wait_until="domcontentloaded")
                run = page.get_by_role("button", name="Run attack")
                run.wait_for(timeout=LIMIT_S * 1000)
                page.wait_for_function("(b) => !b.disabled", arg=run.element_handle(), timeout=LIMIT_S * 1000)
                _wait_for_idle_spare(proc.pid)
                t0 = time.perf_counter()
                run.click()
                page.get_by_text(re.compile(r"^step \d+ · loss")).first.wait_for(timeout=LIMIT_S * 1000)
                times.append(time.perf_counter() - t0)
                page.get_by_text("Results").first.wait_for(timeout=LIMIT_S * 1000)
            for i in range(repeat):  # a long attack, stopped with the page's Stop once it draws its steps
                page.goto(f"{url}/live?seed={200 + i}&iterations=5000", wait_until="domcontentloaded")
                run = page.get_by_role("button", name="Run attack")
                run.wait_for(timeout=LIMIT_S * 1000)
                page.wait_for_function("(b) => !b.disabled", arg=run.element_handle(), timeout=LIMIT_S * 1000)
                _wait_for_idle_spare(proc.pid)
                run.click()
                page.get_by_text(re.compile(r"^step \d+ · loss")).first.wait_for(timeout=LIMIT_S * 1000)
                t0 = time.perf_counter()
                page.locator(".st-key-stop_live").get_by_role("button").click()
                page.get_by_text("Stopped early").first.wait_for(timeout=LIMIT_S * 1000)
                stops.append(time.perf_counter() - t0)
            b.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return times, stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    rows = engine(args.repeat)
    if not args.no_browser:
        if not CHROMIUM.exists():
            raise SystemExit(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
        runs, stops = browser(args.repeat)
        rows["browser: Run → first step drawn (warm server)"] = runs
        rows["browser: page Stop → stopped results drawn"] = stops
    print(f"# Run → first snapshot, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; seconds")
    print("| path | " + " | ".join(f"run {i + 1}" for i in range(args.repeat)) + " | median |")
    print("|---|" + "---|" * (args.repeat + 1))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
