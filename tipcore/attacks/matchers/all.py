"""``all``: the naive attacker's matcher, every tensor as received (the identity)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import Matcher, MatcherKnobs
from tipcore.attacks.registry import NAIVE, register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class AllConfig(MatcherKnobs):
    pass


@register_matcher(NAIVE, AllConfig, label="no: naive attacker", short="naive",
                  summary="naive: matches every tensor of the update")
class MatchAll(Matcher):
    def fit(self, received: Received) -> Fitted:
        from tipcore.attacks.fitted import Fitted

        return Fitted()
