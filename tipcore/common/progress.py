"""One progress and stop mechanism for every long loop.

A long loop is a generator: it yields ``Event``s (stage, done of total units, a message, optionally a
payload such as an attack's ``Snapshot``), reads a ``StopToken`` between units of work, and returns its
result. ``drive`` consumes such a stream; the CLI's ``TerminalProgress`` bar and the app's progress
widget both read the same events. A loop that is told to stop returns what it reached; one stopped before
it has anything to return (the client round, before the attack starts) raises ``Stopped``.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, TextIO, TypeVar, Union

Result = TypeVar("Result")


@dataclass(frozen=True)
class Event:
    """``done`` of ``total`` ``unit``s of ``stage`` are finished (``total`` None: unknown).

    ``minor`` marks a fine-grained tick (one training step, one client's update) that a redrawn bar shows
    but a log need not keep; ``payload`` carries what the stage produced so far (an attack ``Snapshot``,
    a training epoch's accuracy, a finished FL round)."""

    stage: str
    done: int
    total: int | None
    unit: str = ""
    message: str = ""
    elapsed_s: float = 0.0  # since the stage's stream started
    eta_s: float = math.nan  # seconds left in this stage, nan when unknown
    payload: Any = None
    minor: bool = False
    stopped: bool = False

    def __post_init__(self) -> None:
        if self.done < 0 or (self.total is not None and self.total < 0):
            raise ValueError(f"progress must be non-negative, got {self.done}/{self.total}")

    @property
    def fraction(self) -> float | None:
        """done / total in [0, 1], None when the total is unknown."""
        if not self.total:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    def line(self, bar: str = "") -> str:
        """One plain line: ``stage 40/300 step  loss 0.12  12.3s  eta 20.1s`` (``bar`` goes after the stage)."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{self.stage} {bar + ' ' if bar else ''}{count}" + (f" {self.unit}" if self.unit else "")]
        if self.message:
            parts.append(self.message)
        parts.append(_duration(self.elapsed_s))
        if self.remaining_known:
            parts.append(f"eta {_duration(self.eta_s)}")
        if self.stopped:
            parts.append("stopped")
        return "  ".join(parts)

    @property
    def remaining_known(self) -> bool:
        """Whether an ETA is worth showing: known, and the stage not finished."""
        return math.isfinite(self.eta_s) and (self.total is None or self.done < self.total)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Stopwatch:
    """Events with elapsed time since this stopwatch started and an ETA from the throughput so far."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def event(self, stage: str, done: int, total: int | None, unit: str = "", message: str = "", *,
              payload: Any = None, minor: bool = False, stopped: bool = False) -> Event:
        elapsed = self.elapsed()
        eta = elapsed / done * max(total - done, 0) if total is not None and done > 0 else math.nan
        return Event(stage, done, total, unit, message, elapsed, eta, payload, minor, stopped)


# ------------------------------------------------------------------------------------------ stopping

class StopToken:
    """Asked between units of work: ``token()`` is True once ``stop()`` was called or ``check`` says so.

    Every long loop takes one as ``should_stop``; a plain zero-argument callable returning a bool is
    accepted where a token is (a token is one), so ``should_stop=lambda: ...`` works in tests.
    """

    def __init__(self, check: Callable[[], bool] | None = None) -> None:
        self._event = threading.Event()
        self._check = check

    def stop(self) -> None:
        self._event.set()

    @property
    def stopped(self) -> bool:
        if not self._event.is_set() and self._check is not None and self._check():
            self._event.set()
        return self._event.is_set()

    def __call__(self) -> bool:
        return self.stopped


class _NeverStop(StopToken):
    """The default token: shared by every caller, so it must not be stoppable."""

    def stop(self) -> None:
        raise TypeError("never_stop is shared by every loop; create a StopToken() to stop one")

    @property
    def stopped(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "never_stop"


never_stop = _NeverStop()
StopHook = Union[StopToken, Callable[[], bool]]


class Stopped(Exception):
    """A stream was stopped before it had a result to return (e.g. during the client round)."""


def check_stop(should_stop: StopHook, where: str) -> None:
    if should_stop():
        raise Stopped(f"stopped {where}")


# ------------------------------------------------------------------------------------------ driving

def drive(stream: Generator[Any, None, Result], on_event: Callable[[Any], None] | None = None) -> Result:
    """Consume a stream, handing each event to ``on_event``; return the stream's result."""
    while True:
        try:
            event = next(stream)
        except StopIteration as done:
            return done.value
        if on_event is not None:
            on_event(event)


def within(stream: Generator[Event, None, Result], outer: str) -> Generator[Event, None, Result]:
    """Relay a nested stream's events with their stage prefixed (``punchline 2/4 · attack``)."""
    while True:
        try:
            event = next(stream)
        except StopIteration as done:
            return done.value
        yield replace(event, stage=f"{outer} · {event.stage}")


# ------------------------------------------------------------------------------------------ terminal

class TerminalProgress:
    """Shows events on a text stream: one redrawn line (``\\r``) on a terminal, plain lines otherwise.

    Plain lines skip ``minor`` events, so logs keep one line per attack snapshot, epoch, FL round or
    sweep cell. Use as a context manager: leaving it ends the bar's line, so later output (the result,
    an error) starts on a fresh one.
    """

    BAR_WIDTH = 24

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, quiet: bool = False,
                 min_redraw_s: float = 0.1, width: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.min_redraw_s = min_redraw_s
        self.width = width
        self._drawn = False
        self._last_draw = -math.inf
        self._last_stage: str | None = None

    def __enter__(self) -> "TerminalProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __call__(self, event: Event) -> None:
        if self.quiet or not isinstance(event, Event):
            return
        if not self.tty:
            if not event.minor:
                print(event.line(), file=self.stream, flush=True)
            return
        now = time.perf_counter()
        final = event.total is not None and event.done >= event.total
        if event.stage == self._last_stage and not final and now - self._last_draw < self.min_redraw_s:
            return
        self._last_stage, self._last_draw = event.stage, now
        self.stream.write("\r" + self.render(event) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def render(self, event: Event) -> str:
        """``stage [#########...............] 40/300 step  loss 0.12  12.3s  eta 20.1s``, cut to the width."""
        width = self.width or shutil.get_terminal_size((100, 20)).columns
        frac = event.fraction
        if frac is None:
            bar = "[" + "?" * self.BAR_WIDTH + "]"
        else:
            filled = int(round(frac * self.BAR_WIDTH))
            bar = "[" + "#" * filled + "." * (self.BAR_WIDTH - filled) + "]"
        text = event.line(bar)
        return text if len(text) < width else text[: max(width - 2, 1)] + "…"
