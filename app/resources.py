"""Things shared by every visitor of one server process, all read-only once built.

* ``st.cache_resource``: thread setup, the attack slots (a global semaphore capping concurrent attacks
  across sessions at ``TIP_MAX_CONCURRENT_ATTACKS``, default 2), Grad-CAM explainers and TIP previews,
  the precomputed showcase assets.
* ``st.cache_data``: the gallery index and its thumbnails.

The engine is imported lazily, inside the functions, so the first page draws before torch has loaded.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

DEFAULT_MAX_ATTACKS = 2

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ process


class EngineWarmup:
    """Imports the engine in a background thread, once per server process, so that the first page that
    needs it does not draw a blank main area while it loads.

    Two phases: ``CORE`` (torch, the registries of models, defenses and attacks, the gallery and the
    precomputed showcase: what the pages drawn from precomputed assets need) and then ``MODULES`` (the
    client round, Grad-CAM, the cache and the worker: seconds more on a busy machine). A page drawn from
    precomputed assets waits only for the core (``wait_core``), so the first view does not wait for Grad-CAM.
    """

    CORE = ("tipcore.explorer.worker", "tipcore.common.parsing", "tipcore.common.runtime", "tipcore.federation.models", "tipcore.defenses", "tipcore.attacks", "tipcore.common.knobs",
            "tipcore.federation.data", "tipcore.explorer.showcase")
    MODULES = ("tipcore.pipeline.experiment", "tipcore.explorer.previews", "tipcore.explorer.result_cache", "tipcore.explorer.worker")

    def __init__(self) -> None:
        self.error: str | None = None
        self._core = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._load, name="tip-engine-warmup", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        import importlib

        try:
            for name in self.CORE:
                importlib.import_module(name)
            self._core.set()
            for name in self.MODULES:
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the page that needs the module reports it properly
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._core.set()
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    @property
    def core_ready(self) -> bool:
        return self._core.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def wait_core(self, timeout: float | None = None) -> bool:
        return self._core.wait(timeout)


_WARMUP: EngineWarmup | None = None
_WARMUP_LOCK = threading.Lock()


def engine_warmup() -> EngineWarmup:
    """The server process's engine loader, started by the first call (an engine page, or the end of the first
    page drawn from assets), shared by every session."""
    global _WARMUP
    with _WARMUP_LOCK:
        if _WARMUP is None:
            _WARMUP = EngineWarmup()
        return _WARMUP


def engine_core_ready() -> bool:
    """Whether torch and the registries are loaded (never starts or waits for the loader)."""
    warmup = _WARMUP
    return warmup is not None and warmup.core_ready


@st.cache_resource(show_spinner=False)
def configure_threads() -> int | None:
    """Torch's thread count for this server's own computations, set once per process through tipcore: the
    count the attack workers and the CLI use (``TIP_THREADS``, else tipcore's default). Skipped if tipcore has
    no runtime; a bad ``TIP_THREADS`` is logged in one line (the attacks then report it, and do not run)."""
    try:
        from tipcore.common.runtime import configure_threads as configure
    except ImportError:
        return None
    try:
        return configure()
    except ValueError as exc:
        log.error("%s: the server keeps torch's own thread count", " ".join(str(exc).split()))
        return None


def max_concurrent_attacks() -> int:
    raw = os.environ.get("TIP_MAX_CONCURRENT_ATTACKS", "")
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_MAX_ATTACKS
    return value if value >= 1 else DEFAULT_MAX_ATTACKS


class AttackSlots:
    """A cap on concurrent attacks with a first-come, first-served queue.

    Holders are the jobs running (each may be asked ``progress()`` for its seconds left), waiters the jobs
    queued for a slot, in arrival order: ``wait_estimate`` says when a waiter's slot should free, from the
    running jobs' measured throughput.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._holders: list[Any] = []
        self._waiters: list[Any] = []

    def _may_enter(self, token: Any) -> bool:
        free = self.capacity - len(self._holders)
        return free > 0 and self._waiters.index(token) < free

    def acquire(self, timeout: float, holder: Any = None) -> bool:
        """Take a slot within ``timeout`` seconds. A ``holder`` keeps its place in the queue between calls
        (until it gets a slot or calls ``leave``); an anonymous caller leaves the queue on timeout."""
        token = holder if holder is not None else object()
        with self._cond:
            if token not in self._waiters:
                self._waiters.append(token)
            if self._cond.wait_for(lambda: self._may_enter(token), timeout):
                self._waiters.remove(token)
                self._holders.append(token)
                return True
            if holder is None:
                self._waiters.remove(token)
                self._cond.notify_all()
            return False

    def leave(self, holder: Any) -> None:
        """A waiter gives up its place."""
        with self._cond:
            if holder in self._waiters:
                self._waiters.remove(holder)
                self._cond.notify_all()

    def release(self, holder: Any = None) -> None:
        with self._cond:
            if holder is not None and holder in self._holders:
                self._holders.remove(holder)
            else:
                anonymous = [t for t in self._holders if type(t) is object]
                if not anonymous:
                    raise ValueError("release() without a slot held")
                self._holders.remove(anonymous[0])
            self._cond.notify_all()

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._holders)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiters)

    def position(self, holder: Any) -> int | None:
        """How many waiters are ahead of ``holder`` (None if it is not waiting)."""
        with self._cond:
            return self._waiters.index(holder) if holder in self._waiters else None

    def next_free_estimate(self) -> float | None:
        """Seconds until a newcomer (behind every current waiter) would get a slot, or None if unknown."""
        with self._cond:
            ahead, running = len(self._waiters), list(self._holders)
        return self._estimate(ahead, running)

    def wait_estimate(self, holder: Any) -> float | None:
        """Seconds until ``holder``'s slot frees, from the running jobs' own estimates (None if unknown)."""
        with self._cond:
            if holder not in self._waiters:
                return None
            ahead, running = self._waiters.index(holder), list(self._holders)
        return self._estimate(ahead, running)

    def _estimate(self, ahead: int, running: list[Any]) -> float | None:
        free = self.capacity - len(running)
        if ahead < free:
            return 0.0
        lefts = []
        for job in running:
            progress = getattr(job, "progress", None)
            left = progress()[1] if progress is not None else None
            if left is None:
                return None
            lefts.append(left)
        lefts.sort()
        index = ahead - free
        # Slots free in the order the running jobs finish; a queue longer than that is not estimated.
        return lefts[index] if index < len(lefts) else None


