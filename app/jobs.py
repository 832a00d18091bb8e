"""A comparison run as a plain ``Job`` object: one attack per defense, in a worker process.

The job lives in the visitor's ``st.session_state`` and the page polls it, so widget interactions (which
interrupt the script) never interrupt the attack. A background thread of the server feeds the job: it
first asks the shared result cache (``tipcore.explorer.result_cache``) for each run, then, for the runs not found,
waits for a slot (``resources.attack_slots``, a global cap on concurrent attacks across visitors, first
come first served), hands the plan to one ``tipcore.explorer.worker.WorkerRun`` (a niced child process, so this
server's redraws come first, computing with the CLI's torch thread count, so its files are the CLI's bytes;
the server's warm spare when one waits, ``worker.Spare``) and copies what it sends back into the job. Stop sets an
event that the worker's ``should_stop`` hook reads: the running attack returns what it reached and the
remaining defenses are skipped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from tipcore.explorer.worker import RunOutcome

log = logging.getLogger(__name__)

# A visitor who closed the tab stops polling; their attack then stops too, freeing the slot. Background
# tabs poll at least once a minute even when the browser throttles timers, so 3 minutes is safe.
ABANDON_S = 180.0
FIRST_SNAPSHOT_WINDOW_S = 3.0  # how long after its start a run's page waits for the first snapshot


# The client round's stages (tipcore.pipeline.experiment.prepare_stream), as the progress widget names them.
STAGE_TEXT = {"client round": "the client's round", "Grad-CAM": "Grad-CAM on the client's image",
              "defense": "applying the defense"}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def result_cache() -> Any:
    """The machine's shared result cache (``TIP_CACHE_DIR``, ``TIP_CACHE_MB``; 0 MB turns it off), or None
    (no caching) when ``TIP_CACHE_MB`` is not a size: the server says so in one log line, and runs go on."""
    from tipcore.explorer.result_cache import ResultCache

    try:
        return ResultCache.default()
    except ValueError as exc:
        global _CACHE_WARNED
        if not _CACHE_WARNED:
            log.error("%s: running without the result cache", one_line(exc))
            _CACHE_WARNED = True
        return None


_CACHE_WARNED = False  # the bad setting is logged once per server, not once per run


RunKeys = tuple  # ((defense name, tipcore.explorer.result_cache.run_key of its RunSpec), ...) in plan order


def plan_keys(plan: list[tuple[str, Any]], images: np.ndarray | None) -> RunKeys | None:
    """The identity of a plan's results: each run's RunSpec key (``tipcore.explorer.result_cache.run_key``, the cache's
    key: every setting that decides the result). None when a run cannot be keyed (then nothing matches it)."""
    from tipcore.explorer.result_cache import run_key

    try:
        return tuple((name, run_key(cfg, images)) for name, cfg in plan)
    except (ValueError, OSError, TypeError, AttributeError) as exc:  # never fatal: unkeyed results match nothing
        log.info("plan cannot be keyed: %s", exc)
        return None


@dataclass
class Job:
    plan: list[tuple[str, Any]]  # (defense name, RunSpec)
    images: np.ndarray | None  # uploaded image batch, or None for gallery ids
    slots: Any  # resources.AttackSlots
    iterations: int
    cache: Any = None  # tipcore.explorer.result_cache.ResultCache, or None for no caching
    throughput: Any = None  # resources.Throughput: where measured seconds per step are reported
    spare: Any = None  # tipcore.explorer.worker.Spare: the server's warm worker (None: a fresh one per job)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    status: str = "waiting"  # waiting → running → done | stopped | error
    current: str | None = None
    latest: dict[str, Any] = field(default_factory=dict)  # defense -> latest worker.LiveSnapshot
    latest_at: float = 0.0  # when the latest snapshot arrived (monotonic)
    events: dict[str, Any] = field(default_factory=dict)  # defense -> latest client-round stage (worker.Stage)
    records: dict[str, Any] = field(default_factory=dict)  # defense -> worker.RunOutcome
    cached: set[str] = field(default_factory=set)  # defenses answered by the result cache
    errors: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None  # when the job got its slot
    finished: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    last_seen: float = field(default_factory=time.monotonic)
    abandon_s: float = ABANDON_S
    worker_pid: int | None = None
    keys: dict[str, str] = field(default_factory=dict)  # defense -> run key of its RunSpec (filled on start)
    stop_requested_at: float | None = None  # when Stop was asked (monotonic)
    first_snapshot: threading.Event = field(default_factory=threading.Event)  # set by the first snapshot or the end
    first_snapshot_window_s: float = FIRST_SNAPSHOT_WINDOW_S
    _thread: threading.Thread | None = None
    _worker: Any = None  # the running tipcore.explorer.worker.WorkerRun

    # ------------------------------------------------------------------ control
    def start(self, runner: Callable[..., Any] | None = None) -> "Job":
        """Run the plan in a worker process; ``runner(cfg, images, should_stop=, on_snapshot=)`` instead
        runs it in this thread (tests)."""
        self._thread = threading.Thread(target=self._run, args=(runner,), name=f"tip-attack-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop now: the worker is told at once (not at the feeding thread's next poll); its attack returns at
        the next step with what it reached, and the remaining defenses are skipped."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self.stop_event.set()
        run = self._worker
        if run is not None:
            run.stop()

    @property
    def stopping(self) -> bool:
        """Stop was asked and the job has not ended yet (the page says so instead of showing progress)."""
        return self.stop_event.is_set() and not self.done

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

    def wait_first_snapshot(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the run's first snapshot, but only while the run has just started (a
        queued job, or one long under way, returns at once: the page must not stall on every poll)."""
        just_started = self.status == "running" and self.started is not None \
            and time.monotonic() - self.started < self.first_snapshot_window_s
        if just_started and not self.first_snapshot.is_set():
            self.first_snapshot.wait(timeout)
        return self.first_snapshot.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    # ------------------------------------------------------------------ progress
    def on_event(self, name: str, event: Any) -> None:
        """A progress event for one defense's run: an attack snapshot (anything with a ``step``: the worker's
        ``LiveSnapshot``, or the payload of an engine ``tipcore.common.progress.Event`` of stage "attack") is what
        the live panel draws; anything else is a client-round stage (``.stage``)."""
        payload = getattr(event, "payload", None)
        if getattr(event, "stage", None) == "attack" and payload is not None:
            event = payload
        if hasattr(event, "step"):
            self.latest[name] = event
            self.latest_at = time.monotonic()
            self.first_snapshot.set()
        else:
            self.events[name] = event

    def activity(self) -> str:
        """What the current run is doing, for the progress widget's text."""
        if self.current is None:
            return "starting the attack worker"
        snap = self.latest.get(self.current)
        if snap is not None:
            return f"step {snap.step}/{self.iterations}"
        event = self.events.get(self.current)
        if event is None:
            return "preparing the client's round"
        return STAGE_TEXT.get(event.stage, event.stage)

    def seconds_per_step(self) -> float | None:
        """Attack seconds per step measured in this job so far (None before the first snapshot)."""
        seconds, steps = 0.0, 0
        for name, outcome in self.records.items():
            if name not in self.cached and getattr(outcome, "iterations", 0):
                seconds += float(outcome.seconds)
                steps += int(outcome.iterations)
        if self.current is not None and self.current not in self.records:
            snap = self.latest.get(self.current)
            if snap is not None and snap.step > 0:
                seconds += float(snap.elapsed_s)
                steps += int(snap.step)
        return seconds / steps if steps else None

    def progress(self) -> tuple[float, float | None]:
        """(fraction done in [0, 1], seconds left or None while the speed is not measured yet)."""
        if self.done:
            return 1.0, 0.0
        names = [name for name, _ in self.plan]
        n = max(len(names), 1)
        finished = sum(1 for name in names if name in self.records or name in self.errors)
        running = self.current is not None and self.current not in self.records and self.current not in self.errors
        step = 0
        if running:
            snap = self.latest.get(self.current)
            step = min(int(snap.step), self.iterations) if snap is not None else 0
        frac = min((finished + step / max(self.iterations, 1)) / n, 1.0)
        rate = self.seconds_per_step()
        if rate is None:
            return frac, None
        not_started = n - finished - (1 if running else 0)
        left = ((self.iterations - step) if running else 0) * rate + max(not_started, 0) * self.iterations * rate
        if running and self.latest_at:
            left -= min(time.monotonic() - self.latest_at, rate * max(self.iterations - step, 0))
        return frac, max(left, 0.0)

    def wait_estimate(self) -> float | None:
        """While waiting: seconds until this job's slot frees (from the running jobs' throughput)."""
        estimate = getattr(self.slots, "wait_estimate", None)
        return estimate(self) if estimate is not None and self.status == "waiting" else None

    @property
    def elapsed_s(self) -> float | None:
        """Wall seconds from getting a slot to the end (None if it never ran)."""
        if self.started is None:
            return None
        return (self.finished or time.monotonic()) - self.started

    @property
    def waited_s(self) -> float:
        return (self.started or self.finished or time.monotonic()) - self.created

    # ------------------------------------------------------------------ thread
    def _run(self, runner: Callable[..., Any] | None) -> None:
        acquired = False
        try:
            keys = self.keys  # the page passes them (it compares them with the sidebar's); else computed here
            if self.cache is not None:
                if not keys:
                    keys.update(dict(plan_keys(self.plan, self.images) or ()))
                self._from_cache(keys)
            todo = [(name, cfg) for name, cfg in self.plan if name not in self.records]
            if not todo:
                self.status = "done"
                return
            while not self.should_stop():
                if self.slots.acquire(timeout=0.25, holder=self):
                    acquired = True
                    break
            if not acquired:
                self.status = "stopped"
                return
            self.started = time.monotonic()
            self.status = "running"
            if runner is None:
                self._run_in_worker(todo, keys)
            else:
                self._run_in_thread(todo, runner)
            self._end()
        except Exception as exc:  # noqa: BLE001 - never let the thread die silently
            log.exception("attack job failed")
            self.errors["job"] = one_line(exc)
            self.status = "error"
        finally:
            if self.finished is None:
                self.finished = time.monotonic()
            self.first_snapshot.set()  # nothing more will come: a waiting page draws the end at once
            # The page shows the results from here on; the worker's exit (torch's teardown takes seconds on a
            # loaded machine) is waited for after that, and the slot is freed only once it is gone.
            run = self._worker
            if run is not None:
                try:
                    run.close()
                finally:
                    self._worker = None
                    if self.spare is not None:  # the next run's warm worker, started now the attack is over
                        self.spare.refill()
            leave = getattr(self.slots, "leave", None)
            if acquired:
                self.slots.release(self)
            elif leave is not None:
                leave(self)

    def _end(self) -> None:
        """Set the final status, then ``finished`` (which is what ``done`` reads: status first)."""
        self.current = None
        if self.stop_event.is_set():
            self.status = "stopped"
        elif self.errors and not self.records:
            self.status = "error"
        else:
            self.status = "done"
        self.finished = time.monotonic()

    def _from_cache(self, keys: dict[str, str]) -> None:
        for name, cfg in self.plan:
            if name not in keys:
                continue
            try:
                outcome = self.cache.get(keys[name])
            except (ValueError, OSError) as exc:
                log.info("no cache lookup for %s: %s", name, exc)
                continue
            if outcome is not None:
                self.records[name] = outcome
                self.cached.add(name)

    def _run_in_worker(self, todo: list[tuple[str, Any]], keys: dict[str, str]) -> Any:
        """Feed the job from one worker process until it ends; returns the worker (closed by the caller)."""
        from tipcore.explorer import worker

        run = (self.spare.take(todo, self.images) if self.spare is not None
               else worker.WorkerRun(todo, self.images).start())
        self._worker = run
        self.worker_pid = run.pid
        stop_sent = False
        if self.stop_event.is_set():  # Stop came while the worker was being created
            run.stop()
        while True:
            if not stop_sent and self.should_stop():  # also an abandoned job (no poll for abandon_s)
                run.stop()
                stop_sent = True
                if self.current is None:
                    # Still starting (loading torch: seconds on a busy machine) and nothing reached: end it now.
                    log.info("attack job %s stopped before its worker started: terminating worker %s", self.id,
                             run.pid)
                    run.process.terminate()
            for event in run.events(timeout=0.1 if stop_sent else 0.25):
                if isinstance(event, worker.Started):
                    self.current = event.name
                elif isinstance(event, (worker.LiveSnapshot, worker.Stage)):
                    self.on_event(event.name, event)
                elif isinstance(event, worker.Finished):
                    self.records[event.name] = event.outcome
                    self._report_speed(event.outcome)
                    if self.cache is not None and event.name in keys:
                        self.cache.put(keys[event.name], event.outcome)
                elif isinstance(event, worker.Failed):
                    self.errors[event.name] = event.message
            if run.ended is not None:
                self._report_overhead(todo)
                return run
            if run.finished:  # died without saying so (killed, out of memory), or terminated by Stop above
                if not stop_sent:
                    code = run.process.exitcode
                    self.errors["job"] = f"the attack worker ended unexpectedly (exit code {code})"
                return run

    def _report_speed(self, outcome: Any) -> None:
        if self.throughput is None or not outcome.iterations:
            return
        cfg = dict(self.plan).get(outcome.defense)
        if cfg is not None:
            self.throughput.record(cfg.model, cfg.attack, outcome.seconds / outcome.iterations)

    def _report_overhead(self, todo: list[tuple[str, Any]]) -> None:
        """What this job spent beyond its attack steps, per defense, once every defense it ran finished."""
        ran = [self.records.get(name) for name, _ in todo]
        if self.throughput is None or self.started is None or self.stop_event.is_set() or None in ran:
            return
        cfg = todo[0][1]
        beyond = time.monotonic() - self.started - sum(float(o.seconds) for o in ran)
        self.throughput.record_overhead(cfg.model, beyond / len(ran))

    def _run_in_thread(self, todo: list[tuple[str, Any]], runner: Callable[..., Any]) -> None:
        from tipcore.common.progress import Stopped

        for name, cfg in todo:
            if self.should_stop():
                break
            self.current = name
            try:
                self.records[name] = runner(cfg, self.images, should_stop=self.should_stop,
                                            on_event=lambda event, n=name: self.on_event(n, event))
            except Stopped:  # during the client round: nothing to show for this defense
                break
            except Exception as exc:  # noqa: BLE001 - shown to the visitor as one line, logged in full
                log.exception("attack with defense %s failed", name)
                self.errors[name] = one_line(exc)


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DefenseResult(RunOutcome):
    """One defense's finished run as the page shows it: the worker's outcome, and whether the shared result
    cache answered it (computed earlier with the same settings)."""

    from_cache: bool = False


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
    elapsed_s: float | None = None  # wall seconds the attacks really took (None: all from the cache)
    waited_s: float = 0.0  # seconds spent waiting for an attack slot
    keys: RunKeys = ()  # the run keys of the plan that produced these results (plan_keys): their identity

    def matches(self, keys: RunKeys | None) -> bool:
        """These results are the answer to exactly the plan with ``keys`` (same RunSpecs, same order)."""
        return bool(keys) and tuple(self.keys) == tuple(keys)


