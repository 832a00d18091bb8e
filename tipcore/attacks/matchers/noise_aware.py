"""``noise_aware``: weight each conv output channel by F / (F + N), a Gaussian likelihood whose floor F is
the residual a converged attack leaves on a clean channel, with the noise energy N estimated as the
high-frequency excess over the layer's typical roughness. Under TIP it acts like a soft ``drop``; under DP,
where every bin of every channel is equally noisy, the weights stay near 1 and it gains little over the
naive attacker (by design, and measured in docs/REPRODUCTION.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import CutoffKnobs, GapKnobs, Matcher
from tipcore.attacks.registry import register_matcher
from tipcore.common.knobs import knob

if TYPE_CHECKING:
    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class NoiseAwareConfig(GapKnobs, CutoffKnobs):
    residual_floor: float = knob(0.01, "Residual floor", "attainable residual on a clean channel, relative to its "
                                 "energy", low=0.0, low_open=True, high=1.0)


@register_matcher("noise_aware", NoiseAwareConfig, label="noise-aware weighting", short="noise-aware",
                  summary="adaptive: weights every conv channel by its estimated signal-to-noise (Wiener)")
class NoiseAware(Matcher):
    def fit(self, received: Received) -> Fitted:
        import torch

        from tipcore.attacks.channels import TINY, conv_updates, layer_scores
        from tipcore.attacks.fitted import Fitted, TensorMap, channel_scale

        c = self.config
        fitted = Fitted()
        for layer, weight, target in conv_updates(received):
            scores = layer_scores(layer, target, c.assumed_cutoff)
            live = scores.live
            log_r = torch.log10(scores.roughness.clamp_min(TINY))
            # Roughness up to min_separation decades above the layer's lower quartile counts as the clean
            # gradient's own: DP's equally noisy channels scatter far less than that and keep weight 1.
            natural = 10 ** (float(torch.quantile(log_r[live], 0.25)) + c.min_separation) if int(live.sum()) else 0.0
            noise = (scores.hf_energy - natural * scores.lf_energy).clamp_min(0.0)
            # The floor is the residual a converged attack still leaves on a clean channel (a fraction of its
            # own energy): a Gaussian likelihood with that floor weighs a channel by floor / (floor + noise).
            floor = c.residual_floor * (scores.hf_energy + scores.lf_energy - noise)
            gain = torch.where(live, floor / (floor + noise).clamp_min(TINY), torch.ones_like(floor))
            # The squared distance weighs a channel by gain; the map scales by its square root.
            fitted.maps[weight] = TensorMap(scale=channel_scale(gain.sqrt().float(), target))
            fitted.weights[layer] = tuple(round(float(g), 6) for g in gain.tolist())
        return fitted
