"""Per-channel statistics of a received conv weight update, as an attacker computes them from the update
alone: the energy below and above TIP's cutoff, the roughness E_hf / E_lf, and the tests that single out
channels carrying injected noise. The matchers (``tipcore.attacks.matchers``) are built from these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from tipcore.attacks.fitted import Received, highpass

TINY = 1e-30


@dataclass(frozen=True)
class LayerScores:
    """The attacker's per-channel view of one conv layer's received weight update."""

    name: str  # the conv module's name (its weight is f"{name}.weight")
    roughness: torch.Tensor  # [C_out] E_hf / E_lf of each output channel's kernels
    hf_energy: torch.Tensor  # [C_out]
    lf_energy: torch.Tensor  # [C_out]

    @property
    def live(self) -> torch.Tensor:
        """Channels with any energy: dead ones (ReLU never fired) send exact zeros, nothing to judge."""
        return (self.hf_energy + self.lf_energy) > TINY


def spatial_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Conv layers whose kernels have a spectrum worth splitting (bigger than 1x1)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] * m.kernel_size[1] > 1]


def conv_updates(received: Received) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(conv layer, its weight's name, its received update) for every spatial conv layer in the update."""
    for layer, _module in spatial_convs(received.model):
        weight = f"{layer}.weight"
        if weight in received.targets:
            yield layer, weight, received.targets[weight]


def layer_scores(name: str, weight_update: torch.Tensor, cutoff: float) -> LayerScores:
    w = weight_update.detach().double()
    hf = highpass(w, cutoff)
    hf_energy = (hf * hf).flatten(1).sum(1)
    lf_energy = ((w - hf) ** 2).flatten(1).sum(1)
    roughness = hf_energy / lf_energy.clamp_min(TINY)
    return LayerScores(name, roughness, hf_energy, lf_energy)


def otsu_split(values: torch.Tensor) -> tuple[float, float, float]:
    """Best two-group split of 1D values (maximal between-group variance).

    Returns (threshold, margin, spread): values above the threshold form the upper group; ``margin`` is
    the empty stretch between the groups (lowest upper value minus highest lower value); ``spread`` is the
    lower group's robust standard deviation (1.4826 · median absolute deviation).
    """
    v, _ = torch.sort(values.double())
    n = v.numel()
    best_i, best_between = n, -1.0
    for i in range(1, n):  # lower group v[:i], upper group v[i:]
        between = i * (n - i) * float(v[i:].mean() - v[:i].mean()) ** 2
        if between > best_between:
            best_i, best_between = i, between
    if best_i >= n:
        return float(v[-1]) + 1.0, 0.0, 0.0
    lower = v[:best_i]
    spread = 1.4826 * float((lower - lower.median()).abs().median())
    return 0.5 * float(v[best_i - 1] + v[best_i]), float(v[best_i] - v[best_i - 1]), spread


def top_fraction(values: torch.Tensor, live: torch.Tensor, ratio: float) -> tuple[int, ...]:
    """The floor(ratio · C) live channels with the largest values (an attacker who assumes TIP's p)."""
    k = max(1, int(math.floor(ratio * values.numel() + 1e-9)))
    ranked = torch.where(live, values, torch.full_like(values, -math.inf))
    return tuple(sorted(int(i) for i in torch.topk(ranked, min(k, int(live.sum()))).indices.tolist()))


def separated_upper_group(values: torch.Tensor, live: torch.Tensor, min_separation: float,
                          min_contrast: float) -> tuple[int, ...]:
    """The live channels of Otsu's upper group of ``values``, if an empty gap of at least ``min_separation``
    and of ``min_contrast`` robust spreads of the lower group separates it from the rest; else none."""
    threshold, margin, spread = otsu_split(values[live])
    if margin < min_separation or margin < min_contrast * spread:
        return ()
    return tuple(int(i) for i in torch.nonzero(live & (values > threshold)).flatten().tolist())