def defense_result(outcome: Any, from_cache: bool = False) -> DefenseResult:
    return DefenseResult(**{f.name: getattr(outcome, f.name) for f in fields(RunOutcome)}, from_cache=from_cache)


def results_of(job_id: str, plan: list[tuple[str, Any]], outcomes: dict[str, Any], cached: set[str],
               errors: dict[str, str], stopped: bool, settings: Any, image_caption: str, dataset: str,
               elapsed_s: float | None = None, waited_s: float = 0.0, keys: RunKeys = ()) -> Results | None:
    """Finished runs (worker or cache) as plain results (bytes for downloads computed once)."""
    from tipcore.common.pictures import image_grid, png_bytes
    from tipcore.explorer import worker

    names = [name for name, _ in plan]
    done = [outcomes[name] for name in names if name in outcomes]
    out = [defense_result(outcomes[name], name in cached) for name in names if name in outcomes]
    if not done:
        if errors or stopped:
            return Results(job_id, np.zeros((0, 32, 32, 3), np.float32), image_caption, 10, dataset, (),
                           dict(errors), tuple(names), stopped, settings, b"", b"", elapsed_s, waited_s, tuple(keys))
        return None
    original = np.asarray(done[0].original)
    row = np.concatenate([original[:1]] + [d.images[:1] for d in out])
    grid = png_bytes(image_grid([row], scale=4))
    skipped = tuple(n for n in names if n not in outcomes and n not in errors)
    return Results(job_id, original, image_caption, int(done[0].num_classes), dataset, tuple(out), dict(errors),
                   skipped, stopped, settings, worker.metrics_csv(done), grid, elapsed_s, waited_s, tuple(keys))