class Throughput:
    """Attack seconds per step measured on this server, per (model, attack): recent runs, not a table."""

    KEEP = 5  # the last few runs: follows the machine's load without jumping on one outlier

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list[float]] = {}

    def record(self, model: str, attack: str, seconds_per_step: float) -> None:
        if not seconds_per_step > 0:
            return
        with self._lock:
            runs = self._seen.setdefault((model, attack), [])
            runs.append(float(seconds_per_step))
            del runs[:-self.KEEP]

    def seconds_per_step(self, model: str, attack: str) -> float | None:
        """The median of the recent runs, or None if none ran yet."""
        with self._lock:
            runs = sorted(self._seen.get((model, attack), []))
        return runs[len(runs) // 2] if runs else None

    def record_overhead(self, model: str, seconds_per_defense: float) -> None:
        """A finished job's wall time beyond its attack steps (the worker's start, each defense's client
        round and defense), per defense it ran."""
        if seconds_per_defense >= 0:
            self.record(model, OVERHEAD, max(seconds_per_defense, 1e-9))

    def overhead_per_defense(self, model: str) -> float | None:
        """The median of the recent jobs' overhead per defense, or None if none ran yet."""
        return self.seconds_per_step(model, OVERHEAD)


OVERHEAD = "(overhead)"  # Throughput's key for the time a job spends outside its attack steps


@st.cache_resource(show_spinner=False)
def throughput() -> Throughput:
    return Throughput()


@st.cache_resource(show_spinner=False)
def attack_slots() -> AttackSlots:
    return AttackSlots(max_concurrent_attacks())


# ------------------------------------------------------------------------------------------ gallery


@dataclass(frozen=True)
class GalleryItem:
    id: str
    dataset: str
    label: int
    class_name: str
    num_classes: int
    source: str
    licence: str


DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "photo": "Photos (scikit-image)",
}


@st.cache_data(show_spinner=False)
def gallery() -> tuple[GalleryItem, ...]:
    from tipcore.federation import data

    return tuple(
        GalleryItem(s.id, s.dataset, s.label, s.class_name, s.num_classes, s.source, s.licence)
        for s in data.gallery()
    )


def gallery_item(sample_id: str) -> GalleryItem | None:
    for item in gallery():
        if item.id == sample_id:
            return item
    return None


def datasets() -> list[str]:
    seen: list[str] = []
    for item in gallery():
        if item.dataset not in seen:
            seen.append(item.dataset)
    return seen


@st.cache_data(show_spinner=False, max_entries=256)
def sample_image(sample_id: str) -> np.ndarray:
    """(32, 32, 3) float32 in [0, 1]."""
    from tipcore.federation import data

    return data.sample_image(sample_id)


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail_png(sample_id: str, scale: int = 3) -> bytes:
    """A nearest-neighbour upscaled thumbnail, encoded once (PNG bytes are cheap to send on reruns)."""
    from tipcore.common.pictures import png_bytes

    return png_bytes(upscale_sample(sample_id, scale))


def upscale_sample(sample_id: str, scale: int) -> np.ndarray:
    from tipcore.common.pictures import upscale

    return upscale(sample_image(sample_id), scale)


@st.cache_data(show_spinner=False, max_entries=64)
def class_name(dataset: str, num_classes: int, label: int) -> str:
    """A readable class name, or the number when the dataset's label space does not fit."""
    from tipcore.federation import data

    try:
        names = data.class_names(dataset, num_classes)
    except ValueError:
        return str(label)
    return names[label] if 0 <= label < len(names) else str(label)


# ------------------------------------------------------------------------------------------ engine


