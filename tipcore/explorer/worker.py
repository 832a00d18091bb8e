"""Run experiments in a child process, so a server that shows them stays responsive.

The explorer's Streamlit server redraws pages for every visitor; an attack in the same process competes
with those redraws for the GIL and both cores. ``WorkerRun`` starts one child process (``spawn``: a fresh
interpreter, no forked torch thread pools) that lowers its own OS priority (``os.nice``), sets torch's
intra-op threads to ``threads`` (default ``tipcore.common.runtime.compute_threads()``, the CLI's count, so its
files are the CLI's bytes), runs each ``RunSpec`` of a plan through ``experiment.stream`` and sends small
messages back through a queue:

* ``Started(name)`` when a run begins, ``Stage`` for each step of the client's round (round, Grad-CAM,
  defense),
* ``LiveSnapshot`` (the first image of the attack's snapshot, the step, the loss, elapsed seconds),
* ``Finished(name, RunOutcome)``: plain numpy and bytes, with ``files`` = ``experiment.artifact_files``
  of the child's ``RunRecord`` (the bytes the CLI writes),
* ``Failed(name, message)``, and ``Ended(stopped)`` last.

A worker loads the engine before it reads its plan, so one can be started ahead of need: ``Spare`` keeps one
such warm worker per server and hands it the next plan (pressing Run then starts computing at once).

``stop()`` sets an event the child's ``should_stop`` hook reads; the child also stops when its parent is
gone (no orphans if the server is killed). This module imports neither torch nor the engine at import
time, so the parent can use it before torch has loaded and the child sets its priority first.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import multiprocessing.spawn as mp_spawn
import os
import queue as queue_mod
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_NICE = 10  # the server's redraws (nice 0) always come first on a busy machine
JOIN_S = 10.0  # how long stop() + join may take before the child is terminated


# ---------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Started:
    name: str


@dataclass(frozen=True)
class Stage:
    """A stage of the client's round (``tipcore.common.progress.Event`` without its payload)."""

    name: str
    stage: str
    done: int
    total: int | None


@dataclass(frozen=True)
class LiveSnapshot:
    """What the page draws while an attack runs: small (one 32x32 image), no tensors."""

    name: str
    step: int
    loss: float
    images: np.ndarray  # (1, H, W, 3) float32: the first image of the attack's current guess
    elapsed_s: float  # seconds since this attack started (the engine's clock)


@dataclass(frozen=True)
class RunOutcome:
    """One finished run as plain data: what the app shows and the result cache stores."""

    defense: str
    attack: str
    original: np.ndarray  # (B, H, W, 3) private images
    images: np.ndarray  # (B, H, W, 3) reconstruction, in the originals' order
    num_classes: int
    psnr: float
    ssim: float
    label_true: tuple[int, ...]
    label_pred: tuple[int, ...]
    label_accuracy: float
    iterations: int
    restarts: int
    seconds: float
    stopped: bool
    diverged: bool
    history_steps: tuple[int, ...]
    history_images: tuple[np.ndarray, ...]  # first image of each snapshot
    history_losses: tuple[float, ...]
    summary: Mapping[str, Any]
    notes: str
    analysis: Mapping[str, Any]
    files: Mapping[str, bytes]  # experiment.artifact_files(record): identical to the CLI's output


@dataclass(frozen=True)
class Finished:
    name: str
    outcome: RunOutcome


@dataclass(frozen=True)
class Failed:
    name: str
    message: str


@dataclass(frozen=True)
class Ended:
    stopped: bool


@dataclass(frozen=True)
class Ready:
    """The worker has loaded torch and the engine and waits for (or has) its plan."""


