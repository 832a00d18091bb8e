"""``soteria_aware``: leave out the tensors a defense pruned, found from their exact zeros (Balunović et al.,
ICLR 2022: an attacker who knows Soteria defends only the fc layer matches everything else).

A gradient has almost no exact zeros of its own (a sigmoid network none; a ReLU network only the entries of
dead units), while Soteria zeroes whole columns of the fc layer's weight update: every tensor with at least
``zero_fraction`` of its entries exactly zero is left out, the rest is matched as received. If every tensor
qualifies (e.g. magnitude pruning, which zeroes a share of every tensor), nothing is left out: see
``prune_aware`` for that case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import Matcher, ZeroKnobs
from tipcore.attacks.registry import register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class SoteriaAwareConfig(ZeroKnobs):
    pass


@register_matcher("soteria_aware", SoteriaAwareConfig, label="leaves out the pruned layer", short="Soteria-aware",
                  summary="adaptive: leaves out every tensor the defense pruned (found from its exact zeros) and "
                          "matches the rest")
class SoteriaAware(Matcher):
    def fit(self, received: Received) -> Fitted:
        import torch

        from tipcore.attacks.fitted import Fitted, TensorMap, zero_fraction

        fitted = Fitted()
        pruned = [n for n, t in received.targets.items() if zero_fraction(t) >= self.config.zero_fraction]
        if pruned and len(pruned) == len(received.targets):
            fitted.notes.append("every tensor has exact zeros: nothing left out")
            return fitted
        for name in pruned:
            t = received.targets[name]
            fitted.maps[name] = TensorMap(scale=torch.zeros((t.shape[0], *([1] * (t.ndim - 1))), dtype=t.dtype))
        if pruned:
            fitted.notes.append(f"left out {', '.join(pruned)} (exact zeros: "
                                f"{', '.join(f'{zero_fraction(received.targets[n]):.0%}' for n in pruned)})")
        return fitted
