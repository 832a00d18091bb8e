"""Result directories that are checked before any compute and appear whole or not at all.

``StagedOutput(out, kind)`` is made before a command computes anything: it refuses a target that cannot
be written, that is the current directory (or holds it), that is a file, or that holds anything other
than an earlier result of the same kind (unless ``overwrite``), and it creates the temporary directory
next to the target at once, so a path the OS refuses fails in a second, not after a long attack.
``commit(files)`` writes the files into that directory and renames it over the target; on any error
(``discard``, or leaving the ``with`` block by an exception) the temporary directory and any parent
directories it had to create are removed again. Directories are made with ``os.mkdir``'s default mode,
so the umask decides their permissions, as for any directory the user makes.

Torch-free, so the CLI can check ``--out`` before it imports the engine.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Mapping

# What each command writes: an existing directory holding only these files is an earlier result of the
# same kind, replaced without asking; anything else in it is the user's and is never deleted silently.
RESULT_FILES: dict[str, frozenset[str]] = {
    "attack": frozenset({"result.json", "defense.json", "metrics.csv", "original.png", "reconstruction.png", "images.npy",
                         "progress.png"}),
    "update": frozenset({"update_clean.pt", "update_defended.pt", "global_weights.pt", "defense.json"}),
    "fl": frozenset({"fl.json", "fl.csv"}),
    "utility": frozenset({"utility.json"}),
}


class OutputError(ValueError):
    """A target directory that cannot or must not be written; the message is one line."""


class StagedOutput:
    def __init__(self, out: str | os.PathLike, kind: str | None = None, *, overwrite: bool = False,
                 flag: str = "--out") -> None:
        """``kind``: a key of ``RESULT_FILES`` (None: any existing directory is replaced, as a library
        call that was asked to write there)."""
        self.out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
        self.shown = os.fspath(out)
        self.flag = flag
        self._check(kind, overwrite)
        self._created: list[Path] = []
        self.tmp: Path | None = None
        try:
            self._created = _make_parents(self.out.parent)
            self.tmp = _fresh_dir(self.out.parent, f".{self.out.name}.tmp-")
        except OSError as exc:
            self.discard()
            raise OutputError(f"{flag} {self.shown} cannot be written: {exc.strerror or exc}") from None

    def _check(self, kind: str | None, overwrite: bool) -> None:
        where = f"{self.flag} {self.shown}"
        _refuse_current_dir(self.out, where, f"{self.flag} runs/{kind or 'out'}")
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{where} exists and is not a directory")
        if kind is None or overwrite or not self.out.is_dir():
            return
        try:
            foreign = sorted(p.name for p in self.out.iterdir() if not (p.is_file() and p.name in RESULT_FILES[kind]))
        except OSError as exc:
            raise OutputError(f"{where} cannot be read: {exc.strerror or exc}") from None
        if foreign:
            raise OutputError(f"{where} holds files that are not an earlier `{kind}` result ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); choose another directory, or pass --overwrite "
                              "to replace it whole")

    def commit(self, files: Mapping[str, bytes]) -> Path:
        """Write ``files`` and put them in place of the target in one rename; the old target is removed."""
        if self.tmp is None:
            raise RuntimeError("this output was already committed or discarded")
        old = self.out.with_name(f".{self.out.name}.old-{secrets.token_hex(4)}")
        try:
            for name, payload in files.items():
                (self.tmp / name).write_bytes(payload)
            if self.out.exists():
                self.out.rename(old)
            self.tmp.rename(self.out)
        except BaseException:
            if old.exists() and not self.out.exists():  # the swap failed half-way: put the old results back
                old.rename(self.out)
            self.discard()
            raise
        self.tmp = None
        if old.is_symlink():  # --out was a link to a directory: the link is replaced, what it pointed to kept
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the temporary directory and the parents this output created (when still empty)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        for parent in reversed(self._created):
            try:
                parent.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def _refuse_current_dir(path: Path, where: str, example: str) -> None:
    """Replacing (or filling) the directory the user stands in, or one above it, is never what was meant."""
    cwd = Path(os.path.abspath(os.getcwd()))
    if path == cwd or path in cwd.parents:
        raise OutputError(f"{where} is the current directory or holds it; name a directory for the results, "
                          f"e.g. {example}")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; return those created, outermost first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError:
            for made in reversed(created):
                try:
                    made.rmdir()
                except OSError:
                    break
            raise
        created.append(path)
    return created


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new directory with an unused name (``tempfile.mkdtemp`` would make it 0700)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name under {parent}")


def job_directory(out: str | os.PathLike, flag: str = "--out") -> Path:
    """A resumable job's directory (sweep, reproduce), written in place cell by cell: created now and
    probed, before any compute, so a bad path fails at once. What it may already hold is the job's own
    business (``resumable.claim_directory`` refuses anything that is not this job's)."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    shown = os.fspath(out)
    _refuse_current_dir(path, f"{flag} {shown}", f"{flag} runs/job")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {shown} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = _fresh_dir(path, ".write-test-")
        probe.rmdir()
    except OSError as exc:
        raise OutputError(f"{flag} {shown} cannot be written: {exc.strerror or exc}") from None
    return path
