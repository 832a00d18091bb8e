"""What an attacker matches: the parts of the received update it trusts, decided from the update alone.

A naive attacker matches every tensor. An attacker who knows the defense can do better: TIP adds noise
only to the high-frequency bins of a few output channels per conv layer, at 30–2000x the clean gradient
(measured: ``noise_to_signal`` in every result), and sends everything else clean. Each matcher here is fitted once
on the received update and then acts as a fixed linear map ``T`` applied both to the target and to every
dummy gradient, so any distance (L2, cosine) compares ``T(dummy)`` with ``T(target)``:

- ``all``: the identity (the naive attacker).
- ``drop``: zero the output channels whose kernels carry injected noise. The statistic is each channel's
  spectral roughness R_c = E_hf / E_lf, the energy above the cutoff over the energy below it. It is
  scale-free, so it does not care how strongly a channel fires; clean gradients of images are smooth
  (R small and alike across channels), and TIP's noise has no low-frequency part at all, so it only
  raises E_hf. Per layer, the log-roughness values are split in two by Otsu's threshold, and the upper
  group is flagged only when an empty gap separates it from the rest (``min_separation`` decades and
  ``min_contrast`` robust spreads of the clean group). Knowing p (``assumed_ratio``) flags the top
  floor(p · C_out) instead.
- ``lowpass``: keep only what TIP never touches: the below-cutoff DFT bins of every kernel (for 3x3 at
  r = 0.5, each kernel's mean) and every tensor that is not a spatial conv kernel.
- ``noise_aware``: weight each conv output channel by F / (F + N) (a Gaussian likelihood whose floor F is
  the residual a converged attack leaves on a clean channel), with the noise energy N estimated as the high-frequency excess over the layer's typical roughness. Under TIP it acts like a
  soft ``drop``; under DP, where every bin of every channel is equally noisy, the weights stay near 1
  and it gains little over the naive attacker (by design, and measured in docs/REPRODUCTION.md).

Attackers only ever see ``ServerView`` + ``SharedUpdate``: no matcher reads the defense's record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from tipcore import spectral
from tipcore.knobs import check, knob

MATCH_MODES: tuple[str, ...] = ("all", "drop", "lowpass", "noise_aware")
ADAPTIVE_MODES: tuple[str, ...] = MATCH_MODES[1:]
MATCH_SUMMARIES: dict[str, str] = {
    "all": "naive: matches every tensor of the update",
    "drop": "adaptive: finds the noised conv channels from the update alone and leaves them out",
    "lowpass": "adaptive: matches only the below-cutoff DFT bins of every kernel and the untouched tensors",
    "noise_aware": "adaptive: weights every conv channel by its estimated signal-to-noise (Wiener)",
}
_TINY = 1e-30


@dataclass(frozen=True)
class MatchOptions:
    """The adaptive part of an attack config, shared by every optimisation attack."""

    match: str = knob("all", "Matcher", "what the attacker matches: all (naive), drop, lowpass or noise_aware")
    assumed_cutoff: float = knob(0.5, "Assumed cutoff r", "the r the attacker assumes TIP used (the paper's "
                                 "default is public)", low=0.0, low_open=True, high=1.0)
    assumed_ratio: float | None = knob(None, "Assumed ratio p", "the p the attacker assumes; none: estimate the "
                                       "noised count per layer", low=0.0, low_open=True, high=1.0)
    min_separation: float = knob(1.0, "Gap", "drop: an empty gap of this many decades must separate the noised "
                                 "group", low=0.0, high=10.0, unit="decades")
    min_contrast: float = knob(3.0, "Contrast", "drop: ... and of this many robust spreads of the clean group",
                               low=0.0, high=100.0)
    residual_floor: float = knob(0.01, "Residual floor", "noise_aware: attainable residual on a clean channel, "
                                 "relative to its energy", low=0.0, low_open=True, high=1.0)

    def __post_init__(self) -> None:
        check(self)  # every knob of the attack's config, subclasses' included
        if self.match not in MATCH_MODES:
            raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got '{self.match}'")


@dataclass(frozen=True)
class LayerScores:
    """The attacker's per-channel view of one conv layer's received weight update."""

    name: str  # the conv module's name (its weight is f"{name}.weight")
    roughness: torch.Tensor  # [C_out] E_hf / E_lf of each output channel's kernels
    hf_energy: torch.Tensor  # [C_out]
    lf_energy: torch.Tensor  # [C_out]


@dataclass
class Matcher:
    """A fitted matcher: per tensor, the linear map applied to target and dummy gradients alike."""

    mode: str
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    flagged: dict[str, tuple[int, ...]] = field(default_factory=dict)  # drop: conv layer -> noised channels
    weights: dict[str, tuple[float, ...]] = field(default_factory=dict)  # noise_aware: conv layer -> weights
    channel_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # tensor -> per-output-channel factor
    lowpass_cutoff: float | None = None  # lowpass: every spatial kernel keeps only its below-cutoff bins

    def apply(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        transform = self.transforms.get(name)
        return tensor if transform is None else transform(tensor)

    def kept_fraction(self, shapes: Mapping[str, torch.Size]) -> float:
        """How much of the update (in entries) is matched at full weight."""
        total = sum(math.prod(s) for s in shapes.values())
        dropped = 0
        for layer, channels in self.flagged.items():
            shape = shapes.get(f"{layer}.weight")
            if shape is not None:
                dropped += len(channels) * math.prod(shape[1:])
        return 1.0 - dropped / max(total, 1)


def spatial_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Conv layers whose kernels have a spectrum worth splitting (bigger than 1x1)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] * m.kernel_size[1] > 1]


def highpass(w: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The part of each kernel in the bins at radius >= cutoff · min(kH, kW) / 2 (an orthogonal projection)."""
    kh, kw = w.shape[-2:]
    mask = spectral.highfreq_mask(kh, kw, cutoff)
    proj = spectral.projection_matrix(tuple(int(v) for v in mask.flatten().tolist()), kh, kw).to(w)
    return (w.reshape(-1, kh * kw) @ proj.T).reshape(w.shape)


