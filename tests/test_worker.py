"""Attacks in a worker process (tipcore.explorer.worker), the shared result cache (tipcore.explorer.result_cache), and the
app's job around them: progress from measured throughput, the slot queue, Streamlit's Stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tipcore.common import runtime
from tipcore.pipeline import experiment
from tipcore.explorer import worker
from tipcore.federation.fl import RoundConfig
from tipcore.explorer.result_cache import ResultCache, run_key

# The wall-clock times of a run: the only bytes of its files that another run of the same RunSpec changes
# (result.json's three, metrics.csv's last column); README "Determinism" says so.
TIMING_KEYS = ("seconds", "round_seconds", "defense_seconds")


def tiny(defense: str = "none", **changes) -> experiment.RunSpec:
    cfg = experiment.RunSpec(round=RoundConfig(clip=5.0), defense=defense, attack="idlg",
                                      attack_cfg={"iterations": 3}, report_every=1)
    return replace(cfg, **changes)


def drain(run: worker.WorkerRun, limit: float = 120.0) -> list:
    events, deadline = [], time.monotonic() + limit
    while run.ended is None:
        assert time.monotonic() < deadline, "the worker did not end in time"
        events += run.events(timeout=0.5)
        assert run.ended is not None or run.process.is_alive() or run.events(timeout=0.5), "worker died"
    return events


def without_timing(result_json: bytes) -> dict:
    d = json.loads(result_json)
    for key in TIMING_KEYS:
        d.pop(key, None)
    return d


@pytest.fixture(scope="module")
def worker_events() -> list:
    """One two-run plan through a real worker process (spawned once for the module: it loads torch)."""
    run = worker.WorkerRun([("none", tiny()), ("tip", tiny("tip"))]).start()
    try:
        return drain(run)
    finally:
        run.close()


def test_worker_streams_small_snapshots_and_the_clis_files(worker_events: list) -> None:
    kinds = [type(e).__name__ for e in worker_events]
    assert kinds[0] == "Started" and kinds[-1] == "Ended" and kinds.count("Finished") == 2
    snaps = [e for e in worker_events if isinstance(e, worker.LiveSnapshot)]
    assert [s.step for s in snaps if s.name == "none"] == [1, 2, 3]
    assert all(s.images.shape == (1, 32, 32, 3) and s.images.dtype == np.float32 for s in snaps)
    outcomes = {e.name: e.outcome for e in worker_events if isinstance(e, worker.Finished)}
    # The same run in this process, as the CLI does it (at the CLI's thread count): the same files, timings aside.
    torch.set_num_threads(runtime.compute_threads())  # conftest's _pin_threads puts the tests' count back
    for name, cfg in (("none", tiny()), ("tip", tiny("tip"))):
        here = experiment.artifact_files(experiment.run(cfg))
        there = outcomes[name].files
        assert set(there) == set(here)
        assert without_timing(there["result.json"]) == without_timing(here["result.json"])
        for fname in ("defense.json", "original.png", "reconstruction.png", "progress.png"):
            assert there[fname] == here[fname], fname
    combined = worker.metrics_csv(outcomes.values()).decode().splitlines()
    assert combined[0].startswith("defense,attack") and [r.split(",")[0] for r in combined[1:]] == ["none", "tip"]


def test_a_spare_worker_is_warm_before_its_plan_and_writes_the_same_files(worker_events: list) -> None:
    """Run pressed on a warm server: the spare has loaded torch and the engine and waits; handed a plan it
    runs it as a fresh worker would (the same files); refill() starts the next spare, a no-op while one waits."""
    spare = worker.Spare()
    try:
        spare.refill()
        first = spare.waiting()
        assert first is not None and not first.submitted
        deadline = time.monotonic() + 120
        while not first.ready:  # wait on state: the child's Ready message
            assert time.monotonic() < deadline and first.process.is_alive(), "the spare did not get ready"
            assert first.events(timeout=0.5) == []  # nothing but Ready before its plan
        spare.refill()
        assert spare.waiting() is first  # one waits already: no second process
        run = spare.take([("none", tiny())])
        assert run is first and run.submitted and spare.waiting() is None
        try:
            events = drain(run)
        finally:
            run.close()
        here = next(e.outcome for e in events if isinstance(e, worker.Finished)).files
        fresh = next(e.outcome for e in worker_events if isinstance(e, worker.Finished) and e.name == "none").files
        assert without_timing(here["result.json"]) == without_timing(fresh["result.json"])
        assert here["reconstruction.png"] == fresh["reconstruction.png"]
        with pytest.raises(RuntimeError, match="already has its plan"):
            run.submit([("none", tiny())])
    finally:
        waiting = spare.waiting()
        if waiting is not None:
            waiting.close()


def test_a_spare_made_for_another_thread_count_is_replaced_and_a_stopped_spare_ends(monkeypatch) -> None:
    spare = worker.Spare()
    spare.refill()
    old = spare.waiting()
    assert old is not None
    monkeypatch.setenv("TIP_THREADS", str(old.threads + 1))
    spare.refill()  # the count changed: the waiting spare computes with the wrong one, so it goes
    new = spare.waiting()
    assert new is not None and new is not old and new.threads == old.threads + 1
    assert not old.process.is_alive() and old not in worker.live_workers()
    new.stop()  # what stop_all does at the server's exit: a spare waiting for its plan ends
    new.process.join(60)
    assert not new.process.is_alive()
    new.close()


REPO = Path(__file__).resolve().parents[1]
# tiny("tip") on the command line
CLI_TINY = ["attack", "--model", "lenet", "--image-id", "cifar10-00", "--clip", "5", "--attack", "idlg",
            "--defense", "tip", "--iters", "3", "--report-every", "1", "--seed", "0", "--quiet"]


def wall_times_blanked(name: str, payload: bytes) -> bytes:
    """A file's bytes with the run's wall-clock times (TIMING_KEYS) blanked, everything else untouched."""
    if name == "result.json":
        keys = b"|".join(k.encode() for k in TIMING_KEYS)
        blanked, n = re.subn(rb'("(?:' + keys + rb')": )[^,\n]+', rb"\1T", payload)
        assert n == len(TIMING_KEYS), payload[:200]
        return blanked
    if name == "metrics.csv":  # its last column is the attack's seconds
        return b"\n".join(line.rsplit(b",", 1)[0] for line in payload.split(b"\n"))
    return payload


def test_the_app_and_the_cli_write_the_same_bytes_whatever_the_ambient_threads(tmp_path: Path,
                                                                              monkeypatch) -> None:
    """The worker (the app's downloads) and the CLI compute with TIP_THREADS (else the fixed default), never
    with what their process or environment happened to be set to: byte-identical files but the wall times."""
    monkeypatch.setenv("TIP_THREADS", "3")  # a count other than the worker's old fixed 1 and the CLI's old cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # ambient settings that must not matter
        monkeypatch.setenv(var, "1")
    torch.set_num_threads(1)  # this process, the worker's parent (conftest's _pin_threads restores it)
    cfg = tiny("tip")
    run = worker.WorkerRun([("tip", cfg)]).start()
    try:
        events = drain(run)
    finally:
        run.close()
    (finished,) = [e for e in events if isinstance(e, worker.Finished)]
    app_files = finished.outcome.files
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "tipcore", *CLI_TINY, "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    cli_files = {f.name: f.read_bytes() for f in out.iterdir()}
    assert set(cli_files) == set(app_files)
    cli_result = json.loads(cli_files["result.json"])
    assert cli_result["spec"] == cfg.to_dict() and cli_result["threads"] == "3"
    for name in sorted(app_files):
        assert wall_times_blanked(name, app_files[name]) == wall_times_blanked(name, cli_files[name]), name


def test_worker_stops_on_request_and_runs_niced() -> None:
    run = worker.WorkerRun([("none", tiny(attack="ig", attack_cfg={"iterations": 100000}, report_every=5)),
                            ("tip", tiny("tip"))]).start()
    try:
        deadline = time.monotonic() + 120
        snaps = []
        while not snaps:
            assert time.monotonic() < deadline and run.process.is_alive(), "no snapshot from the worker"
            snaps = [e for e in run.events(0.5) if isinstance(e, worker.LiveSnapshot)]
        nice = int(Path(f"/proc/{run.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == os.nice(0) + worker.DEFAULT_NICE or nice == 19
        run.stop()
        events = drain(run, 60)
        (finished,) = [e for e in events if isinstance(e, worker.Finished)]
        assert finished.name == "none" and finished.outcome.stopped and finished.outcome.iterations < 100000
        assert run.ended.stopped and not any(isinstance(e, worker.Started) and e.name == "tip" for e in events)
    finally:
        run.close()
    assert not run.process.is_alive()


def test_worker_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        worker.WorkerRun([])
    with pytest.raises(ValueError, match="nice"):
        worker.WorkerRun([("none", tiny())], nice=25)


# ---------------------------------------------------------------------------------------------- cache


def test_run_key_covers_every_setting_and_the_pixels() -> None:
    base = tiny()
    key = run_key(base)
    assert run_key(tiny()) == key and len(key) == 64
    changed = [replace(base, seed=1), replace(base, model="convnet"), replace(base, weights="digits"),
               replace(base, round=RoundConfig(clip=4.0)), replace(base, defense="tip"),
               replace(base, defense="prune", defense_cfg={"ratio": 0.5}), replace(base, attack="dlg"),
               replace(base, attack_cfg={"iterations": 4}), replace(base, image_ids=("cifar10-01",)),
               replace(base, labels_known=True), replace(base, report_every=2)]
    keys = {run_key(c) for c in changed}
    assert key not in keys and len(keys) == len(changed)
    # An upload is keyed by its pixels (its files name the upload, not a gallery id).
    from tipcore.federation import data

    pixels = data.sample_image("cifar10-00")[None]
    upload = replace(base, labels=(3,)).for_upload(pixels)
    assert run_key(upload, pixels) == run_key(replace(base, labels=(3,)).for_upload(pixels.copy()), pixels.copy())
    assert run_key(upload, pixels) != run_key(replace(base, labels=(3,)))
    darker = replace(base, labels=(3,)).for_upload(pixels * 0.5)
    assert run_key(darker, pixels * 0.5) != run_key(upload, pixels)


def test_cache_round_trip_lru_and_stopped_runs(worker_events: list, tmp_path: Path) -> None:
    outcome = next(e.outcome for e in worker_events if isinstance(e, worker.Finished))
    cache = ResultCache(tmp_path, max_bytes=10**9)
    key = run_key(tiny())
    assert cache.get(key) is None
    assert cache.put(key, outcome)
    back = cache.get(key)
    assert back.files == outcome.files and back.psnr == outcome.psnr and back.label_pred == outcome.label_pred
    assert np.array_equal(back.images, outcome.images) and len(back.history_images) == len(outcome.history_images)
    assert back.analysis == outcome.analysis and back.summary == outcome.summary
    assert not cache.put("0" * 64, replace(outcome, stopped=True))  # a stopped run answers nothing
    assert cache.get("0" * 64) is None
    # LRU under a cap of two entries: reading the oldest keeps it, the untouched one goes.
    size = cache.size()
    small = ResultCache(tmp_path / "lru", max_bytes=int(size * 2.5))
    keys = [f"{i:064x}" for i in range(3)]
    small.put(keys[0], outcome)
    small.put(keys[1], outcome)
    old = time.time() - 100
    os.utime(small.root / f"{keys[0]}.npz", (old, old))
    os.utime(small.root / f"{keys[1]}.npz", (old - 10, old - 10))
    assert small.get(keys[0]) is not None  # refreshed
    small.put(keys[2], outcome)
    assert small.get(keys[1]) is None and small.get(keys[0]) is not None and small.get(keys[2]) is not None
    assert small.size() <= small.max_bytes
    # A damaged entry is a miss, not an error, and goes away.
    (small.root / f"{keys[0]}.npz").write_bytes(b"not a zip")
    assert small.get(keys[0]) is None and not (small.root / f"{keys[0]}.npz").exists()
    with pytest.raises(ValueError, match="not a cache key"):
        small.get("../../etc/passwd")


def test_cache_is_safe_under_concurrent_writers(worker_events: list, tmp_path: Path) -> None:
    outcome = next(e.outcome for e in worker_events if isinstance(e, worker.Finished))
    cache = ResultCache(tmp_path, max_bytes=10**9)
    cache.put("f" * 64, outcome)
    entry = cache.size()
    shared = ResultCache(tmp_path / "shared", max_bytes=entry * 3)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(6):
                shared.put(f"{offset * 100 + i:064x}", outcome)
                got = shared.get(f"{offset * 100 + i:064x}")
                assert got is None or got.files == outcome.files  # whole entries or none
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert shared.size() <= shared.max_bytes
    assert not list(shared.root.glob(".tmp-*"))  # no temporary file left behind


def small_outcome() -> worker.RunOutcome:
    """A finished run as the cache stores it, made up (no attack needed to test the storage)."""
    image = np.zeros((1, 32, 32, 3), np.float32)
    return worker.RunOutcome(
        defense="none", attack="idlg", original=image, images=image, num_classes=10, psnr=12.5, ssim=0.5,
        label_true=(3,), label_pred=(3,), label_accuracy=1.0, iterations=2, restarts=0, seconds=1.0, stopped=False,
        diverged=False, history_steps=(1, 2), history_images=(image[0], image[0]), history_losses=(0.5, float("nan")),
        summary={"beta": 0.1}, notes="", analysis={"match": "all", "detection": {"precision": None}},
        files={"result.json": b"{}", "original.png": b"png"})


def _with_header(entry: Path, **changes) -> bytes:
    """The entry's bytes with some header values replaced (as a tampered or foreign file would hold)."""
    import io

    with np.load(entry) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(arrays["header"].tobytes())
    header.update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@contextlib.contextmanager
def address_space_growth_limit(extra: int):
    """An endless read (a link to /dev/urandom read whole) then fails with MemoryError instead of filling the
    machine's memory: only what the fixed cache never does needs the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        cap = int(f.read().split()[0]) * resource.getpagesize() + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_cache_entry_is_validated_on_read_and_a_bad_one_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, max_bytes=10**7)
    good = "a" * 64
    assert cache.put(good, small_outcome())
    back = cache.get(good)
    assert back is not None and back.label_pred == (3,) and np.isnan(back.history_losses[1])
    entry = tmp_path / f"{good}.npz"
    # Values of the wrong type: a miss (and the entry goes), never an outcome the page would trip over.
    for i, change in enumerate([{"psnr": "high"}, {"stopped": "no"}, {"history_steps": ["x"]}, {"num_classes": [10]},
                                {"label_pred": 3}, {"summary": [1]}, {"extra": 1}]):
        key = f"{i + 1:064x}"
        (tmp_path / f"{key}.npz").write_bytes(_with_header(entry, **change))
        assert cache.get(key) is None, change
        assert not (tmp_path / f"{key}.npz").exists(), change
    # Not a regular file, or over the cap: a miss, without reading it (a link is removed, not its target).
    os.symlink("/dev/urandom", tmp_path / f"{'b' * 64}.npz")
    os.symlink(entry, tmp_path / f"{'c' * 64}.npz")  # even a link to a good entry is not one of ours
    os.mkfifo(tmp_path / f"{'d' * 64}.npz")
    (tmp_path / f"{'e' * 64}.npz").mkdir()
    with open(tmp_path / f"{'f' * 64}.npz", "wb") as f:
        f.truncate(cache.max_bytes + 1)  # sparse: no disk used
    with address_space_growth_limit(2 * 2**30):
        for key in ("b", "c", "d", "e", "f"):
            assert cache.get(key * 64) is None, key
    assert os.path.exists("/dev/urandom") and entry.is_file() and (tmp_path / f"{'e' * 64}.npz").is_dir()
    assert cache.get(good) is not None


def test_the_cap_counts_temporary_files_and_eviction_removes_a_dead_writers(tmp_path: Path) -> None:
    outcome = small_outcome()
    probe = ResultCache(tmp_path / "probe", max_bytes=10**7)
    probe.put("0" * 64, outcome)
    entry = probe.size()
    cache = ResultCache(tmp_path / "cache", max_bytes=3 * entry)
    cache.root.mkdir()
    dead = [cache.root / f".tmp-dead{i}.npz" for i in range(4)]  # what a killed writer leaves: 4 entries' worth
    for path in dead:
        path.write_bytes(b"x" * entry)
        old = time.time() - 2 * 3600
        os.utime(path, (old, old))
    busy = cache.root / ".tmp-busy.npz"  # a writer at work now: counted, not removed
    busy.write_bytes(b"x" * entry)
    assert cache.size() == 5 * entry  # what is on disk, temporary files included
    for i in range(3):
        assert cache.put(f"{i + 1:064x}", outcome)
    assert not any(path.exists() for path in dead) and busy.exists()
    assert cache.size() <= cache.max_bytes
    assert len(cache.entries()) == 2  # the busy writer's file took the third entry's room


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "garbage", "-5", "1e400", "1e30"])
def test_a_bad_cache_size_in_the_environment_is_a_one_line_error(monkeypatch, caplog, value: str) -> None:
    monkeypatch.setenv("TIP_CACHE_MB", value)
    with pytest.raises(ValueError) as raised:
        ResultCache.default()
    assert "TIP_CACHE_MB" in str(raised.value) and repr(value) in str(raised.value)
    assert "\n" not in str(raised.value)
    from app import jobs

    monkeypatch.setattr(jobs, "_CACHE_WARNED", False)
    assert jobs.result_cache() is None  # the server runs on, without a cache, and says so in its log once
    assert jobs.result_cache() is None
    said = [r.getMessage() for r in caplog.records if "TIP_CACHE_MB" in r.getMessage()]
    assert len(said) == 1 and "without the result cache" in said[0]
    monkeypatch.setenv("TIP_CACHE_MB", "0.5")
    assert ResultCache.default().max_bytes == 2**19


# ---------------------------------------------------------------------------------------------- app job


class FakeSnap:
    def __init__(self, step: int, elapsed_s: float) -> None:
        self.step, self.elapsed_s, self.loss = step, elapsed_s, 0.0
        self.images = np.zeros((1, 32, 32, 3), np.float32)


def test_eta_comes_from_measured_throughput_and_the_queue() -> None:
    pytest.importorskip("streamlit")
    from app import jobs, resources

    slots = resources.AttackSlots(1)
    job = jobs.Job(plan=[("none", None), ("tip", None)], images=None, slots=slots, iterations=100)
    job.status, job.current = "running", "none"
    assert job.progress() == (0.0, None)  # nothing measured yet: no made-up number
    job.latest["none"] = FakeSnap(step=20, elapsed_s=10.0)  # 0.5 s per step, measured
    frac, left = job.progress()
    assert frac == pytest.approx(0.1) and left == pytest.approx(80 * 0.5 + 100 * 0.5)
    job.latest["none"] = FakeSnap(step=20, elapsed_s=40.0)  # the machine got busy: 2 s per step
    assert job.progress()[1] == pytest.approx(80 * 2.0 + 100 * 2.0)

    # A second job waits behind it: its slot frees when the first job's measured time is up.
    assert slots.acquire(0.01, holder=job)
    second = jobs.Job(plan=[("none", None)], images=None, slots=slots, iterations=100)
    assert not slots.acquire(0.01, holder=second)
    assert slots.position(second) == 0 and second.wait_estimate() == pytest.approx(360.0)
    third = jobs.Job(plan=[("none", None)], images=None, slots=slots, iterations=100)
    assert not slots.acquire(0.01, holder=third)
    assert slots.position(third) == 1 and third.wait_estimate() is None  # behind a job not measured yet
    slots.release(job)
    assert slots.acquire(0.01, holder=second) and not slots.acquire(0.01, holder=third)  # first come first served
    slots.leave(third)
    assert slots.waiting == 0


def test_streamlit_stop_stops_the_job() -> None:
    pytest.importorskip("streamlit")
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

    from app import jobs

    job = jobs.Job(plan=[("none", None)], images=None, slots=None, iterations=10)
    with pytest.raises(RerunException):
        with jobs.stop_on_script_stop(job):
            raise RerunException(None)  # a widget interaction reruns: the attack goes on
    assert not job.stop_event.is_set()
    with pytest.raises(StopException):
        with jobs.stop_on_script_stop(job):
            raise StopException()  # the toolbar's Stop (or the session ending)
    assert job.stop_event.is_set()


def test_toolbar_stop_between_script_runs_stops_the_sessions_job_and_redraws_the_page() -> None:
    pytest.importorskip("streamlit")
    import types
    import weakref

    from streamlit.runtime.app_session import AppSession

    from app import jobs

    assert jobs.install_toolbar_stop_hook() and jobs.install_toolbar_stop_hook()  # once, idempotent
    job = jobs.Job(plan=[("none", None)], images=None, slots=None, iterations=10)
    other = jobs.Job(plan=[("none", None)], images=None, slots=None, iterations=10)
    asked: list[object] = []
    jobs._TOOLBAR_STOP["session-a"] = jobs._LivePage(weakref.ref(job))
    jobs._TOOLBAR_STOP["session-b"] = jobs._LivePage(weakref.ref(other))
    jobs._TOOLBAR_STOP["session-c"] = jobs._LivePage(None)  # the live page, no job yet (Run just pressed)

    def session(name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(id=name, _client_state=f"state-{name}",
                                     request_script_stop=lambda: asked.append(("stop", name)),
                                     request_rerun=lambda state: asked.append(("rerun", state)))

    AppSession._handle_stop_script_request(session("session-a"))  # what the browser's stop_script message calls
    assert job.stop_event.is_set() and not other.stop_event.is_set()
    # the interrupted run of the live page may have drawn nothing: the page is run once more, as the browser shows it
    assert asked == [("stop", "session-a"), ("rerun", "state-session-a")]
    asked.clear()
    AppSession._handle_stop_script_request(session("session-c"))
    assert asked == [("stop", "session-c"), ("rerun", "state-session-c")] and not other.stop_event.is_set()
    asked.clear()
    AppSession._handle_stop_script_request(session("session-d"))  # another page: Streamlit's own Stop, no redraw
    assert asked == [("stop", "session-d")]
    jobs._TOOLBAR_STOP.pop("session-b")


def test_script_stop_stops_a_job_started_by_the_interrupted_run() -> None:
    pytest.importorskip("streamlit")
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from app import jobs

    started: dict[str, jobs.Job] = {}
    with pytest.raises(StopException):
        with jobs.stop_on_script_stop(lambda: started.get("job")):
            started["job"] = jobs.Job(plan=[("none", None)], images=None, slots=None, iterations=10)
            raise StopException()  # the toolbar Stop lands after the page's Run started the job
    assert started["job"].stop_event.is_set()


def test_job_answers_from_the_cache_without_a_slot(worker_events: list, tmp_path: Path) -> None:
    pytest.importorskip("streamlit")
    from app import jobs, resources

    outcome = next(e.outcome for e in worker_events if isinstance(e, worker.Finished) and e.name == "none")
    cache = ResultCache(tmp_path, max_bytes=10**9)
    cache.put(run_key(tiny()), outcome)
    slots = resources.AttackSlots(1)
    assert slots.acquire(0.01)  # every slot taken: a job that needed one would wait
    job = jobs.Job(plan=[("none", tiny())], images=None, slots=slots, iterations=3, cache=cache).start()
    assert job.wait(30) and job.status == "done" and job.cached == {"none"} and job.started is None
    res = jobs.collect(job, None, "cifar10-00", "cifar10")
    assert res.defenses[0].from_cache and res.defenses[0].files == outcome.files and res.elapsed_s is None
    assert jobs.cached_results([("none", tiny())], None, cache, None, "", "cifar10") is not None
    assert jobs.cached_results([("none", tiny()), ("tip", tiny("tip"))], None, cache, None, "", "cifar10") is None


def test_a_finished_job_reports_its_speed_and_its_time_beyond_the_attack() -> None:
    """What the estimate of the next run uses: the attack's seconds per step and, per defense, the rest of the
    job's wall time (the worker's start, the client round and the defense), measured on a real worker."""
    pytest.importorskip("streamlit")
    from app import jobs, resources

    tp = resources.Throughput()
    slots = resources.AttackSlots(1)
    job = jobs.Job(plan=[("none", tiny()), ("tip", tiny("tip"))], images=None, slots=slots, iterations=3,
                   throughput=tp).start()
    assert job.wait(180) and job.status == "done", job.errors
    per_defense = tp.overhead_per_defense("lenet")
    attack_s = sum(o.seconds for o in job.records.values())
    assert per_defense is not None and per_defense > 0 and tp.seconds_per_step("lenet", "idlg") is not None
    assert per_defense * 2 + attack_s == pytest.approx(job.elapsed_s, rel=0.05, abs=0.5)


def test_estimate_before_a_run_uses_this_servers_measured_speed_and_the_queue(monkeypatch) -> None:
    pytest.importorskip("streamlit")
    from app import controls, jobs, resources, state

    s = state.Settings(model="convnet", attack="dlg", defenses=("none", "tip"), iterations=100)
    tp = resources.Throughput()  # a server that has run nothing yet (other tests' jobs report to the shared one)
    monkeypatch.setattr(resources, "throughput", lambda: tp)
    assert tp.seconds_per_step("convnet", "dlg") is None
    table, measured = controls.step_seconds(s)
    assert not measured
    for value in (0.5, 9.0, 0.4):  # the median of recent runs, not the outlier
        tp.record("convnet", "dlg", value)
    assert controls.step_seconds(s) == (0.5, True)
    seconds, how = controls.estimate(s)  # no job finished yet: a quiet machine's worker start and preparation
    start = controls.WORKER_START_S + 2 * controls.PREPARE_S
    assert seconds == pytest.approx(100 * 0.5 * 2 + start) and "measured on this server" in how
    assert "a quiet machine's" in how
    for value in (3.0, 40.0, 2.0):  # jobs' time beyond their attack steps, per defense: the median again
        tp.record_overhead("convnet", value)
    seconds, how = controls.estimate(s)
    assert seconds == pytest.approx(100 * 0.5 * 2 + 2 * 3.0) and "to start the attack worker" in how
    assert tp.overhead_per_defense("lenet") is None and tp.seconds_per_step("convnet", "dlg") == 0.5
    # Every slot busy with a job 30 s from its end: the wait is part of the estimate.
    slots = resources.attack_slots()
    busy = [jobs.Job(plan=[("none", None)], images=None, slots=slots, iterations=100) for _ in range(slots.capacity)]
    for job in busy:
        job.status, job.current = "running", "none"
        job.latest["none"] = FakeSnap(step=40, elapsed_s=20.0)  # 0.5 s per step, 60 steps left
        assert slots.acquire(0.01, holder=job)
    try:
        seconds, how = controls.estimate(s)
        assert seconds == pytest.approx(100 + 6 + 30, abs=1.0) and "waiting for a free attack slot" in how
    finally:
        for job in busy:
            slots.release(job)
