"""What the explorer draws about TIP: Grad-CAM heatmaps, channel weights, masks and kernel spectra, and
what the server receives before and after the defense.

``TipExplainer`` runs the client's round and the expensive half of TIP (Grad-CAM α for every conv layer)
once per (model, image, round); ``preview`` then redoes only the cheap half (selection and noise) for
new slider values, and ``leaks`` summarises that preview's update per conv channel and fc row. All of
them return numpy arrays and dataclasses: the app never touches tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from tipcore import defenses
from tipcore.federation import models
from tipcore.signals import spectral
from tipcore.defenses.base import LayerDiagnostics
from tipcore.defenses.tip import TIP, compute_alphas
from tipcore.federation.fl import RoundConfig, SharedUpdate, client_update
from tipcore.signals.saliency import gradcam_map
from tipcore.common.seeding import generator

TIP_FAMILY = ("tip", "tip_random", "tip_fullband")


@dataclass(frozen=True)
class KernelView:
    layer: str
    channel: int
    in_channel: int
    before: np.ndarray  # (kH, kW) the kernel slice of the shared update before the defense
    after: np.ndarray
    difference: np.ndarray
    spectrum_before: np.ndarray  # |centred DFT|
    spectrum_after: np.ndarray
    mask: np.ndarray  # 1 where the bin is noised
    selected: bool


@dataclass(frozen=True)
class TipPreview:
    layers: tuple[LayerDiagnostics, ...]
    summary: Mapping[str, float]
    notes: str
    _clean: SharedUpdate
    _defended: SharedUpdate

    def layer(self, name: str) -> LayerDiagnostics:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"unknown layer '{name}'; choose one of: {', '.join(l.name for l in self.layers)}")

    def kernel(self, layer: str, channel: int, in_channel: int = 0) -> KernelView:
        diag = self.layer(layer)
        w_before = self._clean.tensors[f"{layer}.weight"]
        w_after = self._defended.tensors[f"{layer}.weight"]
        if not 0 <= channel < w_before.shape[0]:
            raise ValueError(f"channel must be in [0, {w_before.shape[0] - 1}], got {channel}")
        if not 0 <= in_channel < w_before.shape[1]:
            raise ValueError(f"in_channel must be in [0, {w_before.shape[1] - 1}], got {in_channel}")
        before = w_before[channel, in_channel].detach().cpu().double()
        after = w_after[channel, in_channel].detach().cpu().double()
        return KernelView(
            layer=layer, channel=channel, in_channel=in_channel,
            before=before.numpy(), after=after.numpy(), difference=(after - before).numpy(),
            spectrum_before=spectral.magnitude(before).numpy(), spectrum_after=spectral.magnitude(after).numpy(),
            mask=diag.mask, selected=any(channel in s for s in diag.selected),
        )


@dataclass(frozen=True)
class ConvLeak:
    """One conv layer of the received update, per output channel (Σ over input channels and kernel bins)."""

    layer: str
    clean: np.ndarray  # (C_out,) Σ g² of the kernel gradient the client computed
    defended: np.ndarray  # (C_out,) Σ g² of what the server receives
    difference: np.ndarray  # (C_out,) Σ (defended − clean)²: exactly 0 on every channel sent unchanged
    selected: tuple[int, ...]  # the channels the defense chose to noise


@dataclass(frozen=True)
class FcLeak:
    """The fc layer's weight gradient as the server receives it: one row per class."""

    rows: np.ndarray  # (classes, features)
    row_sums: np.ndarray  # (classes,) what iDLG reads: the true class's sum has the opposite sign
    max_change: float  # max |defended − clean| over the fc weights: 0 when the defense leaves fc alone
    true_label: int
    inferred_label: int  # iDLG's rule: the row with the most negative sum


@dataclass(frozen=True)
class LeakView:
    """Everything in gradient units (FedAvg's θ_g − θ divided by T·η), so clean and defended compare directly."""

    convs: tuple[ConvLeak, ...]
    fc: FcLeak | None


def _channel_energy(weight: torch.Tensor, scale: float) -> np.ndarray:
    """Σ (scale · w)² per output channel, summed in float64 without copying the layer to float64."""
    norm = torch.linalg.vector_norm(weight.detach().flatten(1), dim=1, dtype=torch.float64)
    return (norm * scale).pow(2).cpu().numpy()


