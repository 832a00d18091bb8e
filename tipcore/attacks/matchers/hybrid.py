"""``hybrid``: find the noised conv channels as ``energy`` does (energy + roughness), but keep what of them is
still clean: their kernels' low DFT bins (below the assumed cutoff; for a 3x3 kernel at r = 0.5 just its
mean), which TIP's band-limited noise never touches, instead of dropping the whole channel.

A flagged channel whose energy below the cutoff is an outlier too, against the unflagged channels of its
layer (robust z above ``min_z``), carries noise in its low bins as well (full-band noise) and is dropped
whole. Every other tensor is matched as received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import ContrastKnobs, CutoffKnobs, EnergyKnobs, GapKnobs, Matcher, channel_maps
from tipcore.attacks.registry import register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class HybridConfig(EnergyKnobs, ContrastKnobs, GapKnobs, CutoffKnobs):
    pass


@register_matcher("hybrid", HybridConfig, label="keeps the noised channels' low bins", flags_channels=True,
                  summary="adaptive: finds the noised conv channels (energy + roughness) and matches only their "
                          "clean low-frequency bins")
class Hybrid(Matcher):
    def fit(self, received: Received) -> Fitted:
        from tipcore.attacks.fitted import Fitted

        fitted = Fitted()
        channel_maps(self.config, received, fitted, keep_low=True)
        return fitted
