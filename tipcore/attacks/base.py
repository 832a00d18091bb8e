"""What every attack shares, without torch: the progress stream, the snapshot, the result, the protocol.

An attack is a generator: every ``report_every`` steps it yields a ``tipcore.common.progress.Event`` whose payload
is a ``Snapshot``, checks ``should_stop()`` before each step, and returns an ``AttackResult``. The CLI and
the app consume the same stream through ``tipcore.common.progress.drive``.
Attacks receive a ``ServerView`` and a ``SharedUpdate`` and nothing else: no private image, no client context.
The registry (names, labels, knobs) is ``tipcore.attacks.registry``; the attacker's model and target, the
optimisation loop and the matchers' arithmetic (all torch) are ``problem``, ``engine`` and ``fitted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generator, Mapping, Protocol

import numpy as np

from tipcore.attacks.registry import (  # noqa: F401  (re-exported: the registry's API)
    ATTACK_PRESETS, ATTACKS, MATCHERS, AttackSpec, MatcherSpec, adaptive_variants, base_attack, create, is_adaptive,
    preset_options, register_attack, register_matcher, unregister_matcher,
)
from tipcore.common.progress import Event, StopHook, drive, never_stop  # noqa: F401  (drive, never_stop re-exported)

if TYPE_CHECKING:
    import torch

    from tipcore.federation.fl import ServerView, SharedUpdate


@dataclass(frozen=True)
class Snapshot:
    step: int
    loss: float
    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]
    elapsed_s: float
    eta_s: float
    restart: int = 0


@dataclass(frozen=True)
class BatchSnapshot:
    """A batched comparison's progress: every problem's loss and current first image."""

    step: int  # the furthest step any problem has reached
    losses: tuple[float, ...]
    images: np.ndarray  # (N, H, W, 3): each problem's current first image
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class AttackResult:
    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]
    labels: tuple[int, ...]
    iterations: int  # optimisation steps of the run that produced ``images`` (L-BFGS: outer steps)
    restarts: int  # how many times a diverging run was restarted with fresh random numbers
    seconds: float
    stopped: bool
    final_loss: float
    diverged: bool = False  # still diverging after the last allowed restart
    evaluations: int = 0  # gradient-matching loss evaluations (L-BFGS closure calls), all runs together
    history: tuple[Snapshot, ...] = ()
    match: str = "all"  # the registered matcher the attacker ran with (tipcore.attacks.registry.MATCHERS)
    flagged: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # conv layer -> channels it flagged
    notes: tuple[str, ...] = ()  # what the matcher found or could not do (e.g. "fc input not recovered: B = 4")


AttackStream = Generator[Event, None, AttackResult]


def snapshot_event(snap: Snapshot, total: int) -> Event:
    """The progress event of an attack snapshot: ``snap.step`` of ``total`` steps, the snapshot as payload."""
    message = f"loss {snap.loss:.4g}" + (f"  restart {snap.restart}" if snap.restart else "")
    return Event("attack", snap.step, total, "step", message, snap.elapsed_s, snap.eta_s, payload=snap)


class Attack(Protocol):
    name: ClassVar[str]

    def reconstruct(self, view: ServerView, update: SharedUpdate, *, generator: torch.Generator,
                    should_stop: StopHook = never_stop, report_every: int = 10) -> AttackStream: ...

    def describe(self) -> str: ...


def flagged_channels(result: AttackResult) -> dict[str, list[int]]:
    """An attack result's flagged channels as plain data (result.json)."""
    return {k: list(v) for k, v in result.flagged.items()}


def flags_channels(result: AttackResult) -> bool:
    """Whether the matcher the result ran with flags channels (so its detection is recorded)."""
    spec = MATCHERS.get(result.match)
    return spec is not None and spec.flags_channels

