"""One progress mechanism for long loops: a generator yields events, a stop hook ends it early, ``drive``
consumes it. The CLI prints the events; the app draws them; both through ``drive``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, TypeVar

StopHook = Callable[[], bool]
Event = TypeVar("Event")
Result = TypeVar("Result")


def never_stop() -> bool:
    return False


@dataclass(frozen=True)
class Progress:
    """A job of ``total`` cells: ``done`` finished, working on ``label``."""

    done: int
    total: int
    label: str
    elapsed_s: float
    stopped: bool = False

    @property
    def eta_s(self) -> float:
        """From the throughput measured so far in this job (nan before the first cell finishes)."""
        if self.done <= 0:
            return float("nan")
        return self.elapsed_s / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        eta = "" if self.eta_s != self.eta_s else f"  eta {self.eta_s / 60:.1f} min"
        return f"[{self.done}/{self.total}] {self.label}  {self.elapsed_s / 60:.1f} min{eta}"


def drive(stream: Generator[Event, None, Result], on_event: Callable[[Event], None] | None = None) -> Result:
    """Consume a stream, handing each event to ``on_event``; return the stream's result."""
    while True:
        try:
            event = next(stream)
        except StopIteration as done:
            return done.value
        if on_event is not None:
            on_event(event)
