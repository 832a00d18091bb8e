"""``lowpass``: match only what TIP never touches: the below-cutoff DFT bins of every spatial kernel (for
3x3 at r = 0.5, each kernel's mean) and every tensor that is not a spatial conv kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import CutoffKnobs, Matcher
from tipcore.attacks.registry import register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class LowpassConfig(CutoffKnobs):
    pass


@register_matcher("lowpass", LowpassConfig, label="matches low frequencies only", short="low-pass",
                  summary="adaptive: matches only the below-cutoff DFT bins of every kernel and the untouched tensors")
class Lowpass(Matcher):
    def fit(self, received: Received) -> Fitted:
        from tipcore.attacks.channels import conv_updates
        from tipcore.attacks.fitted import Fitted, TensorMap

        return Fitted(maps={weight: TensorMap(cutoff=self.config.assumed_cutoff)
                            for _layer, weight, _target in conv_updates(received)})
