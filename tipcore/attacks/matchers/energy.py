"""``energy``: find the conv channels that carry injected noise by their energy (with roughness as a second
cue), and leave them out.

``drop`` looks only at roughness, which TIP's high-band noise raises by orders of magnitude; noise that
covers the whole spectrum (``tip_fullband``) or any other channel-local noise raises a channel's roughness
far less, but its energy just as much. Per layer, each channel's log-energy gets a robust z-score (median
and MAD of the layer): a channel is flagged when its z exceeds ``min_z`` and it is also rougher than the
layer's median (noise is never smoother than an image's gradient); drop's roughness test flags the rest.
The map zeroes the flagged output channels, as ``drop`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import ContrastKnobs, CutoffKnobs, EnergyKnobs, GapKnobs, Matcher, channel_maps
from tipcore.attacks.registry import register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class EnergyConfig(EnergyKnobs, ContrastKnobs, GapKnobs, CutoffKnobs):
    pass


@register_matcher("energy", EnergyConfig, label="drops channels of outlying energy", flags_channels=True,
                  summary="adaptive: flags conv channels whose energy is an outlier in their layer (or that are "
                          "rough) and leaves them out")
class Energy(Matcher):
    def fit(self, received: Received) -> Fitted:
        from tipcore.attacks.fitted import Fitted

        fitted = Fitted()
        channel_maps(self.config, received, fitted, keep_low=False)
        return fitted
