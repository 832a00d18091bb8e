"""A CSV table of finished cells that a long job appends to as it goes, so a rerun skips what is done.

Each row is written whole and flushed to disk before the next cell starts; a row cut short by a kill is
dropped (and the file rewritten without it) when the table is opened again. A table that belongs to a
different job (other columns) is refused rather than mixed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


class ResumableTable:
    def __init__(self, path: str | os.PathLike, columns: Sequence[str], key: Sequence[str]) -> None:
        self.path, self.columns, self.key = Path(path), list(columns), list(key)
        self.rows: list[dict[str, str]] = []
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        self.done = {self.key_of(r) for r in self.rows}
        self._seen = self._stamp()

    def _stamp(self) -> int:
        return self.path.stat().st_size  # rows are only ever appended: a size this table did not write is news

    def refresh(self) -> None:
        """Pick up rows another process appended since this table was read (two jobs sharing one table skip
        each other's finished cells; a cell both start at once is still computed twice, the first row kept)."""
        if self._stamp() == self._seen:
            return
        self.rows, self.done = [], set()
        with self.path.open(newline="") as f:
            for row in csv.DictReader(f):
                if None in row.values() or None in row or len(row) != len(self.columns):
                    continue  # being written, or cut short by a kill
                if self.key_of(row) not in self.done:
                    self.rows.append(row)
                    self.done.add(self.key_of(row))
        self._seen = self._stamp()

    def _load(self) -> None:
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != self.columns:
                raise ValueError(f"{self.path} holds other columns ({', '.join(reader.fieldnames or [])}); "
                                 "it is not a table of this job: choose another --out")
            for row in reader:
                if None in row.values() or None in row or len(row) != len(self.columns):
                    continue  # cut short by a kill
                self.rows.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def key_of(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(format_cell(row[k]) for k in self.key)

    def has(self, row_key: Mapping[str, Any]) -> bool:
        return self.key_of(row_key) in self.done

    def append(self, row: Mapping[str, Any]) -> None:
        clean = {c: format_cell(row.get(c)) for c in self.columns}
        alone = self._stamp() == self._seen  # nobody else appended since this table last read the file
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(clean)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(clean)
        self.done.add(self.key_of(clean))
        if alone:
            self._seen = self._stamp()

    def select(self, **match: Any) -> Iterable[dict[str, str]]:
        want = {k: format_cell(v) for k, v in match.items()}
        return [r for r in self.rows if all(r[k] == v for k, v in want.items())]


def claim_directory(out: Path, settings: Mapping[str, Any]) -> None:
    """Record the job's settings in ``out/job.json``; refuse to resume a directory made with other settings,
    whose finished cells would otherwise be reported under this job's command."""
    import json

    manifest = out / "job.json"
    wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if manifest.exists():
        held = json.loads(manifest.read_text())
        if held != wanted:
            changed = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
            raise ValueError(f"{out} holds a job with other settings ({', '.join(changed)}); "
                             "rerun with the same settings to resume, or choose another --out")
        return
    others = sorted(p.name for p in out.iterdir())
    if others:  # never mix a job's tables into a directory of the user's, nor resume one without a record
        raise ValueError(f"{out} holds files but no job.json ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}): not a directory of this job; choose another --out")
    manifest.write_text(json.dumps(wanted, indent=1, sort_keys=True) + "\n")


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def number(text: str) -> float | None:
    return float(text) if text not in ("", "None") else None
