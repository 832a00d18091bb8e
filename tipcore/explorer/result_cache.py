"""A disk cache of finished runs, shared by every session (and process) of one machine.

A run is keyed by everything that decides its result: the private images' pixels, the full experiment
settings (model, weights, round, defense and its options, attack and its options, seed, labels, threat
model, snapshot cadence), the device it runs on and the engine's version. ``run_key`` is the one place
that says so. Only complete runs are stored (a stopped run is not the answer to its settings).

One entry is one ``.npz`` file (arrays, a JSON header and the run's artifact files as raw bytes; read
with ``allow_pickle=False``). Writes go to a temporary file in the same directory and are renamed into
place (``os.replace``), so a reader sees a whole entry or none, whatever other sessions do. A hit
refreshes the entry's modification time; after each write the oldest entries are evicted until the
directory is under its byte cap (under an ``fcntl`` lock, so two writers do not evict at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tipcore.explorer.worker import RunOutcome

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 256
FORMAT = 1  # bump when RunOutcome's stored fields change: old entries are then simply missed


def default_dir() -> Path:
    """``$TIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/tip-explorer/results``, else ``~/.cache/tip-explorer/results``."""
    explicit = os.environ.get("TIP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tip-explorer" / "results"


def default_max_bytes() -> int:
    raw = os.environ.get("TIP_CACHE_MB", "")
    try:
        mb = float(raw)
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0) * 1024 * 1024) if raw else DEFAULT_MAX_MB * 1024 * 1024


def images_digest(cfg: Any, images: np.ndarray | None) -> dict[str, Any]:
    """SHA-256 of the private images' float32 pixels (gallery ids resolved to their pixels), with the
    labels and class count the run will use."""
    from tipcore.pipeline import experiment

    arrays, labels, num_classes = experiment.resolve_images(cfg, images)
    arrays = np.ascontiguousarray(arrays, dtype=np.float32)
    h = hashlib.sha256(str(arrays.shape).encode())
    h.update(arrays.tobytes())
    return {"pixels": h.hexdigest(), "labels": [int(v) for v in labels], "num_classes": int(num_classes)}


def run_key(cfg: Any, images: np.ndarray | None = None) -> str:
    """The cache key of one run: every setting that decides its result, and nothing else.

    ``cfg`` is a ``RunSpec`` (``RunSpec``). Its image fields (gallery ids or the upload's sha256)
    stay in the key because the stored files name them (result.json, images.npy); the pixels' digest is
    added so that a changed gallery asset is a miss, not a stale hit.
    """
    from tipcore import __version__
    from tipcore.common.seeding import pick_device

    settings = cfg.to_dict()
    settings["device"] = pick_device(cfg.device).type
    settings["defense_options"] = cfg.defense_options()  # the round's clip as the defense applies it
    payload = {"format": FORMAT, "tipcore": __version__, "images": images_digest(cfg, images),
               "settings": settings}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- storage

_ARRAY_FIELDS = ("original", "images")
_SCALAR_FIELDS = ("defense", "attack", "num_classes", "psnr", "ssim", "label_true", "label_pred",
                  "label_accuracy", "iterations", "restarts", "seconds", "stopped", "diverged", "history_steps",
                  "history_losses", "summary", "notes", "analysis")


def _encode(outcome: RunOutcome) -> bytes:
    header = {name: getattr(outcome, name) for name in _SCALAR_FIELDS}
    header["files"] = list(outcome.files)
    arrays: dict[str, np.ndarray] = {name: np.asarray(getattr(outcome, name)) for name in _ARRAY_FIELDS}
    arrays["history_images"] = (np.stack(outcome.history_images) if outcome.history_images
                                else np.zeros((0,) + outcome.images.shape[1:], np.float32))
    for i, payload in enumerate(outcome.files.values()):
        arrays[f"file_{i}"] = np.frombuffer(payload, dtype=np.uint8)
    arrays["header"] = np.frombuffer(json.dumps(header, allow_nan=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode(raw: bytes) -> RunOutcome:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode())
        files = {name: npz[f"file_{i}"].tobytes() for i, name in enumerate(header.pop("files"))}
        history = npz["history_images"]
        return RunOutcome(
            original=npz["original"], images=npz["images"], history_images=tuple(history),
            files=files, **{**header, "label_true": tuple(header["label_true"]),
                            "label_pred": tuple(header["label_pred"]),
                            "history_steps": tuple(header["history_steps"]),
                            "history_losses": tuple(header["history_losses"])},
        )


@dataclass
class ResultCache:
    """Finished runs on disk, at most ``max_bytes`` in all (least recently used evicted first)."""

    root: Path
    max_bytes: int

    @classmethod
    def default(cls) -> "ResultCache":
        return cls(default_dir(), default_max_bytes())

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {self.max_bytes}")

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / f"{key}.npz"

    def get(self, key: str) -> RunOutcome | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except OSError:  # missing, or evicted by another session a moment ago
            return None
        try:
            outcome = _decode(raw)
        except Exception as exc:  # noqa: BLE001 - a damaged entry is a miss, and is removed
            log.warning("result cache entry %s unreadable (%s): removing it", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return outcome

    def put(self, key: str, outcome: RunOutcome) -> bool:
        """Store a complete run; False (nothing written) for a stopped run or when the cache is off/full."""
        if outcome.stopped or self.max_bytes == 0:
            return False
        path = self._path(key)
        raw = _encode(outcome)
        if len(raw) > self.max_bytes:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.root)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(raw)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self.evict()
        except OSError as exc:  # a read-only or full disk only means no caching
            log.warning("result cache write failed (%s): continuing without caching", exc)
            return False
        return True

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of each entry, oldest first."""
        out = []
        for path in self.root.glob("*.npz"):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, path))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> None:
        with self._lock():
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                total -= size
