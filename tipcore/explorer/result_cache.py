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
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tipcore.common.files import read_regular
from tipcore.common.parsing import parse_record, parse_typed
from tipcore.explorer.worker import RunOutcome

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 256
MAX_MB = 2**30  # a petabyte: TIP_CACHE_MB beyond it is a typo, not a cap
FORMAT = 1  # bump when RunOutcome's stored fields change: old entries are then simply missed
TMP_PREFIX = ".tmp-"  # a writer's file until it is renamed into place
# A temporary file older than this belongs to a writer that was killed (a write takes well under a second):
# eviction removes it. Younger ones count against the cap but are left to the writer still busy with them.
STALE_TMP_S = 600.0


def default_dir() -> Path:
    """``$TIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/tip-explorer/results``, else ``~/.cache/tip-explorer/results``."""
    explicit = os.environ.get("TIP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tip-explorer" / "results"


def default_max_bytes() -> int:
    """``$TIP_CACHE_MB`` in bytes (unset or empty: 256 MB; 0 turns the cache off). Anything but a finite
    number >= 0 is a one-line ValueError, by the parser that reads the CLI's flags."""
    raw = os.environ.get("TIP_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_MAX_MB * 1024 * 1024
    try:
        mb = parse_typed(float, raw, name="TIP_CACHE_MB")
    except ValueError as exc:
        raise ValueError(f"{exc} (the result cache's size in MB; 0 turns it off)") from None
    if mb < 0 or mb > MAX_MB:
        raise ValueError(f"TIP_CACHE_MB must be in [0, {MAX_MB}] (MB; 0 turns the cache off), got {raw!r}")
    return int(mb * 1024 * 1024)


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

    ``cfg`` is a ``RunSpec`` (``RunSpec``); the thread count the worker will compute it with
    (``runtime.compute_threads``) is part of the key. Its image fields (gallery ids or the upload's sha256)
    stay in the key because the stored files name them (result.json, images.npy); the pixels' digest is
    added so that a changed gallery asset is a miss, not a stale hit.
    """
    from tipcore import __version__
    from tipcore.common.runtime import compute_threads
    from tipcore.common.seeding import pick_device

    settings = cfg.to_dict()
    settings["device"] = pick_device(cfg.device).type
    settings["defense_options"] = cfg.defense_options()  # the round's clip as the defense applies it
    settings["threads"] = compute_threads()  # the worker's torch threads: another count rounds differently
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
    """An entry's bytes as a RunOutcome, every part checked: a ValueError for anything ``_encode`` would not
    have written (a cache directory is shared, so its files are input like any other)."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:  # np.savez stores, never compresses: no zip bomb
        if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
            raise ValueError("compressed members (this cache stores its arrays uncompressed)")
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode())
        if not isinstance(header, dict) or set(header) != {*_SCALAR_FIELDS, "files"}:
            raise ValueError("a header without RunOutcome's fields")
        names = header.pop("files")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("files is not a list of names")
        # The header's values by RunOutcome's own field types (losses and scores may be NaN or inf).
        scalars = parse_record(RunOutcome, header, name="header", finite=False)
        files = {name: _bytes(npz, f"file_{i}") for i, name in enumerate(names)}
        original, images, history = (_pixels(npz, k) for k in ("original", "images", "history_images"))
        if original.shape != images.shape or len(history) != len(scalars["history_steps"]):
            raise ValueError("arrays of mismatched shapes")
        return RunOutcome(original=original, images=images, history_images=tuple(history), files=files, **scalars)


def _pixels(npz: Any, key: str) -> np.ndarray:
    array = npz[key]
    if array.dtype.kind != "f" or array.ndim != 4:
        raise ValueError(f"{key} is not a stack of float images")
    return array


def _bytes(npz: Any, key: str) -> bytes:
    array = npz[key]
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"{key} is not a byte string")
    return array.tobytes()


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
        """The stored run, or None: missing, and also anything that is not an entry this cache wrote (a
        link, a FIFO or a device, a file over the cap, a damaged file or one with values of the wrong type),
        which is removed where it can be (a link, not what it points to)."""
        path = self._path(key)
        if self.max_bytes == 0:
            return None
        try:
            info = path.lstat()
        except OSError:  # missing, or evicted by another session a moment ago
            return None
        try:
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            raw = read_regular(path, self.max_bytes, what="entry", follow_links=False)  # bounded: never MemoryError
            outcome = _decode(raw)
        except Exception as exc:  # noqa: BLE001 - a bad entry is a miss, and is removed
            log.warning("result cache entry %s unusable (%s): removing it", path.name, " ".join(str(exc).split()))
            if not stat.S_ISDIR(info.st_mode):
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
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".npz", dir=self.root)
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
        return sorted(item for item in self._files() if not item[2].name.startswith("."))

    def temporary(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of each writer's temporary file (a killed writer leaves its own behind)."""
        return sorted(item for item in self._files() if item[2].name.startswith(TMP_PREFIX))

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for path in self.root.glob("*.npz"):  # pathlib's glob matches dot files too: the temporary ones
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((st.st_mtime, st.st_size, path))
        return out

    def size(self) -> int:
        """Bytes on disk: the entries and the writers' temporary files, which the cap counts too."""
        return sum(size for _, size, _ in self._files())

    def evict(self) -> None:
        """Remove temporary files of writers long gone, then the oldest entries until the directory (entries
        and the temporary files still being written) is under the cap."""
        with self._lock():
            now = time.time()
            total = 0
            for mtime, size, path in self.temporary():
                if now - mtime > STALE_TMP_S:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        continue
                total += size
            entries = self.entries()
            total += sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                total -= size
