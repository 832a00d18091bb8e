"""``drop``: find the conv channels that carry injected noise by their roughness, and leave them out.

The statistic is each channel's spectral roughness R_c = E_hf / E_lf, the energy above the cutoff over the
energy below it. It is scale-free, so it does not care how strongly a channel fires; clean gradients of
images are smooth (R small and alike across channels), and TIP's noise has no low-frequency part at all,
so it only raises E_hf. Per layer, the log-roughness values are split in two by Otsu's threshold, and the
upper group is flagged only when an empty gap separates it from the rest (``min_separation`` decades and
``min_contrast`` robust spreads of the clean group). Knowing p (``assumed_ratio``) flags the top
floor(p · C_out) instead. The map zeroes the flagged output channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import ContrastKnobs, CutoffKnobs, GapKnobs, Matcher
from tipcore.attacks.registry import register_matcher

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class DropConfig(ContrastKnobs, GapKnobs, CutoffKnobs):
    pass


@register_matcher("drop", DropConfig, label="drops the noised channels", flags_channels=True,
                  summary="adaptive: finds the noised conv channels from the update alone and leaves them out")
class Drop(Matcher):
    def fit(self, received: Received) -> Fitted:
        import torch

        from tipcore.attacks.channels import conv_updates, layer_scores, rough_channels
        from tipcore.attacks.fitted import Fitted, TensorMap, channel_scale

        c = self.config
        fitted = Fitted()
        for layer, weight, target in conv_updates(received):
            scores = layer_scores(layer, target, c.assumed_cutoff)
            flagged = rough_channels(scores, c.assumed_ratio, c.min_separation, c.min_contrast)
            if flagged:
                keep = torch.ones(scores.roughness.numel())
                keep[list(flagged)] = 0.0
                fitted.maps[weight] = TensorMap(scale=channel_scale(keep, target))
            fitted.flagged[layer] = flagged
        return fitted
