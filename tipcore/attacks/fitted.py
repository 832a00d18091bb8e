"""A fitted matcher: what an attacker matches of one received update, as a fixed linear map per tensor.

A matcher (``tipcore.attacks.matchers``) is fitted once on the received update and the architecture
(``Received``) and returns a ``Fitted``: per tensor a ``TensorMap`` T, applied both to the target and to
every dummy gradient, so any distance (L2, cosine) compares T(dummy) with T(target); plus the conv
channels it flagged as noised (conv layer -> channels), which the experimenter scores afterwards.

    T(w) = scale ⊙ (w − remove_high ⊙ highpass_r(w))

``highpass_r`` is the part of each spatial kernel in the DFT bins at radius ≥ r (TIP's mask, an orthogonal
projection); ``remove_high`` selects the output channels that lose those bins (None: all of them);
``scale`` weighs output channels ([C_out, 1, ...]) or single entries (the tensor's shape). Both are
stacked per problem by the batched comparison (``stack_maps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tipcore.signals import spectral


def highpass(w: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The part of each kernel in the bins at radius >= cutoff · min(kH, kW) / 2 (an orthogonal projection)."""
    kh, kw = w.shape[-2:]
    mask = spectral.highfreq_mask(kh, kw, cutoff)
    proj = spectral.projection_matrix(tuple(int(v) for v in mask.flatten().tolist()), kh, kw).to(w)
    return (w.reshape(-1, kh * kw) @ proj.T).reshape(w.shape)


@dataclass(frozen=True)
class Received:
    """What a matcher is fitted on: the architecture at the update's point, and the received update."""

    model: nn.Module
    targets: Mapping[str, torch.Tensor]  # parameter name -> received update in gradient units
    batch: int  # the number of examples the update reports (public in FL: it weighs the aggregation)
    mode: str  # fedsgd or fedavg


@dataclass(frozen=True)
class TensorMap:
    scale: torch.Tensor | None = None  # broadcast against the tensor: [C_out, 1, ...] or its full shape
    cutoff: float | None = None  # remove the bins at radius >= cutoff of ...
    remove_high: torch.Tensor | None = None  # ... these output channels ([C_out, 1, 1, 1] 0/1), None: all

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.cutoff is not None:
            high = highpass(t, self.cutoff)
            t = t - high if self.remove_high is None else t - self.remove_high * high
        if self.scale is not None:
            t = t * self.scale
        return t


def channel_scale(factors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-output-channel factors [C_out] as a scale for a tensor shaped like ``like``."""
    return factors.to(like).view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class FeatureTarget:
    """A term matching the fc layer's input itself, where the matcher could read it off the update:
    weight · ‖known ⊙ (φ(x̂) − φ)‖² / ‖known ⊙ φ‖², times the gradient distance's scale (‖T(t)‖² for L2, 1
    for cosine), so that ``weight`` 1 weighs both terms alike at the start."""

    target: torch.Tensor  # [B, D] the recovered features
    known: torch.Tensor  # [B, D] 1 where recovered, 0 where unknown
    weight: float


@dataclass
class Fitted:
    """A fitted matcher: per tensor the linear map, the channels flagged as noised, per-layer weights,
    optionally a feature term, and notes on what it found (recorded with the run)."""

    matcher: str = ""  # the registered name (filled in by ``fit_matcher``)
    maps: dict[str, TensorMap] = field(default_factory=dict)
    flagged: dict[str, tuple[int, ...]] = field(default_factory=dict)  # conv layer -> channels judged noised
    weights: dict[str, tuple[float, ...]] = field(default_factory=dict)  # conv layer -> per-channel weights
    features: FeatureTarget | None = None
    labels: tuple[int, ...] | None = None  # labels the matcher read off the update (used unless the server is told)
    notes: list[str] = field(default_factory=list)

    def apply(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        transform = self.maps.get(name)
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


def fit_matcher(matcher: str, config: Any, received: Received) -> Fitted:
    """Fit the registered ``matcher`` (with ``config``; None: its defaults) on a received update."""
    from tipcore.attacks.registry import MATCHERS

    spec = MATCHERS[matcher]
    fitted = spec.factory(spec.config_cls() if config is None else config).fit(received)
    if not isinstance(fitted, Fitted):
        raise TypeError(f"matcher '{matcher}' returned {type(fitted).__name__}, not a Fitted")
    fitted.matcher = matcher
    return fitted


def stack_maps(maps: Sequence[TensorMap | None], shape: torch.Size, device: torch.device):
    """N problems' maps of one tensor as one map of the stacked [N, *shape] tensor (None: nothing to do)."""
    present = [m for m in maps if m is not None]
    if not present:
        return None
    cutoffs = {m.cutoff for m in present if m.cutoff is not None}
    if len(cutoffs) > 1:
        raise ValueError("a batched comparison needs one assumed cutoff for every problem")
    cutoff = next(iter(cutoffs), None)
    unit = (1,) * (len(shape) - 1)

    def stacked(values: list[torch.Tensor | None], fill: float, full: bool) -> torch.Tensor:
        target = shape if full else (shape[0], *unit)
        rows = [torch.full(target, fill) if v is None else v.expand(target) for v in values]
        return torch.stack([r.to(device) for r in rows])

    scale = None
    if any(m.scale is not None for m in present):
        scales = [None if m is None else m.scale for m in maps]
        full = any(s is not None and s.shape != (shape[0], *unit) for s in scales)
        scale = stacked(scales, 1.0, full)
    remove = None
    if cutoff is not None:
        remove = stacked([None if m is None or m.cutoff is None else
                          (m.remove_high if m.remove_high is not None else torch.ones((shape[0], *unit)))
                          for m in maps], 0.0, False)
    return TensorMap(scale, cutoff, remove)


def zero_fraction(t: torch.Tensor) -> float:
    """The fraction of a received tensor's entries that are exactly zero (what pruning defenses send)."""
    return float((t == 0).sum()) / max(t.numel(), 1)
