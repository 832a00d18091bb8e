"""The explorer's own work while attacks run beside it: `python bench/app_under_load.py [--threads 2]`.

What the server does when a visitor moves a TIP slider, on LeNet and ConvNet, two ways: the engine's part
(``TipExplainer.preview`` + one kernel's spectra, as bench/app_preview.py measures it alone) and the whole
"How TIP works" page rerun after a slider move (``streamlit.testing`` runs the script in this process, as
the server does: figures, images and all, minus the browser's own drawing). Each is timed

* alone;
* with ``--attacks`` attacks running in ``tipcore.explorer.worker`` processes (niced, one torch thread each: how
  the app runs them now);
* with the same attacks in threads of this process (how the app ran them before), unless ``--no-threads``.

Each attack is Inverting Gradients on ConvNet with far more iterations than the measurement needs; the
timing starts once every attack has reported its first steps and ends by stopping them. Prints a
Markdown table (median and worst of ``--repeat`` slider moves, milliseconds) and the attacks' steps per
second while they ran beside the page. Takes one to two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app sets it (app/main.py)

import torch  # noqa: E402

from bench.common import header  # noqa: E402
from tipcore.federation import data
from tipcore.pipeline import experiment
from tipcore.explorer import worker
from tipcore.explorer.previews import TipExplainer  # noqa: E402
from tipcore.federation.fl import RoundConfig  # noqa: E402

ATTACK = experiment.RunSpec(model="convnet", round=RoundConfig(clip=5.0), defense="none", attack="ig",
                                     attack_cfg={"iterations": 100_000}, report_every=20)
FIRST_SNAPSHOT_S = 180.0


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PageReruns:
    """The "How TIP works" page for one model, rerun after each move of the channel-ratio slider."""

    def __init__(self, model: str) -> None:
        from streamlit.testing.v1 import AppTest

        self.at = AppTest.from_file(os.path.join(ROOT, "app", "main.py"), default_timeout=300)
        self.at.query_params["model"] = model
        self.at.run()
        self.at.switch_page("views/tip.py").run()
        if self.at.exception:
            raise SystemExit(f"the page failed: {[e.value for e in self.at.exception]}")
        self.moves = 0

    def __call__(self, repeat: int) -> list[float]:
        times = []
        for _ in range(repeat):
            self.moves += 1
            value = (0.1, 0.3, 0.6, 0.2)[self.moves % 4]
            t0 = time.perf_counter()
            self.at.slider(key="w_ratio").set_value(value).run()
            times.append(time.perf_counter() - t0)
        return times


def slider_moves(explainer: TipExplainer, repeat: int) -> list[float]:
    """Seconds per slider move (a new ratio each time, so nothing is cached)."""
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        preview = explainer.preview({"ratio": (0.1, 0.3, 0.6)[i % 3], "cutoff": 0.5})
        layer = preview.layers[0]
        preview.kernel(layer.name, layer.selected[0][0])
        times.append(time.perf_counter() - t0)
    return times


class WorkerLoad:
    """``n`` attacks in worker processes; steps counted from their snapshots."""

    def __init__(self, n: int) -> None:
        self.runs = [worker.WorkerRun([(f"load{i}", replace(ATTACK, seed=i))]).start() for i in range(n)]
        self.steps = [0] * n
        self._stop = threading.Event()
        self._seen = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for i, run in enumerate(self.runs):
                for event in run.events(timeout=0.05):
                    if isinstance(event, worker.LiveSnapshot):
                        self.steps[i] = event.step
            if all(self.steps):
                self._seen.set()

    def wait_started(self) -> None:
        if not self._seen.wait(FIRST_SNAPSHOT_S):
            raise SystemExit(f"the attacks reported no step within {FIRST_SNAPSHOT_S:.0f} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for run in self.runs:
            run.close()


class ThreadLoad:
    """``n`` attacks in threads of this process (the app's former way)."""

    def __init__(self, n: int) -> None:
        self.steps = [0] * n
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._attack, args=(i,), daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _attack(self, i: int) -> None:
        def seen(snap, i=i) -> None:
            self.steps[i] = snap.step

        experiment.run(replace(ATTACK, seed=i), should_stop=self._stop.is_set, on_snapshot=seen)

    def wait_started(self) -> None:
        deadline = time.monotonic() + FIRST_SNAPSHOT_S
        while not all(self.steps):
            if time.monotonic() > deadline:
                raise SystemExit(f"the attacks reported no step within {FIRST_SNAPSHOT_S:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def work(explainers: dict[str, TipExplainer], pages: dict[str, PageReruns], repeat: int) -> dict:
    out = {f"engine {name}": slider_moves(ex, repeat) for name, ex in explainers.items()}
    out.update({f"page {name}": page(repeat) for name, page in pages.items()})
    return out


def measure(explainers: dict[str, TipExplainer], pages: dict[str, PageReruns], load_cls, n: int,
            repeat: int) -> tuple[dict, float]:
    load = load_cls(n)
    try:
        load.wait_started()
        before, t0 = sum(load.steps), time.perf_counter()
        out = work(explainers, pages, repeat)
        rate = (sum(load.steps) - before) / (time.perf_counter() - t0)
    finally:
        load.close()
    return out, rate


def ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.0f} (worst {max(times) * 1e3:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of this (the server's) process")
    ap.add_argument("--attacks", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-threads", action="store_true", help="skip the attacks-in-threads comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("explorer: TIP slider redraw with attacks running beside it")
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.attacks} attacks: "
          f"Inverting Gradients on ConvNet; worker processes at nice +{worker.DEFAULT_NICE}, "
          f"{worker.DEFAULT_THREADS} torch thread each")
    image = data.sample_image("cifar10-00")
    explainers = {name: TipExplainer(name, image, 3) for name in ("lenet", "convnet")}
    pages = {name: PageReruns(name) for name in explainers}
    work(explainers, pages, 2)  # warm up: Grad-CAM computed, caches filled
    alone = work(explainers, pages, args.repeat)
    in_workers, worker_rate = measure(explainers, pages, WorkerLoad, args.attacks, args.repeat)
    rows = [("alone", alone, None), (f"{args.attacks} attacks in worker processes", in_workers, worker_rate)]
    if not args.no_threads:
        in_threads, thread_rate = measure(explainers, pages, ThreadLoad, args.attacks, args.repeat)
        rows.append((f"{args.attacks} attacks in threads of the server", in_threads, thread_rate))
    print(f"| per slider move, ms: median (worst of {args.repeat}) | engine LeNet | engine ConvNet | "
          "page rerun LeNet | page rerun ConvNet | attack steps/s (all attacks) |")
    print("|---|---|---|---|---|---|")
    for label, times, rate in rows:
        cells = " | ".join(ms(times[k]) for k in ("engine lenet", "engine convnet", "page lenet", "page convnet"))
        print(f"| {label} | {cells} | {'—' if rate is None else f'{rate:.1f}'} |")


if __name__ == "__main__":
    main()
