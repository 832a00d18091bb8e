"""``prune_aware``: match only the entries the client sent non-zero. Magnitude pruning sends exact zeros in
place of its smallest entries; matching them would pull the dummy gradient towards values it never had, so
every tensor with exact zeros is compared only where it is non-zero (a gradient has almost none of its own:
dead ReLU units' entries, which are then simply not matched)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import Matcher, MatcherKnobs
from tipcore.attacks.registry import register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class PruneAwareConfig(MatcherKnobs):
    pass


@register_matcher("prune_aware", PruneAwareConfig, label="matches only the non-zero entries", short="prune-aware",
                  summary="adaptive: matches only the entries of the update that were sent non-zero")
class PruneAware(Matcher):
    def fit(self, received: Received) -> Fitted:
        from tipcore.attacks.fitted import Fitted, TensorMap

        fitted = Fitted()
        zeros = 0
        total = 0
        for name, t in received.targets.items():
            sent = (t != 0).to(t.dtype)
            total += t.numel()
            if int(sent.sum()) < t.numel():
                zeros += t.numel() - int(sent.sum())
                fitted.maps[name] = TensorMap(scale=sent)
        if zeros:
            fitted.notes.append(f"matched {total - zeros} of {total} entries (the rest were sent as exact zeros)")
        return fitted
