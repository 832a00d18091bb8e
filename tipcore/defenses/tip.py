"""TIP: targeted interpretable perturbation (Wang and Su, arXiv 2602.11633), as docs/METHOD.md §3 describes.

1. Grad-CAM channel weight α (signed) of every chosen conv layer, on the client's model at the point the
   update refers to, for one private sample per distinct label (n_cam samples).
2. Per layer and sample, the top k = max(1, floor(p · C_out)) output channels by α.
3. For each selected output channel c, noise ΔW = β · Re(IDFT2(ifftshift(M_r ⊙ fftshift(DFT2(Z))))) on
   W[c] ([C_in, kH, kW]): white noise projected onto the high-frequency bins (radius ≥ r·min(kH, kW)/2).
   Low bins, DC included, are untouched; so are biases, BatchNorm, fc and buffers.
4. β from the Gaussian-mechanism σ of the round, split evenly over layers and samples: β = σ / n_cam / L,
   or given directly.
The expensive part (α) and the cheap part (selection and noise) are separate functions, so the app can
redraw the perturbation for new sliders without recomputing Grad-CAM; ``protect_stages`` reports them as
two stages ("Grad-CAM", then "defense"). Torch-free at import, like every defense module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Mapping

import numpy as np

from tipcore.defenses import calibration as privacy
from tipcore.defenses.base import DefenseDiagnostics, DefenseStages, LayerDiagnostics, register
from tipcore.common.knobs import check, clip_knob, delta_knob, epsilon_knob, knob

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tipcore.federation.fl import ClientContext, RoundConfig, SharedUpdate


# The ablations are swept over one decade fewer: below a relative noise of 1e-3 every TIP variant is the
# undefended update for the attacks (the grid is in unit-free relative strengths: tipcore.defenses.calibration).
ABLATION_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class TipConfig:
    ratio: float = knob(0.1, "Channel ratio p", "fraction of output channels per conv layer that get noise, "
                        "chosen by Grad-CAM's α (k = max(1, floor(p·C_out)))", low=0.0, high=1.0)
    k: int | None = knob(None, "Channels per layer k", "absolute channels per layer (overrides the ratio p)", low=1)
    cutoff: float = knob(0.5, "Frequency cutoff r", "spectrum bins at radius >= r·min(kH, kW)/2 from DC get noise",
                         low=0.0, high=1.0)
    layers: str = knob("all", "Layers", "all, last, or comma-separated conv layer names")
    signed: bool = knob(True, "Signed α", "rank channels by signed α (the paper) or, if false, by |α|")
    noise: Literal["calibrated", "direct"] = knob("calibrated", "Noise scale", "calibrated from (ε, δ, C), or "
                                                  "direct: the per-element scale β")
    beta: float | None = knob(None, "Noise scale β", "per-element noise scale (sets noise=direct)", low=0.0,
                              role="strength", grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), log=True,
                              unit="update units", implies=(("noise", "direct"),), noise_unit="update",
                              symbol="β")
    epsilon: float = epsilon_knob()
    delta: float = delta_knob()
    clip: float = clip_knob()  # C the calibration assumes: set the round's clip to the same value

    def __post_init__(self) -> None:
        check(self)
        if not isinstance(self.layers, str) or not self.layers.strip():
            raise ValueError("layers must be 'all', 'last' or a comma-separated list of conv layer names")
        if self.noise not in ("calibrated", "direct"):
            raise ValueError(f"noise must be calibrated or direct, got '{self.noise}'")
        if self.noise == "direct" and self.beta is None:
            raise ValueError("beta (>= 0) is required when noise='direct'")
        if self.noise == "calibrated" and self.beta is not None:
            raise ValueError("beta is only used with noise='direct'; drop it or set noise='direct'")

    def channels(self, c_out: int) -> int:
        if self.k is not None:
            return min(self.k, c_out)
        return max(1, int(np.floor(self.ratio * c_out + 1e-9)))


@dataclass(frozen=True)
class LayerInfo:
    name: str  # module name; its weight is f"{name}.weight" in the update
    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]


@dataclass(frozen=True)
class TipAlphas:
    """α for every chosen layer and Grad-CAM sample: the expensive, slider-independent half of TIP."""

    layers: tuple[LayerInfo, ...]
    labels: tuple[int, ...]  # the label of each Grad-CAM sample (one per distinct label)
    alphas: tuple[Mapping[str, torch.Tensor], ...]


def gradcam_samples(y: torch.Tensor) -> list[int]:
    """Indices of the first sample of each distinct label, in batch order."""
    seen: dict[int, int] = {}
    for i, label in enumerate(y.tolist()):
        seen.setdefault(int(label), i)
    return list(seen.values())


def compute_alphas(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: str = "all") -> TipAlphas:
    from tipcore.signals.saliency import channel_alpha, resolve_layers

    chosen = resolve_layers(model, layers)
    infos = tuple(
        LayerInfo(n, m.out_channels, m.in_channels // m.groups, tuple(m.kernel_size)) for n, m in chosen
    )
    names = [i.name for i in infos]
    idx = gradcam_samples(y)
    alphas = tuple(channel_alpha(model, x[i: i + 1], int(y[i]), names) for i in idx)
    return TipAlphas(infos, tuple(int(y[i]) for i in idx), alphas)


def calibrated_beta(cfg: TipConfig, round_cfg: RoundConfig, n_cam: int, n_layers: int) -> tuple[float, float | None]:
    """(β, σ): σ of the round's Gaussian mechanism, split evenly (std, not variance) over samples and layers.
    σ is None for a direct β."""
    if cfg.noise == "direct":
        return float(cfg.beta), None
    sigma = privacy.update_sigma(round_cfg, cfg.epsilon, cfg.delta, cfg.clip)
    return sigma / n_cam / n_layers, sigma


def perturb(tensors: Mapping[str, torch.Tensor], alphas: TipAlphas, cfg: TipConfig, beta: float,
            gen: torch.Generator, *, random_channels: bool = False,
            full_band: bool = False) -> tuple[dict[str, torch.Tensor], tuple[LayerDiagnostics, ...]]:
    """Add TIP's noise to the selected output channels of each layer's weight update.

    Random numbers are drawn in a fixed order: samples, then layers in ``named_modules`` order; per layer
    (ablation only) the random channels, then one Z of shape [k, C_in, kH, kW].
    """
    import torch

    from tipcore.signals import spectral

    out = {n: t.clone() for n, t in tensors.items()}
    cutoff = 0.0 if full_band else cfg.cutoff
    masks = {info.name: spectral.highfreq_mask(*info.kernel_size, cutoff) for info in alphas.layers}
    selected: dict[str, list[tuple[int, ...]]] = {info.name: [] for info in alphas.layers}
    energy = {info.name: 0.0 for info in alphas.layers}
    for alpha in alphas.alphas:
        for info in alphas.layers:
            weight_name = f"{info.name}.weight"
            if weight_name not in out:
                raise ValueError(f"the update has no tensor '{weight_name}' for TIP to perturb")
            k = cfg.channels(info.out_channels)
            if random_channels:
                chosen = torch.randperm(info.out_channels, generator=gen)[:k]
            else:
                score = alpha[info.name] if cfg.signed else alpha[info.name].abs()
                chosen = torch.topk(score, k, largest=True).indices
            chosen = torch.sort(chosen).values
            z = torch.randn((k, info.in_channels, *info.kernel_size), generator=gen)
            delta_w = spectral.highpass_noise(z, masks[info.name], beta).to(out[weight_name])
            out[weight_name][chosen.to(out[weight_name].device)] += delta_w
            selected[info.name].append(tuple(int(c) for c in chosen.tolist()))
            energy[info.name] += float((delta_w.double() ** 2).sum())
    diagnostics = tuple(
        LayerDiagnostics(
            name=info.name, kernel_size=info.kernel_size,
            alpha=np.stack([a[info.name].cpu().numpy() for a in alphas.alphas]).astype(np.float32),
            selected=tuple(selected[info.name]), cutoff=cutoff, beta=beta, mask=masks[info.name].numpy(),
            effective_std=spectral.effective_std(masks[info.name], beta), noise_energy=energy[info.name],
        )
        for info in alphas.layers
    )
    return out, diagnostics


@register("tip", TipConfig, "TIP: high-frequency kernel noise on the Grad-CAM top-k channels of every conv layer",
          label="TIP")
class TIP:
    random_channels = False
    full_band = False

    def __init__(self, config: TipConfig | None = None) -> None:
        self.config = config or TipConfig()

    def check_model(self, model: nn.Module) -> None:
        """The layer names must be conv layers of ``model`` (``defenses.check_model``: before the round)."""
        from tipcore.signals.saliency import resolve_layers

        resolve_layers(model, self.config.layers)

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]:
        alphas = compute_alphas(ctx.model, ctx.x, ctx.y, self.config.layers)
        return self.apply(update, ctx.round, alphas, ctx.generator)

    def protect_stages(self, update: SharedUpdate, ctx: ClientContext) -> DefenseStages:
        """``protect`` in its two client-side stages: Grad-CAM on the private batch (the slow half), then the
        selection and the noise."""
        yield "Grad-CAM"
        alphas = compute_alphas(ctx.model, ctx.x, ctx.y, self.config.layers)
        yield "defense"
        return self.apply(update, ctx.round, alphas, ctx.generator)

    def apply(self, update: SharedUpdate, round_cfg: RoundConfig, alphas: TipAlphas,
              gen: torch.Generator) -> tuple[SharedUpdate, DefenseDiagnostics]:
        """The cheap half: selection and noise for precomputed α."""
        cfg = self.config
        beta, sigma = calibrated_beta(cfg, round_cfg, len(alphas.alphas), len(alphas.layers))
        tensors, layers = perturb(update.tensors, alphas, cfg, beta, gen,
                                  random_channels=self.random_channels, full_band=self.full_band)
        summary = {"beta": beta, **({"sigma": sigma} if sigma is not None else {}), "n_cam": float(len(alphas.alphas)),
                   "layers": float(len(alphas.layers)), "epsilon": cfg.epsilon, "delta": cfg.delta,
                   "noise_energy": float(sum(layer.noise_energy for layer in layers))}
        notes = "calibrated: beta = sigma / n_cam / L" if cfg.noise == "calibrated" else "direct beta"
        if cfg.noise == "calibrated" and round_cfg.clip is None:
            notes += "; the round ran without clipping, so the calibration's sensitivity assumption does not hold"
        if self.random_channels:
            notes += "; ablation: random channels instead of Grad-CAM's top-k"
        if self.full_band:
            notes += "; ablation: noise on the whole spectrum (cutoff 0)"
        return update.with_tensors(tensors), DefenseDiagnostics(self.name, asdict(cfg), layers, summary, notes)

    def describe(self) -> str:
        return ("TIP (Wang and Su, 2026). Grad-CAM scores every output channel of every convolution by how "
                "much it drives the true class on the client's own image; in each layer the top fraction p "
                "of channels gets Gaussian noise, and only in the high-frequency part of each kernel's 2D "
                "spectrum (beyond cutoff r), so the fine detail an attacker needs is disturbed while the "
                "low frequencies accuracy relies on survive. A heuristic, not formal (ε, δ)-DP.")


@register("tip_random", TipConfig, "TIP ablation: the same noise on randomly chosen channels",
          label="TIP, random channels", sweep_grid=ABLATION_GRID)
class TipRandomChannels(TIP):
    random_channels = True

    def describe(self) -> str:
        return ("TIP ablation: random channels. Exactly TIP's noise and band, but on k channels per layer "
                "drawn at random instead of Grad-CAM's most important ones: shows what the targeting buys.")


@register("tip_fullband", TipConfig, "TIP ablation: noise on the whole spectrum of the selected channels",
          label="TIP, full band", sweep_grid=ABLATION_GRID)
class TipFullBand(TIP):
    full_band = True

    def describe(self) -> str:
        return ("TIP ablation: whole spectrum. Grad-CAM's channels as in TIP, but the noise covers every "
                "frequency bin, DC included (cutoff 0): shows what sparing the low frequencies buys.")