class TipExplainer:
    """Read-only after construction, so one instance may serve many visitors."""

    def __init__(self, model_name: str, image: np.ndarray, label: int, *, weights: str = "random",
                 num_classes: int = 10, round_cfg: RoundConfig | None = None, seed: int = 0) -> None:
        self.round = round_cfg or RoundConfig()
        self.seed = seed
        self.model = models.build(model_name, num_classes=num_classes, weights=weights, seed=seed).eval()
        arr = np.asarray(image, dtype=np.float32)
        self.image = arr
        self.label = int(label)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
        y = torch.tensor([self.label])
        # A batch of one copy of the image: the explorer explains one private image.
        xb = x.expand(self.round.batch_size, -1, -1, -1).contiguous()
        yb = y.expand(self.round.batch_size).contiguous()
        self.clean, ctx = client_update(self.model, xb, yb, self.round, generator=generator(seed, "defense"))
        self._ref_model = ctx.model
        self.alphas = compute_alphas(ctx.model, xb, yb, "all")
        self._x = x
        self._heatmaps: dict[str, np.ndarray] = {}

    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.alphas.layers]

    def heatmap(self, layer: str | None = None) -> np.ndarray:
        """Grad-CAM heatmap (H, W) in [0, 1] of the private image at ``layer`` (default: last conv)."""
        name = layer or self.layer_names[-1]
        if name not in self._heatmaps:
            if name not in self.layer_names:
                raise ValueError(f"unknown layer '{name}'; choose one of: {', '.join(self.layer_names)}")
            self._heatmaps[name] = gradcam_map(self._ref_model, self._x, self.label, name)
        return self._heatmaps[name]

    def preview(self, options: Mapping[str, Any] | None = None, defense: str = "tip") -> TipPreview:
        """Selection and noise for these TIP options, reusing the α computed once."""
        if defense not in TIP_FAMILY:
            raise ValueError(f"preview works for {', '.join(TIP_FAMILY)}, got '{defense}'")
        options = dict(options or {})
        options.setdefault("layers", "all")
        tip = defenses.create(defense, options)
        assert isinstance(tip, TIP)
        alphas = self.alphas
        if tip.config.layers != "all":
            keep = {n for n in _resolve(self._ref_model, tip.config.layers)}
            alphas = type(alphas)(tuple(i for i in alphas.layers if i.name in keep), alphas.labels, alphas.alphas)
        defended, diag = tip.apply(self.clean, self.round, alphas, generator(self.seed, "defense-preview"))
        return TipPreview(diag.layers, dict(diag.summary), diag.notes, self.clean, defended)

    def leaks(self, preview: TipPreview) -> LeakView:
        """What the server receives under ``preview``'s defense, next to what the client computed: per conv
        layer the kernel-gradient energy of each output channel, and the fc layer's gradient rows with the
        label iDLG reads off them."""
        clean, defended = preview._clean, preview._defended
        # Gradient units (FedAvg sends θ_g − θ = T·η·gradient); scaled per tensor touched, not the whole update.
        scale = 1.0 if clean.mode == "fedsgd" else 1.0 / (clean.local_steps * clean.lr)
        chosen = {layer.name: tuple(sorted({c for s in layer.selected for c in s})) for layer in preview.layers}
        convs = []
        for name in self.layer_names:
            before, after = clean.tensors[f"{name}.weight"].detach(), defended.tensors[f"{name}.weight"].detach()
            convs.append(ConvLeak(
                layer=name, clean=_channel_energy(before, scale), defended=_channel_energy(after, scale),
                # float32 subtraction is exactly 0 wherever the defense left a weight as it was
                difference=_channel_energy(after - before, scale), selected=chosen.get(name, ()),
            ))
        fc = None
        if "fc.weight" in defended.tensors:
            received = defended.tensors["fc.weight"].detach().cpu().double() * scale
            computed = clean.tensors["fc.weight"].detach().cpu().double() * scale
            sums = received.sum(dim=1)
            fc = FcLeak(
                rows=received.numpy(), row_sums=sums.numpy(), max_change=float((received - computed).abs().max()),
                true_label=self.label, inferred_label=int(torch.argmin(sums)),
            )
        return LeakView(tuple(convs), fc)


def _resolve(model: torch.nn.Module, layers: str) -> list[str]:
    from tipcore.signals.saliency import resolve_layers

    return [n for n, _ in resolve_layers(model, layers)]