def plain(value: Any) -> Any:
    """Only plain Python values (no numpy scalars, no tuples): safe to pickle, JSON and compare."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def outcome_of(record: Any) -> RunOutcome:
    """A ``RunRecord`` as a ``RunOutcome`` (in the process that holds the record's tensors)."""
    from tipcore.pipeline import experiment

    order = list(record.scores.order)
    hist = record.result.history
    return RunOutcome(
        defense=str(record.config.defense), attack=str(record.config.attack),
        original=np.asarray(record.prepared.images, dtype=np.float32),
        images=np.asarray(record.result.images, dtype=np.float32)[order],
        num_classes=int(record.prepared.num_classes), psnr=float(record.scores.psnr),
        ssim=float(record.scores.ssim), label_true=tuple(int(v) for v in record.prepared.labels),
        label_pred=tuple(int(v) for v in record.result.labels),
        label_accuracy=float(record.scores.label_accuracy), iterations=int(record.result.iterations),
        restarts=int(record.result.restarts), seconds=float(record.result.seconds),
        stopped=bool(record.result.stopped), diverged=bool(getattr(record.result, "diverged", False)),
        history_steps=tuple(int(s.step) for s in hist),
        history_images=tuple(np.asarray(s.images[0], dtype=np.float32) for s in hist),
        history_losses=tuple(float(s.loss) for s in hist),
        summary=plain(dict(record.prepared.diagnostics.summary)), notes=str(record.prepared.diagnostics.notes),
        analysis=plain(dict(getattr(record, "analysis", {}) or {})), files=experiment.artifact_files(record),
    )


def metrics_csv(outcomes: Iterable[RunOutcome]) -> bytes:
    """``experiment.metrics_csv`` of several runs, from their own metrics.csv files (header once)."""
    lines: list[bytes] = []
    for outcome in outcomes:
        rows = outcome.files["metrics.csv"].splitlines(keepends=True)
        lines.extend(rows if not lines else rows[1:])
    return b"".join(lines)


# ---------------------------------------------------------------------------------------------- child


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


def _child_main(inbox: Any, out: Any, stop: Any, nice: int, threads: int, parent_pid: int) -> None:
    """The worker process: lower priority and threads first, load the engine, then wait for its plan (a spare
    worker waits there, warm, until a run is handed to it) and run it."""
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed (never fatal: the run is only less polite)
            pass
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from tipcore.pipeline import experiment
    from tipcore.attacks.base import Snapshot
    from tipcore.common.progress import Stopped

    def should_stop() -> bool:
        # The parent gone (killed, crashed) counts as a stop: no orphaned attacks.
        return stop.is_set() or os.getppid() != parent_pid

    out.put(Ready())
    while True:
        if should_stop():  # a spare told to go (server shutdown), or its server gone
            out.put(Ended(stop.is_set()))
            return
        try:
            plan, images = inbox.get(timeout=0.2)
            break
        except queue_mod.Empty:
            continue

    for name, cfg_dict in plan:
        if should_stop():
            break
        out.put(Started(name))
        try:
            cfg = experiment.RunSpec.from_dict(cfg_dict)

            def on_event(event: Any, name: str = name) -> None:
                snap = event.payload
                if isinstance(snap, Snapshot):
                    out.put(LiveSnapshot(name, int(snap.step), float(snap.loss),
                                         np.asarray(snap.images[:1], dtype=np.float32), float(snap.elapsed_s)))
                elif event.stage != "attack":
                    out.put(Stage(name, str(event.stage), int(event.done), event.total))

            record = experiment.run(cfg, images, should_stop=should_stop, on_event=on_event)
            out.put(Finished(name, outcome_of(record)))
        except Stopped:  # during the client round: nothing reached for this run, and the rest are skipped
            break
        except Exception as exc:  # noqa: BLE001 - reported to the parent as one line, logged in full here
            log.exception("attack with defense %s failed", name)
            out.put(Failed(name, _one_line(exc)))
    out.put(Ended(stop.is_set()))


# ---------------------------------------------------------------------------------------------- parent

WORKER_NAME = "tip-attack-worker"
_original_preparation_data = mp_spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    """``spawn`` re-imports the parent's ``__main__`` in the child. Under Streamlit that is the page script
    being run (Streamlit swaps it into ``sys.modules['__main__']``), so every worker would run the whole app
    once; the worker needs nothing from ``__main__`` (its target lives here), so ours skip that step."""
    data = _original_preparation_data(name)
    if name.startswith(WORKER_NAME):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


mp_spawn.get_preparation_data = _preparation_data

_LIVE: "weakref.WeakSet[WorkerRun]" = weakref.WeakSet()
_SHUTTING_DOWN = False  # set by stop_all (the server's exit)
_LIVE_LOCK = threading.Lock()


class WorkerRun:
    """One plan run in one child process. ``plan``: (name, RunSpec) pairs, given now or later through
    ``submit`` (a spare: started without a plan, it loads the engine and waits for one)."""

    def __init__(self, plan: list[tuple[str, Any]] | None = None, images: np.ndarray | None = None, *,
                 nice: int = DEFAULT_NICE, threads: int | None = None) -> None:
        from tipcore.common import runtime  # no torch: the count is decided here, set in the child

        # The thread count decides the result's bytes: the CLI's (TIP_THREADS, else the fixed default),
        # whatever this process or its environment (OMP_NUM_THREADS) was set to.
        threads = runtime.compute_threads() if threads is None else runtime.check_threads(threads)
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in [0, 19], got {nice}")
        ctx = mp.get_context("spawn")
        self._inbox = ctx.Queue()
        self._queue = ctx.Queue()
        self._stop = ctx.Event()
        self.process = ctx.Process(
            target=_child_main, name=WORKER_NAME, daemon=True,
            args=(self._inbox, self._queue, self._stop, nice, threads, os.getpid()),
        )
        self.nice = nice
        self.threads = threads
        self.submitted = False
        self.closed = False
        self.ready = False  # the child said it has loaded the engine
        self.ended: Ended | None = None
        if plan is not None:
            self.submit(plan, images)

    def submit(self, plan: list[tuple[str, Any]], images: np.ndarray | None = None) -> "WorkerRun":
        """Hand the worker its plan (once): it runs as soon as its engine is loaded, at once for a warm one."""
        if not plan:
            raise ValueError("a worker needs at least one run in its plan")
        if self.submitted:
            raise RuntimeError("this worker already has its plan")
        plain_plan = [(name, cfg.to_dict()) for name, cfg in plan]
        arrays = None if images is None else np.asarray(images, dtype=np.float32)
        self._inbox.put((plain_plan, arrays))
        self.submitted = True
        return self

    def start(self) -> "WorkerRun":
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.process.start()
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self) -> None:
        self._stop.set()

    def events(self, timeout: float = 0.25) -> list[Any]:
        """Messages sent since the last call: waits up to ``timeout`` for the first, then drains the rest."""
        got: list[Any] = []
        if self.closed:  # closed (at exit, by another thread): nothing more will come
            return got
        try:
            got.append(self._queue.get(timeout=timeout))
            while True:
                got.append(self._queue.get_nowait())
        except queue_mod.Empty:
            pass
        except (EOFError, OSError, ValueError):  # the queue's pipe closed under us (shutdown)
            pass
        for event in got:
            if isinstance(event, Ended):
                self.ended = event
            elif isinstance(event, Ready):
                self.ready = True
        return [e for e in got if not isinstance(e, Ready)]

    @property
    def finished(self) -> bool:
        """The child said it ended, or died without saying so."""
        return self.ended is not None or (self.process.pid is not None and not self.process.is_alive()
                                          and self._queue.empty())

    def close(self, timeout: float = JOIN_S) -> None:
        """Stop the child if it still runs, wait for it (terminate it after ``timeout``), free the queue."""
        self.stop()
        deadline = time.monotonic() + timeout
        while self.process.is_alive() and time.monotonic() < deadline:
            self.events(timeout=0.1)  # keep draining, or the child blocks flushing its queue
        if self.process.is_alive():
            log.warning("attack worker %s did not stop within %.0f s: terminating it", self.pid, timeout)
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.closed = True
        for q in (self._queue, self._inbox):
            q.close()
            q.cancel_join_thread()
        with _LIVE_LOCK:
            _LIVE.discard(self)


