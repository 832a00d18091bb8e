"""What matcher modules share: the base class, and the knobs several matchers declare (each matcher's
config inherits the groups it uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tipcore.common.knobs import check, knob

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



@dataclass(frozen=True)
class EnergyKnobs(MatcherKnobs):
    min_z: float = knob(3.5, "Energy z", "flag a channel whose energy and roughness together lie this many robust spreads "
                        "(MAD, z-scores combined) above its layer's median", low=0.0, high=100.0)


@dataclass(frozen=True)
class ZeroKnobs(MatcherKnobs):
    zero_fraction: float = knob(0.05, "Zero fraction", "a tensor with at least this fraction of exact zeros was "
                                "pruned by a defense (a gradient has almost none of its own)", low=0.0, low_open=True,
                                high=1.0)


def detect(config: Any, received: Received) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Every spatial conv layer's scores and the channels the energy + roughness detector flags there
    (``tipcore.attacks.channels.noised_channels``), for a config with the Contrast, Gap, Cutoff and Energy
    knobs: conv layer -> (LayerScores, flagged channels)."""
    from tipcore.attacks.channels import conv_updates, layer_scores, noised_channels

    out = {}
    for layer, _weight, target in conv_updates(received):
        scores = layer_scores(layer, target, config.assumed_cutoff)
        out[layer] = (scores, noised_channels(scores, config.assumed_ratio, config.min_separation,
                                              config.min_contrast, config.min_z))
    return out


def channel_maps(config: Any, received: Received, fitted: Fitted, keep_low: bool) -> None:
    """Fill ``fitted`` with the energy + roughness detector's flags (``detect``) and their maps: the flagged
    output channels zeroed, or with ``keep_low`` only their bins at and above the assumed cutoff removed,
    except for the flagged channels whose low bins are outliers too (``channels.lf_outliers``: full-band
    noise), which are zeroed whole."""
    import torch

    from tipcore.attacks.channels import lf_outliers
    from tipcore.attacks.fitted import TensorMap, channel_scale

    dropped_whole = 0
    for layer, (scores, flagged) in detect(config, received).items():
        fitted.flagged[layer] = flagged
        if not flagged:
            continue
        target = received.targets[f"{layer}.weight"]
        zeroed = lf_outliers(scores, flagged, config.min_z) if keep_low else flagged
        keep = torch.ones(scores.roughness.numel())
        keep[list(zeroed)] = 0.0
        scale = channel_scale(keep, target) if zeroed else None
        if keep_low:
            dropped_whole += len(zeroed)
            remove = torch.zeros(scores.roughness.numel())
            remove[list(flagged)] = 1.0
            fitted.maps[f"{layer}.weight"] = TensorMap(scale=scale, cutoff=config.assumed_cutoff,
                                                       remove_high=channel_scale(remove, target))
        else:
            fitted.maps[f"{layer}.weight"] = TensorMap(scale=scale)
    if dropped_whole:
        fitted.notes.append(f"{dropped_whole} flagged channel(s) dropped whole: their low bins are noised too")