def collect(job: Job, settings: Any, image_caption: str, dataset: str) -> Results | None:
    """Turn a finished job's runs into plain results."""
    keys = tuple((name, job.keys[name]) for name, _ in job.plan) if all(n in job.keys for n, _ in job.plan) else ()
    return results_of(job.id, job.plan, job.records, job.cached, job.errors, job.status == "stopped", settings,
                      image_caption, dataset, job.elapsed_s, job.waited_s, keys)


def cached_results(plan: list[tuple[str, Any]], images: np.ndarray | None, cache: Any, settings: Any,
                   image_caption: str, dataset: str) -> Results | None:
    """Results for ``plan`` straight from the cache when every run of it is there (a shared link), else None."""
    keys = plan_keys(plan, images) if cache is not None else None  # None: the server runs without a cache
    if not keys:
        return None
    found = {}
    for name, key in keys:
        try:
            outcome = cache.get(key)
        except (ValueError, OSError) as exc:
            log.info("no cache lookup for %s: %s", name, exc)
            return None
        if outcome is None:
            return None  # the first miss decides: no need to read the rest
        found[name] = outcome
    return results_of(f"cache-{uuid.uuid4().hex[:8]}", plan, found, set(found), {}, False, settings,
                      image_caption, dataset, keys=keys)


