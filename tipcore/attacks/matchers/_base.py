"""What matcher modules share: the base class, and the knobs several matchers declare (each matcher's
config inherits the groups it uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tipcore.knobs import check, knob

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


class Matcher:
    """A matcher is built from its config and fitted on a received update (``tipcore.attacks.fitted``)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def fit(self, received: Received) -> Fitted:  # pragma: no cover - every registered matcher overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class MatcherKnobs:
    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class CutoffKnobs(MatcherKnobs):
    assumed_cutoff: float = knob(0.5, "Assumed cutoff r", "the r the attacker assumes TIP used (the paper's "
                                 "default is public)", low=0.0, low_open=True, high=1.0)


@dataclass(frozen=True)
class GapKnobs(MatcherKnobs):
    min_separation: float = knob(1.0, "Gap", "an empty gap of this many decades must separate the noised group",
                                 low=0.0, high=10.0, unit="decades")


@dataclass(frozen=True)
class ContrastKnobs(MatcherKnobs):
    assumed_ratio: float | None = knob(None, "Assumed ratio p", "the p the attacker assumes; none: estimate the "
                                       "noised count per layer", low=0.0, low_open=True, high=1.0)
    min_contrast: float = knob(3.0, "Contrast", "... and of this many robust spreads of the clean group",
                               low=0.0, high=100.0)