def registries() -> dict[str, Any]:
    """Names, labels, knobs and help text of models, defenses and attacks (plain data), cached per set of
    registered components (a defense registered after start-up shows up)."""
    from tipcore import attacks, defenses

    return _registries(tuple(defenses.DEFENSES), tuple(attacks.ATTACKS))


# A resource, not data: every page reads it many times per rerun (labels in format functions), and
# cache_data would unpickle a fresh copy on each call. Callers treat it as read-only.
@st.cache_resource(show_spinner=False)
def _registries(defense_names: tuple[str, ...], attack_names: tuple[str, ...]) -> dict[str, Any]:
    from tipcore import attacks, defenses
    from tipcore.common import knobs
    from tipcore.federation import models

    return {
        "models": {n: {"description": m.description, "cpu_attack_ms": m.cpu_attack_ms,
                       "digits": models.has_checkpoint(n)} for n, m in models.MODELS.items()},
        "weights": tuple(models.WEIGHTS),
        "defenses": {n: {"summary": d.summary, "label": d.label, "uses_budget": d.uses_budget,
                         "takes_clip": d.takes_clip, "help": _describe_defense(n), "knobs": knobs.table(d.config_cls)}
                     for n, d in defenses.DEFENSES.items() if n in defense_names},
        "attacks": {n: {"summary": a.summary, "help": _describe_attack(n), "base": a.base, "matcher": a.matcher,
                        "label": a.label} for n, a in attacks.ATTACKS.items()},
        "matchers": {n: {"label": m.label, "short": m.short, "summary": m.summary, "flags_channels": m.flags_channels}
                     for n, m in attacks.MATCHERS.items()},
    }


def _describe_defense(name: str) -> str:
    from tipcore import defenses

    try:
        return defenses.describe(name)
    except Exception:  # noqa: BLE001 - help text only; the summary still shows
        return defenses.DEFENSES[name].summary


def _describe_attack(name: str) -> str:
    from tipcore import attacks

    try:
        return attacks.create(name).describe()
    except Exception:  # noqa: BLE001 - help text only
        return attacks.ATTACKS[name].summary


@st.cache_resource(show_spinner="Computing Grad-CAM on the private image …", max_entries=8)
def explainer(model: str, weights: str, image_key: str, label: int, num_classes: int, mode: str,
              local_steps: int, lr: float, clip: float | None, seed: int, _image: np.ndarray) -> Any:
    """A ``TipExplainer`` per (model, image, round): the Grad-CAM α is computed once and shared read-only.

    ``image_key`` identifies ``_image`` (a gallery id or the upload's hash), which is not hashed itself.
    """
    from tipcore.explorer.previews import TipExplainer
    from tipcore.federation.fl import RoundConfig

    round_cfg = RoundConfig(mode=mode, batch_size=1, local_steps=local_steps, lr=lr, clip=clip)
    return TipExplainer(model, _image, label, weights=weights, num_classes=num_classes, round_cfg=round_cfg,
                        seed=seed)


@st.cache_resource(show_spinner=False, max_entries=4)
def tip_preview(explainer_key: tuple, options: tuple, variant: str, _explainer: Any) -> Any:
    """``explainer.preview`` for these slider values (cheap; cached so reruns of a view cost nothing)."""
    return _explainer.preview(dict(options), defense=variant)


# ------------------------------------------------------------------------------------------ showcase


def showcase_module() -> Any:
    try:
        from tipcore.explorer import showcase
    except ImportError:
        return None
    return showcase


@st.cache_resource(show_spinner=False, ttl=300)
def punchline() -> Any:
    mod = showcase_module()
    return None if mod is None else mod.load_punchline()


@st.cache_resource(show_spinner=False, ttl=300)
def privacy_curves() -> Any:
    """The sweep's privacy curves (plain JSON data), or None when the file has not been made yet."""
    mod = showcase_module()
    loader = getattr(mod, "load_privacy_curves", None)
    return None if loader is None else loader()


def showcase_command(kind: str) -> str:
    """The command that generates a missing showcase asset, as the engine names it (or a best guess)."""
    mod = showcase_module()
    for attr in (f"{kind.upper().replace(' ', '_')}_COMMAND", "COMMAND"):
        value = getattr(mod, attr, None) if mod is not None else None
        if isinstance(value, str):
            return value
    return f"python -m tipcore showcase --{kind}"


# ------------------------------------------------------------------------------------------ what leaks


@st.cache_resource(show_spinner=False, max_entries=4)
def leak_view(explainer_key: tuple, options: tuple, variant: str, _explainer: Any, _preview: Any) -> Any:
    """``explainer.leaks(preview)``: per-channel energies and fc rows of the update before and after the
    defense (numpy only), keyed like ``tip_preview``."""
    return _explainer.leaks(_preview)


@st.cache_resource(show_spinner=False, ttl=300)
def tip_grid() -> Any:
    """The "How TIP works" page's precomputed reconstructions (``tipcore.explorer.tip_grid``), or None when not built.
    Raises ValueError when the grid's files do not fit together (not cached, so a rebuild is picked up)."""
    try:
        from tipcore.explorer import tip_grid as grid
    except ImportError:
        return None
    return grid.load()