class Spare:
    """One warm worker kept ahead of need, so that a run starts computing at once instead of after a fresh
    interpreter has imported torch and the engine (seconds on a busy machine).

    ``take(plan, images)`` hands the plan to the spare when it is alive and was made with the same priority
    and thread count (else starts a fresh worker); ``refill()`` starts the next spare (the app calls it when a
    visitor opens the Live page and when a job's worker is done, not while that job's attack runs). A spare is a
    ``WorkerRun`` like any other: ``stop_all`` at exit ends it, and it ends by itself when its parent is gone.
    """

    def __init__(self, nice: int = DEFAULT_NICE) -> None:
        self.nice = nice
        self._lock = threading.Lock()
        self._spare: WorkerRun | None = None

    def refill(self) -> None:
        """Start a spare unless one is waiting (a no-op when one is)."""
        from tipcore.common import runtime

        with self._lock:
            old = self._spare
            if _SHUTTING_DOWN or (old is not None and self._usable(old, runtime.compute_threads())):
                return
            self._spare = WorkerRun(nice=self.nice).start()
        if old is not None:
            old.close()

    def take(self, plan: list[tuple[str, Any]], images: np.ndarray | None = None) -> WorkerRun:
        """A started worker running ``plan``: the spare if it is usable, else a fresh one."""
        from tipcore.common import runtime

        threads = runtime.compute_threads()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and self._usable(spare, threads):
            return spare.submit(plan, images)
        if spare is not None:
            spare.close()
        return WorkerRun(plan, images, nice=self.nice, threads=threads).start()

    def waiting(self) -> WorkerRun | None:
        """The spare now waiting (for tests and benches), or None."""
        with self._lock:
            return self._spare

    @staticmethod
    def _usable(run: WorkerRun, threads: int) -> bool:
        run.events(timeout=0)  # notes Ready / Ended
        return (run.threads == threads and not run.submitted and not run.closed and run.ended is None
                and run.process.is_alive())


def live_workers() -> list[WorkerRun]:
    with _LIVE_LOCK:
        return [w for w in _LIVE if w.process.is_alive()]


def stop_all(timeout: float = JOIN_S) -> None:
    """Stop every worker of this process and wait for them (at exit: SIGTERM to the server ends here)."""
    global _SHUTTING_DOWN
    _SHUTTING_DOWN = True  # no spare is started from here on
    workers = live_workers()
    for w in workers:
        w.stop()
    for w in workers:
        w.close(timeout)


atexit.register(stop_all)