# Streamlit's toolbar Stop: the browser sends ``stop_script`` and the session asks its script run to stop.
# When that arrives between two runs of the live panel (nearly always: a poll takes milliseconds), no
# exception reaches the page, so the session's handler itself is wrapped to stop the session's job too.
# When it interrupts a run of the live page (the run right after Run, for instance), that run drew only part
# of the page, often nothing: the browser keeps the blank page and no poll is scheduled, so the hook asks for
# one more run of the page, which shows the stopped job's results.
@dataclass
class _LivePage:
    """A session showing the live page, and the job it shows (None: none yet)."""

    job: "weakref.ref[Job] | None"


_TOOLBAR_STOP: dict[str, _LivePage] = {}
_TOOLBAR_LOCK = threading.Lock()


def install_toolbar_stop_hook() -> bool:
    """Wrap ``AppSession._handle_stop_script_request`` once per process; False if Streamlit has no such
    handler any more (then only the page's own Stop button stops an attack)."""
    try:
        from streamlit.runtime.app_session import AppSession
    except ImportError:
        return False
    original = getattr(AppSession, "_handle_stop_script_request", None)
    if original is None:
        log.warning("Streamlit has no AppSession._handle_stop_script_request: the toolbar Stop will not stop "
                    "attacks (the page's Stop button still does)")
        return False
    if getattr(original, "tip_stops_jobs", False):
        return True

    def handle_stop_script_request(self: Any) -> None:
        with _TOOLBAR_LOCK:
            live = _TOOLBAR_STOP.pop(getattr(self, "id", None), None)
        job = live.job() if live is not None and live.job is not None else None
        if job is not None and not job.done:
            log.info("toolbar Stop: stopping attack job %s", job.id)
            job.stop()
        original(self)
        client_state = getattr(self, "_client_state", None)  # the page the browser shows (as run-on-save uses)
        if live is not None and client_state is not None:
            self.request_rerun(client_state)

    handle_stop_script_request.tip_stops_jobs = True  # type: ignore[attr-defined]
    AppSession._handle_stop_script_request = handle_stop_script_request
    return True


def watch_toolbar_stop(on_live_page: bool, job: Job | None) -> None:
    """Tell the toolbar hook what this session shows: on the live page, a toolbar Stop stops ``job`` (if any)
    and redraws the page; elsewhere it is Streamlit's own Stop."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None:
        return
    with _TOOLBAR_LOCK:
        if not on_live_page:
            _TOOLBAR_STOP.pop(ctx.session_id, None)
        else:
            _TOOLBAR_STOP[ctx.session_id] = _LivePage(None if job is None or job.done else weakref.ref(job))


def stop_on_script_stop(job: Job | None | Callable[[], Job | None]) -> Any:
    """A context manager for a page that shows a job: Streamlit's toolbar Stop (and a closed session)
    interrupt the script with ``StopException``; the job stops with it, then the exception goes on.
    ``job`` may be a function that returns the job when the stop arrives (a job started by this very run)."""
    import contextlib

    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    @contextlib.contextmanager
    def guard() -> Any:
        try:
            yield
        except StopException:
            current = job() if callable(job) else job
            if current is not None and not current.done:
                log.info("script stopped (toolbar Stop or session end): stopping attack job %s", current.id)
                current.stop()
            raise

    return guard()
