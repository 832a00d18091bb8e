"""A comparison run in a background thread: one attack per defense, streamed into a plain ``Job`` object.

The job lives in the visitor's ``st.session_state`` and the page polls it, so widget interactions (which
interrupt the script) never interrupt the attack, and everything reached so far is always in session
state. Stop sets an event that the engine's ``should_stop`` hook reads: the running attack returns what
it reached (``AttackResult.stopped``) and the remaining defenses are skipped. A global semaphore
(``resources.attack_slots``) caps concurrent jobs across visitors; a job waits for a slot.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

# A visitor who closed the tab stops polling; their attack then stops too, freeing the slot. Background
# tabs poll at least once a minute even when the browser throttles timers, so 3 minutes is safe.
ABANDON_S = 180.0


# The client round's stages (tipcore.experiment.prepare_stream), as the progress widget names them.
STAGE_TEXT = {"client round": "the client's round", "Grad-CAM": "Grad-CAM on the client's image",
              "defense": "applying the defense"}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@dataclass
class Job:
    plan: list[tuple[str, Any]]  # (defense name, ExperimentConfig)
    images: np.ndarray | None  # uploaded image batch, or None for gallery ids
    slots: Any  # resources.AttackSlots
    iterations: int
    step_seconds: float  # estimated seconds per attack step, for the ETA of defenses not started yet
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    status: str = "waiting"  # waiting → running → done | stopped | error
    current: str | None = None
    latest: dict[str, Any] = field(default_factory=dict)  # defense -> latest Snapshot
    events: dict[str, Any] = field(default_factory=dict)  # defense -> latest tipcore.progress.Event
    records: dict[str, Any] = field(default_factory=dict)  # defense -> RunRecord
    errors: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    collected: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    abandon_s: float = ABANDON_S
    _thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def start(self, runner: Callable[..., Any] | None = None) -> "Job":
        self._thread = threading.Thread(target=self._run, args=(runner,), name=f"tip-attack-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def touch(self) -> None:
        """The visitor's page is still polling this job."""
        self.last_seen = time.monotonic()

    def should_stop(self) -> bool:
        if not self.stop_event.is_set() and time.monotonic() - self.last_seen > self.abandon_s:
            log.info("attack job %s abandoned (no poll for %.0f s): stopping it", self.id, self.abandon_s)
            self.stop_event.set()
        return self.stop_event.is_set()

    @property
    def done(self) -> bool:
        return self.finished is not None

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    # ------------------------------------------------------------------ progress
    def on_event(self, name: str, event: Any) -> None:
        """The engine's progress events for one defense's run: the latest is kept, and an attack's
        snapshot (its payload) is what the live panel draws."""
        self.events[name] = event
        if event.stage == "attack" and event.payload is not None:
            self.latest[name] = event.payload

    def activity(self) -> str:
        """What the current run is doing, for the progress widget's text."""
        event = self.events.get(self.current) if self.current is not None else None
        if event is None:
            return "preparing the client's round"
        if event.stage == "attack":
            return f"step {event.done}/{event.total}"
        return STAGE_TEXT.get(event.stage, event.stage)

    def progress(self) -> tuple[float, float | None]:
        """(fraction done in [0, 1], seconds left or None if unknown)."""
        n = max(len(self.plan), 1)
        names = [name for name, _ in self.plan]
        finished = sum(1 for name in names if name in self.records or name in self.errors)
        frac_current, eta_current = 0.0, None
        if self.current is not None and self.current not in self.records:
            event = self.events.get(self.current)
            if event is not None and event.stage == "attack" and event.fraction is not None:
                frac_current = event.fraction
                eta_current = event.eta_s if np.isfinite(event.eta_s) else None
        frac = min((finished + frac_current) / n, 1.0)
        if self.done:
            return 1.0, 0.0
        remaining = n - finished - (1 if self.current is not None and self.current not in self.records else 0)
        rest = max(remaining, 0) * self.iterations * self.step_seconds
        if eta_current is None:
            eta_current = (1 - frac_current) * self.iterations * self.step_seconds
        return frac, eta_current + rest

    # ------------------------------------------------------------------ thread
    def _run(self, runner: Callable[..., Any] | None) -> None:
        acquired = False
        try:
            while not self.should_stop():
                if self.slots.acquire(timeout=0.25):
                    acquired = True
                    break
            if not acquired:
                self.status = "stopped"
                return
            self.status = "running"
            from tipcore.progress import Stopped

            if runner is None:
                from tipcore import experiment

                runner = experiment.run
            for name, cfg in self.plan:
                if self.should_stop():
                    break
                self.current = name
                try:
                    record = runner(cfg, self.images, should_stop=self.should_stop,
                                    on_event=lambda event, n=name: self.on_event(n, event))
                    self.records[name] = record
                except Stopped:  # during the client round: nothing to show for this defense
                    break
                except Exception as exc:  # noqa: BLE001 - shown to the visitor as one line, logged in full
                    log.exception("attack with defense %s failed", name)
                    self.errors[name] = one_line(exc)
            self.current = None
            if self.stop_event.is_set():
                self.status = "stopped"
            elif self.errors and not self.records:
                self.status = "error"
            else:
                self.status = "done"
        except Exception as exc:  # noqa: BLE001 - never let the thread die silently
            log.exception("attack job failed")
            self.errors["job"] = one_line(exc)
            self.status = "error"
        finally:
            if acquired:
                self.slots.release()
            self.finished = time.monotonic()


