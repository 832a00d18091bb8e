"""Inverting Gradients (Geiping et al., NeurIPS 2020) as a configuration of the attack template.

Cosine gradient matching + total variation, signed Adam steps, a box constraint to [0, 1], a step-decayed
learning rate, and ``trials`` independent starts of which the lowest final loss wins. Images live in
[0, 1]; the start 0.5 + 0.25·N(0, 1) is IG's randn start in the coordinates of a normalised dataset with
mean 0.5 and std 0.25. The preset ``paper`` is the TIP paper's protocol (10,000 iterations, lr 0.004,
decay 0.5): ``--attack-preset paper`` on the CLI.
On a FedAvg update the dummy batch is pushed through the client's local SGD steps, differentiably, and
θ_global − θ_T is matched (``objective`` auto or unrolled: invertinggradients' FedAvgReconstructor);
``objective=gradient`` keeps the one-step stand-in the TIP authors' attack uses.
Adaptive variants: ``ig_drop``, ``ig_lowpass``, ``ig_noise_aware``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tipcore.attacks.base import ATTACK_PRESETS, OBJECTIVES, register, register_adaptive_variants
from tipcore.attacks.matching import MatchOptions
from tipcore.attacks.template import GradientInversion, Recipe


@dataclass(frozen=True)
class IGConfig(MatchOptions):
    iterations: int = 1000
    lr: float = 0.1
    tv: float = 1e-4
    trials: int = 1  # independent starts; the lowest final loss wins
    signed: bool = True
    boxed: bool = True
    lr_decay: bool = True  # MultiStepLR at 3/8, 5/8 and 7/8 of the iterations
    decay_gamma: float = 0.1  # IG's original; the TIP paper used 0.5
    labels: Literal["auto", "known", "infer"] = "auto"  # auto: the shared labels if any, else iDLG's rule
    max_restarts: int = 3
    explode_factor: float = 1e3
    objective: str = "auto"  # FedAvg: auto/unrolled replays the client's local steps; gradient: one-step stand-in

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        if not 1 <= self.iterations <= 100_000:
            raise ValueError(f"iterations must be in [1, 100000], got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.tv >= 0:
            raise ValueError(f"tv must be >= 0, got {self.tv}")
        if not 1 <= self.trials <= 100:
            raise ValueError(f"trials must be in [1, 100], got {self.trials}")
        if not 0 < self.decay_gamma <= 1:
            raise ValueError(f"decay_gamma must be in (0, 1], got {self.decay_gamma}")
        if self.labels not in ("auto", "known", "infer"):
            raise ValueError(f"labels must be auto, known or infer, got '{self.labels}'")
        if not 0 <= self.max_restarts <= 100:
            raise ValueError(f"max_restarts must be in [0, 100], got {self.max_restarts}")
        if not self.explode_factor > 1:
            raise ValueError(f"explode_factor must be > 1, got {self.explode_factor}")


# The TIP paper's attack protocol (arXiv 2602.11633, its Inverting Gradients settings): a named preset. Its
# FedAvg attack matches the update as one gradient (the stand-in), so the preset does too.
IG_PAPER_PRESET = {"iterations": 10_000, "lr": 0.004, "decay_gamma": 0.5, "tv": 1e-4, "trials": 1,
                   "objective": "gradient"}


@register("ig", IGConfig, "Inverting Gradients: 1 − cosine + TV, signed Adam, box [0, 1], step-decayed lr")
class InvertingGradients(GradientInversion):
    def __init__(self, config: IGConfig | None = None) -> None:
        self.config = config or IGConfig()

    def recipe(self) -> Recipe:
        c = self.config
        return Recipe(distance="cosine", optimiser="adam", labels=c.labels, init="centred", iterations=c.iterations,
                      lr=c.lr, tv=c.tv, trials=c.trials, max_restarts=c.max_restarts,
                      explode_factor=c.explode_factor, signed=c.signed, boxed=c.boxed, lr_decay=c.lr_decay,
                      decay_gamma=c.decay_gamma, objective=c.objective,
                      match=MatchOptions(c.match, c.assumed_cutoff, c.assumed_ratio, c.min_separation, c.min_contrast,
                                         c.residual_floor))

    def describe(self) -> str:
        return ("Inverting Gradients (Geiping et al., 2020). Matches the direction of the shared update "
                "(cosine distance, so its scale does not matter) plus a total-variation prior that favours "
                "natural images, with signed Adam steps kept inside the valid pixel range. It works on deep "
                "ReLU networks such as ResNet-18 and on multi-step FedAvg updates; the TIP paper attacks with it.")


register_adaptive_variants("ig", InvertingGradients, IGConfig)
ATTACK_PRESETS["ig"] = {"paper": IG_PAPER_PRESET}