def rough_channels(scores: LayerScores, assumed_ratio: float | None, min_separation: float,
                   min_contrast: float) -> tuple[int, ...]:
    """The output channels of one layer that carry injected high-frequency noise, by roughness alone.

    The noised group is accepted only if an empty stretch of at least ``min_separation`` decades, and of
    ``min_contrast`` robust spreads of the clean group, separates it from the rest: a unimodal layer of clean
    channels has no such gap, so nothing is flagged there. (The noised group itself may spread widely: a
    channel whose clean gradient is nearly zero gets an enormous roughness once noise is added.)
    """
    live = scores.live
    if int(live.sum()) < 2:
        return ()
    log_r = torch.log10(scores.roughness.clamp_min(TINY))
    if assumed_ratio is not None:
        return top_fraction(log_r, live, assumed_ratio)
    return separated_upper_group(log_r, live, min_separation, min_contrast)



def robust_z(values: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """(v − median) / (1.4826 · MAD) over the live channels (0 where the spread is nil or the channel dead)."""
    v = values[live].double()
    if v.numel() < 2:
        return torch.zeros_like(values, dtype=torch.float64)
    median = v.median()
    spread = 1.4826 * float((v - median).abs().median())
    if spread <= 0.0:
        return torch.zeros_like(values, dtype=torch.float64)
    z = (values.double() - median) / spread
    return torch.where(live, z, torch.zeros_like(z))


def energetic_channels(scores: LayerScores, min_z: float) -> tuple[int, ...]:
    """The output channels whose gradient energy is an outlier in their layer, with roughness as the second
    cue: robust z-scores (median / MAD of the layer) of the log-energy z_E and of the log-roughness z_R,
    combined as (z_E + z_R) / √2 (two independent unit-spread cues), above ``min_z``; a flagged channel is
    also stronger and rougher than the layer's median. Injected noise, band-limited or not, raises both; a
    clean channel that is merely strong keeps its smooth spectrum."""
    live = scores.live
    if int(live.sum()) < 3:
        return ()
    z_energy = robust_z(torch.log10((scores.hf_energy + scores.lf_energy).clamp_min(TINY)), live)
    z_rough = robust_z(torch.log10(scores.roughness.clamp_min(TINY)), live)
    joint = (z_energy + z_rough) / math.sqrt(2.0)
    hit = live & (joint > min_z) & (z_energy > 0) & (z_rough > 0)
    return tuple(int(i) for i in torch.nonzero(hit).flatten().tolist())


def noised_channels(scores: LayerScores, assumed_ratio: float | None, min_separation: float, min_contrast: float,
                    min_z: float) -> tuple[int, ...]:
    """The channels flagged by roughness (``rough_channels``) or by energy (``energetic_channels``)."""
    flagged = set(rough_channels(scores, assumed_ratio, min_separation, min_contrast))
    if assumed_ratio is None:  # an assumed p fixes the count: roughness ranks them
        flagged |= set(energetic_channels(scores, min_z))
    return tuple(sorted(flagged))


def lf_outliers(scores: LayerScores, flagged: tuple[int, ...], min_z: float) -> tuple[int, ...]:
    """Of the flagged channels, those whose energy BELOW the cutoff is an outlier too, against the unflagged
    channels (median / MAD): their low bins carry noise as well (full-band noise), so they are not kept."""
    live = scores.live.clone()
    if not flagged:
        return ()
    reference = live.clone()
    reference[list(flagged)] = False
    if int(reference.sum()) < 3:
        return tuple(flagged)  # nothing clean to compare with: trust no bin of a flagged channel
    lf = torch.log10(scores.lf_energy.clamp_min(TINY)).double()
    ref = lf[reference]
    median = ref.median()
    spread = 1.4826 * float((ref - median).abs().median())
    spread = max(spread, 1e-12)
    return tuple(c for c in flagged if float((lf[c] - median) / spread) > min_z)
