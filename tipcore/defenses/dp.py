"""Differential-privacy baselines.

``dp``: the per-example-clipped Gaussian mechanism (DP-SGD with full batches). Every example's gradient
is clipped to L2 norm C (computed with torch.func), the clipped gradients are summed, N(0, (zC)²) is added,
and the sum is divided by B. In FedAvg each local step does this, and the update is θ_g − θ_T. The noise
multiplier z is given, or calibrated from (ε, δ): classically (same σ as TIP at the same budget in FedSGD),
or with a Rényi-DP accountant. A client that trains on mini-batches (the FL simulator) lists them in
``ClientContext.batches``, and DP-SGD runs on exactly those, each step divided by the nominal batch size, so
the reported ``sigma_per_step`` is the noise every step adds. Per-example gradients need BatchNorm on its
running statistics (eval mode), as Opacus also requires; the BN buffers a client sends are not privatised.

``dp_paper``: the TIP paper's "standard DP": the round's clipped training as usual, then N(0, σ²) once on
every parameter of the update, σ from docs/METHOD.md §3.5 (the same σ TIP splits over its channels).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from tipcore.defenses import calibration as privacy
from tipcore.defenses.base import DefenseDiagnostics, register
from tipcore.common.knobs import check, clip_knob, delta_knob, epsilon_knob, knob

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tipcore.federation.fl import ClientContext, SharedUpdate


@dataclass(frozen=True)
class DPConfig:
    clip: float = clip_knob()  # per-example L2 clip norm C
    noise_multiplier: float | None = knob(None, "Noise multiplier z", "noise std z·C on the sum of clipped "
                                          "per-example gradients (instead of calibrating from (ε, δ))", low=0.0,
                                          role="strength", log=True, noise_unit="multiplier", symbol="z")
    epsilon: float = epsilon_knob()
    delta: float = delta_knob()
    accountant: Literal["classic", "rdp"] = knob("classic", "Accountant", "how (ε, δ) becomes a noise multiplier")

    def __post_init__(self) -> None:
        check(self)

    def multiplier(self, steps: int) -> float:
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        if self.accountant == "rdp":
            return privacy.rdp_noise_multiplier(self.epsilon, self.delta, steps)
        return privacy.classic_noise_multiplier(self.epsilon, self.delta, steps)


def per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """∇θ CE(f(x_b), y_b) for every example b at once: tensors of shape [B, *param.shape]."""
    import torch
    from torch.func import functional_call, grad, vmap

    from tipcore.federation.fl import trainable_names

    names = trainable_names(model)
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xb[None],))
        return torch.nn.functional.cross_entropy(out, yb[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def clipped_sum(per_example: dict[str, torch.Tensor], clip: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Σ_b g_b · min(1, C / ‖g_b‖); also returns the per-example norms before clipping."""
    import torch

    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_example.values()))
    factors = torch.clamp(clip / (norms + 1e-6), max=1.0)
    summed = {n: torch.einsum("b,b...->...", factors, g) for n, g in per_example.items()}
    return summed, norms


def noisy_mean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float, z: float,
                        gen: torch.Generator, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """(clipped sum + N(0, (zC)²)) / B. B is the round's nominal batch size (as Opacus divides by its expected
    batch size), so every step's noise has std zC/B, a short last batch of an epoch included."""
    import torch

    summed, _ = clipped_sum(per_example_gradients(model, x, y), clip)
    batch = batch_size or x.shape[0]
    return {n: (s + z * clip * torch.randn(s.shape, generator=gen).to(s.device)) / batch for n, s in summed.items()}


@register("dp", DPConfig, "DP-SGD: per-example clipping + Gaussian noise (noise multiplier or (ε, δ))",
          label="DP-SGD")
