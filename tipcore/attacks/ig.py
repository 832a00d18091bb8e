"""Inverting Gradients (Geiping et al., NeurIPS 2020) as a configuration of the attack template.

Cosine gradient matching + total variation, signed Adam steps, a box constraint to [0, 1], a step-decayed
learning rate, and ``trials`` independent starts of which the lowest final loss wins. Images live in
[0, 1]; the start 0.5 + 0.25·N(0, 1) is IG's randn start in the coordinates of a normalised dataset with
mean 0.5 and std 0.25. The preset ``paper`` is the TIP paper's protocol (10,000 iterations, lr 0.004,
decay 0.5): ``--attack-preset paper`` on the CLI.
On a FedAvg update the dummy batch is pushed through the client's local SGD steps, differentiably, and
θ_global − θ_T is matched (``objective`` auto or unrolled: invertinggradients' FedAvgReconstructor);
``objective=gradient`` keeps the one-step stand-in the TIP authors' attack uses.
Adaptive variants: one per registered matcher, ``ig_drop``, ``ig_lowpass``, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tipcore.attacks.recipe import AttackConfig, GradientInversion, Recipe, matcher_fields
from tipcore.attacks.registry import ATTACK_PRESETS, register_attack
from tipcore.common.knobs import knob


@dataclass(frozen=True)
class IGConfig(AttackConfig):
    iterations: int = knob(1000, "Iterations", "signed-Adam steps", low=1, high=100_000, unit="steps")
    lr: float = knob(0.1, "Learning rate", "Adam step size (decayed in steps)", low=0.0, low_open=True,
                     log=True)
    tv: float = knob(1e-4, "TV weight", "weight of the total-variation prior", low=0.0, log=True)
    trials: int = knob(1, "Trials", "independent starts; the lowest final loss wins", low=1, high=100)
    signed: bool = knob(True, "Signed gradients", "Adam on the sign of the gradient (IG's choice)")
    boxed: bool = knob(True, "Box [0, 1]", "clamp the image to [0, 1] after every step")
    lr_decay: bool = knob(True, "lr decay", "MultiStepLR at 3/8, 5/8 and 7/8 of the iterations")
    decay_gamma: float = knob(0.1, "Decay factor", "lr factor at each milestone (IG's 0.1; the TIP paper 0.5)",
                              low=0.0, low_open=True, high=1.0)
    labels: Literal["auto", "known", "infer"] = knob("auto", "Labels", "auto: the shared labels if any, else "
                                                     "iDLG's rule")
    max_restarts: int = knob(3, "Restarts", "restarts of a diverging run", low=0, high=100)
    explode_factor: float = knob(1e3, "Divergence factor", "loss above this multiple of the first counts as "
                                 "divergence", low=1.0, low_open=True)
    objective: Literal["auto", "gradient", "unrolled"] = knob(
        "auto", "FedAvg objective", "auto/unrolled: replay the client's local SGD steps on the dummy data and match "
        "θ_g − θ; gradient: match the update as one gradient (the TIP paper's stand-in)")


# The TIP paper's attack protocol (arXiv 2602.11633, its Inverting Gradients settings): a named preset. Its
# FedAvg attack matches the update as one gradient (the stand-in), so the preset does too.
IG_PAPER_PRESET = {"iterations": 10_000, "lr": 0.004, "decay_gamma": 0.5, "tv": 1e-4, "trials": 1,
                   "objective": "gradient"}


@register_attack("ig", IGConfig, "Inverting Gradients: 1 − cosine + TV, signed Adam, box [0, 1], step-decayed lr",
                 label="Inverting Gradients")
class InvertingGradients(GradientInversion):
    def __init__(self, config: IGConfig | None = None) -> None:
        self.config = config or IGConfig()

    def recipe(self) -> Recipe:
        c = self.config
        return Recipe(distance="cosine", optimiser="adam", labels=c.labels, init="centred", iterations=c.iterations,
                      lr=c.lr, tv=c.tv, trials=c.trials, max_restarts=c.max_restarts,
                      explode_factor=c.explode_factor, signed=c.signed, boxed=c.boxed, lr_decay=c.lr_decay,
                      decay_gamma=c.decay_gamma, objective=c.objective, **matcher_fields(c))

    def describe(self) -> str:
        return ("Inverting Gradients (Geiping et al., 2020). Matches the direction of the shared update "
                "(cosine distance, so its scale does not matter) plus a total-variation prior that favours "
                "natural images, with signed Adam steps kept inside the valid pixel range. It works on deep "
                "ReLU networks such as ResNet-18 and on multi-step FedAvg updates; the TIP paper attacks with it.")


ATTACK_PRESETS["ig"] = {"paper": IG_PAPER_PRESET}
