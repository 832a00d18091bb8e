"""What the explorer draws about TIP: Grad-CAM heatmaps, channel weights, masks and kernel spectra.

``TipExplainer`` runs the client's round and the expensive half of TIP (Grad-CAM α for every conv layer)
once per (model, image, round); ``preview`` then redoes only the cheap half (selection and noise) for
new slider values, and returns numpy arrays and dataclasses: the app never touches tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from tipcore import defenses, models, spectral
from tipcore.defenses.base import LayerDiagnostics
from tipcore.defenses.tip import TIP, compute_alphas
from tipcore.fl import RoundConfig, SharedUpdate, client_update
from tipcore.saliency import gradcam_map
from tipcore.seeding import generator

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


def _resolve(model: torch.nn.Module, layers: str) -> list[str]:
    from tipcore.saliency import resolve_layers

    return [n for n, _ in resolve_layers(model, layers)]