class DifferentialPrivacy:
    def __init__(self, config: DPConfig | None = None) -> None:
        self.config = config or DPConfig()

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]:
        import torch

        cfg, rc = self.config, ctx.round
        z = cfg.multiplier(rc.steps)
        model = copy.deepcopy(ctx.global_model).eval()
        if rc.mode == "fedsgd":
            tensors = noisy_mean_gradient(model, ctx.x, ctx.y, cfg.clip, z, ctx.generator)
        else:  # DP-SGD replaces the round's local training: the same steps on the same batches, privatised
            start = {n: p.detach().clone() for n, p in model.named_parameters()}
            schedule = ctx.batches if ctx.batches is not None else (None,) * rc.steps
            if len(schedule) != rc.steps:
                raise ValueError(f"the client context lists {len(schedule)} mini-batches for {rc.steps} local steps")
            for idx in schedule:
                xb, yb = (ctx.x, ctx.y) if idx is None else (ctx.x[idx], ctx.y[idx])
                step = noisy_mean_gradient(model, xb, yb, cfg.clip, z, ctx.generator, rc.batch_size)
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in step:
                            p.sub_(step[n], alpha=rc.lr)
            tensors = {n: start[n] - p.detach() for n, p in model.named_parameters() if n in update.tensors}
        sigma = z * cfg.clip / rc.batch_size * (rc.lr if rc.mode == "fedavg" else 1.0)
        summary = {"noise_multiplier": z, "sigma_per_step": sigma, "epsilon": cfg.epsilon, "delta": cfg.delta,
                   "clip": cfg.clip}
        return update.with_tensors(tensors), DefenseDiagnostics(
            "dp", asdict(self.config), summary=summary,
            notes="per-example clipping, then Gaussian noise on the clipped sum; "
                  + ("z given directly" if cfg.noise_multiplier is not None else f"z from (ε, δ) by the {cfg.accountant} accountant"),
        )

    def describe(self) -> str:
        return ("Differential privacy (DP-SGD). Each example's gradient is clipped to norm C, the clipped "
                "gradients are summed and Gaussian noise of std z·C is added to every parameter before "
                "averaging. z comes from a privacy budget (ε, δ) or is set directly. A formal guarantee, "
                "paid for with noise on the whole model, which costs accuracy.")


@dataclass(frozen=True)
class DPPaperConfig:
    sigma: float | None = knob(None, "Noise std σ", "direct noise std on every parameter, in update units "
                               "(instead of calibrating from (ε, δ, C))", low=0.0, role="strength",
                               grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), log=True, unit="update units",
                               noise_unit="update", symbol="σ")
    epsilon: float = epsilon_knob()
    delta: float = delta_knob()
    clip: float = clip_knob()  # C the calibration assumes: set the round's clip to the same value

    def __post_init__(self) -> None:
        check(self)


@register("dp_paper", DPPaperConfig, "the TIP paper's DP: N(0, σ²) once on every parameter after clipped training",
          label="DP (paper)")
class PaperDP:
    def __init__(self, config: DPPaperConfig | None = None) -> None:
        self.config = config or DPPaperConfig()

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]:
        import torch

        cfg = self.config
        sigma = cfg.sigma if cfg.sigma is not None else privacy.update_sigma(ctx.round, cfg.epsilon, cfg.delta, cfg.clip)
        tensors = {n: t + sigma * torch.randn(t.shape, generator=ctx.generator).to(t.device) for n, t in update.tensors.items()}
        notes = "Gaussian noise on every parameter (conv, BN affine, fc) of the update"
        if ctx.round.clip is None:
            notes += "; the round ran without clipping, so the calibration's sensitivity assumption does not hold"
        return update.with_tensors(tensors), DefenseDiagnostics(
            "dp_paper", asdict(cfg), summary={"sigma": sigma, "epsilon": cfg.epsilon, "delta": cfg.delta}, notes=notes
        )

    def describe(self) -> str:
        return ("The TIP paper's 'standard DP' baseline. The client trains with its gradients clipped to "
                "norm C, then adds Gaussian noise of std σ = T·η·(C/B)·sqrt(2 ln(1.25/δ))/ε once to every "
                "parameter it uploads. The same σ that TIP concentrates on a few high-frequency channels is "
                "here spread over the whole model.")
