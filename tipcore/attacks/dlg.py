"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020) as configurations of the attack template.

Both match gradients in squared L2 distance with L-BFGS. DLG optimises the dummy image and a soft dummy
label jointly; iDLG first reads the label off the sign structure of the last layer's gradient, then
optimises the image alone. When the threat model tells the server the labels (``labels_known``), both use
them and optimise the image alone. On a FedAvg update both replay the client's local steps on the dummy
batch (``objective``: auto). One "step" is one L-BFGS outer step (up to ``evals_per_step`` closure
evaluations); ``AttackResult.evaluations`` counts the closures. Each has an adaptive variant per
registered matcher (``idlg_drop``, ``dlg_lowpass``, ...) that matches only what it trusts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tipcore.attacks.recipe import AttackConfig, GradientInversion, Recipe, matcher_fields
from tipcore.attacks.registry import register_attack
from tipcore.common.knobs import knob


@dataclass(frozen=True)
class DLGConfig(AttackConfig):
    iterations: int = knob(300, "Iterations", "L-BFGS outer steps", low=1, high=100_000, unit="steps")
    lr: float = knob(1.0, "Learning rate", "L-BFGS step size", low=0.0, low_open=True)
    evals_per_step: int = knob(20, "Evaluations per step", "L-BFGS max_iter: closure evaluations allowed per "
                               "outer step", low=1, high=1000)
    history_size: int = knob(100, "History", "L-BFGS history size", low=1, high=1000)
    max_restarts: int = knob(3, "Restarts", "restarts of a diverging run, each from fresh random numbers", low=0,
                             high=100)
    explode_factor: float = knob(1e4, "Divergence factor", "loss above this multiple of the first loss counts as "
                                 "divergence", low=1.0, low_open=True)
    objective: Literal["auto", "gradient", "unrolled"] = knob(
        "auto", "FedAvg objective", "auto/unrolled: replay the client's local SGD steps on the dummy data and match "
        "θ_g − θ; gradient: match the update as one gradient (the TIP paper's stand-in)")


class _LBFGSMatching(GradientInversion):
    label_strategy = "soft"

    def __init__(self, config: DLGConfig | None = None) -> None:
        self.config = config or DLGConfig()

    def recipe(self) -> Recipe:
        c = self.config
        return Recipe(distance="l2", optimiser="lbfgs", labels=self.label_strategy, init="randn",
                      iterations=c.iterations, lr=c.lr, max_restarts=c.max_restarts, explode_factor=c.explode_factor,
                      evals_per_step=c.evals_per_step, history_size=c.history_size, objective=c.objective,
                      **matcher_fields(c))


@register_attack("dlg", DLGConfig, "DLG: L2 gradient matching, L-BFGS, image and soft label optimised jointly",
                 label="DLG")
class DLG(_LBFGSMatching):
    label_strategy = "soft"

    def describe(self) -> str:
        return ("Deep Leakage from Gradients (Zhu et al., 2019). The server starts from random noise and a "
                "random soft label, and moves both with L-BFGS until the gradient they produce matches the "
                "shared one in squared L2 distance (a server told the labels optimises the image alone). "
                "Strong on small sigmoid networks such as LeNet; fragile "
                "on deep ReLU networks, and sometimes diverges (then it is restarted).")


@register_attack("idlg", DLGConfig, "iDLG: label read off the last layer's gradient signs, then DLG on the image",
                 label="iDLG")
class IDLG(_LBFGSMatching):
    label_strategy = "auto"

    def describe(self) -> str:
        return ("Improved DLG (Zhao et al., 2020). With cross-entropy and non-negative features, the only "
                "negative row of the last layer's weight gradient belongs to the true label, so the label is "
                "read off exactly (or taken as given when the server is told the labels); L-BFGS then matches "
                "gradients over the image alone, which converges more reliably than DLG.")