# ---------------------------------------------------------------------------------------------- results


def _plain(value: Any) -> Any:
    """A copy of the engine's analysis dict with only plain Python values (no numpy scalars, no tuples)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class DefenseResult:
    defense: str
    images: np.ndarray  # (B, H, W, 3) reconstruction, in the originals' order
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
    summary: dict[str, float]
    notes: str
    files: dict[str, bytes]  # artifact_files(record): identical to the CLI's output
    attack: str = ""
    analysis: dict[str, Any] = field(default_factory=dict)  # RunRecord.analysis: noise-to-signal, detection


@dataclass(frozen=True)
class Results:
    """What one finished (or stopped) job leaves in session state: plain numpy and bytes, no tensors."""

    job_id: str
    original: np.ndarray  # (B, H, W, 3)
    image_caption: str
    num_classes: int
    dataset: str
    defenses: tuple[DefenseResult, ...]
    errors: dict[str, str]
    skipped: tuple[str, ...]
    stopped: bool
    settings: Any  # state.Settings snapshot
    metrics_csv: bytes
    grid_png: bytes


def collect(job: Job, settings: Any, image_caption: str, dataset: str) -> Results | None:
    """Turn a finished job's RunRecords into plain results (bytes for downloads computed once)."""
    from tipcore import experiment

    records = [job.records[name] for name, _ in job.plan if name in job.records]
    out: list[DefenseResult] = []
    for name, _ in job.plan:
        rec = job.records.get(name)
        if rec is None:
            continue
        order = list(rec.scores.order)
        hist = rec.result.history
        out.append(DefenseResult(
            defense=name, images=np.asarray(rec.result.images)[order], psnr=float(rec.scores.psnr),
            ssim=float(rec.scores.ssim), label_true=tuple(rec.prepared.labels), label_pred=tuple(rec.result.labels),
            label_accuracy=float(rec.scores.label_accuracy), iterations=int(rec.result.iterations),
            restarts=int(rec.result.restarts), seconds=float(rec.result.seconds), stopped=bool(rec.result.stopped),
            diverged=bool(getattr(rec.result, "diverged", False)),
            history_steps=tuple(int(s.step) for s in hist), history_images=tuple(np.asarray(s.images[0]) for s in hist),
            history_losses=tuple(float(s.loss) for s in hist), summary=dict(rec.prepared.diagnostics.summary),
            notes=str(rec.prepared.diagnostics.notes), files=experiment.artifact_files(rec),
            attack=str(rec.config.attack), analysis=_plain(dict(getattr(rec, "analysis", {}) or {})),
        ))
    if not records:
        original = None
        num_classes = 10
    else:
        original = np.asarray(records[0].prepared.images)
        num_classes = int(records[0].prepared.num_classes)
    if original is None:
        if job.errors or job.status == "stopped":
            return Results(job.id, np.zeros((0, 32, 32, 3), np.float32), image_caption, num_classes, dataset, (),
                           dict(job.errors), tuple(n for n, _ in job.plan), job.status == "stopped", settings, b"", b"")
        return None
    row = np.concatenate([original[:1]] + [d.images[:1] for d in out])
    grid = experiment.png_bytes(experiment.image_grid([row], scale=4))
    skipped = tuple(n for n, _ in job.plan if n not in job.records and n not in job.errors)
    return Results(job.id, original, image_caption, num_classes, dataset, tuple(out), dict(job.errors), skipped,
                   job.status == "stopped", settings, experiment.metrics_csv(records), grid)