def layer_scores(name: str, weight_update: torch.Tensor, cutoff: float) -> LayerScores:
    w = weight_update.detach().double()
    hf = highpass(w, cutoff)
    hf_energy = (hf * hf).flatten(1).sum(1)
    lf_energy = ((w - hf) ** 2).flatten(1).sum(1)
    roughness = hf_energy / lf_energy.clamp_min(_TINY)
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


def flag_noised_channels(scores: LayerScores, options: MatchOptions) -> tuple[int, ...]:
    """The output channels of one layer that carry injected high-frequency noise, by roughness alone.

    The noised group is accepted only if an empty stretch of at least ``min_separation`` decades, and of
    ``min_contrast`` robust spreads of the clean group, separates it from the rest: a unimodal layer of clean
    channels has no such gap, so nothing is flagged there. (The noised group itself may spread widely: a
    channel whose clean gradient is nearly zero gets an enormous roughness once noise is added.)
    """
    energy = scores.hf_energy + scores.lf_energy
    live = energy > _TINY  # dead channels (ReLU never fired) send exact zeros: nothing to flag
    if int(live.sum()) < 2:
        return ()
    log_r = torch.log10(scores.roughness.clamp_min(_TINY))
    if options.assumed_ratio is not None:
        k = max(1, int(math.floor(options.assumed_ratio * scores.roughness.numel() + 1e-9)))
        ranked = torch.where(live, log_r, torch.full_like(log_r, -math.inf))
        return tuple(sorted(int(i) for i in torch.topk(ranked, min(k, int(live.sum()))).indices.tolist()))
    threshold, margin, spread = otsu_split(log_r[live])
    if margin < options.min_separation or margin < options.min_contrast * spread:
        return ()
    return tuple(int(i) for i in torch.nonzero(live & (log_r > threshold)).flatten().tolist())


def _channel_scale(factors: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def scale(t: torch.Tensor) -> torch.Tensor:
        return t * factors.to(t).view(-1, *([1] * (t.ndim - 1)))

    return scale


def _lowpass(cutoff: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def keep_low(t: torch.Tensor) -> torch.Tensor:
        return t - highpass(t, cutoff)

    return keep_low


def fit(options: MatchOptions, model: nn.Module, targets: Mapping[str, torch.Tensor]) -> Matcher:
    """Decide, from the received update (``targets``, gradient units) and the architecture, what to match."""
    matcher = Matcher(options.match)
    if options.match == "all":
        return matcher
    for layer, _module in spatial_convs(model):
        weight = f"{layer}.weight"
        if weight not in targets:
            continue
        if options.match == "lowpass":
            matcher.transforms[weight] = _lowpass(options.assumed_cutoff)
            matcher.lowpass_cutoff = options.assumed_cutoff
            continue
        scores = layer_scores(layer, targets[weight], options.assumed_cutoff)
        if options.match == "drop":
            flagged = flag_noised_channels(scores, options)
            if flagged:
                keep = torch.ones(scores.roughness.numel())
                keep[list(flagged)] = 0.0
                matcher.transforms[weight] = _channel_scale(keep)
                matcher.channel_scales[weight] = keep
            matcher.flagged[layer] = flagged
        else:  # noise_aware: inverse-variance weights from the high-frequency excess over natural roughness
            live = (scores.hf_energy + scores.lf_energy) > _TINY
            log_r = torch.log10(scores.roughness.clamp_min(_TINY))
            # Roughness up to min_separation decades above the layer's lower quartile counts as the clean
            # gradient's own: DP's equally noisy channels scatter far less than that and keep weight 1.
            natural = 10 ** (float(torch.quantile(log_r[live], 0.25)) + options.min_separation) if int(live.sum()) else 0.0
            noise = (scores.hf_energy - natural * scores.lf_energy).clamp_min(0.0)
            # The floor is the residual a converged attack still leaves on a clean channel (a fraction of its
            # own energy): a Gaussian likelihood with that floor weighs a channel by floor / (floor + noise).
            floor = options.residual_floor * (scores.hf_energy + scores.lf_energy - noise)
            gain = torch.where(live, floor / (floor + noise).clamp_min(_TINY), torch.ones_like(floor))
            # The squared distance weighs a channel by gain; the map scales by its square root.
            matcher.transforms[weight] = _channel_scale(gain.sqrt().float())
            matcher.channel_scales[weight] = gain.sqrt().float()
            matcher.weights[layer] = tuple(round(float(g), 6) for g in gain.tolist())
    return matcher
