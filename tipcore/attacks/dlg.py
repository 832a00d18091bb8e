"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020) as configurations of the attack template.

Both match gradients in squared L2 distance with L-BFGS. DLG optimises the dummy image and a soft dummy
label jointly; iDLG first reads the label off the sign structure of the last layer's gradient, then
optimises the image alone. When the threat model tells the server the labels (``labels_known``), both use
them and optimise the image alone. On a FedAvg update both replay the client's local steps on the dummy
batch (``objective``: auto). One "step" is one L-BFGS outer step (up to ``evals_per_step`` closure
evaluations); ``AttackResult.evaluations`` counts the closures. Each has adaptive variants
(``idlg_drop``, ``idlg_lowpass``, ``idlg_noise_aware``, ...) that match only what they trust.
"""

from __future__ import annotations

from dataclasses import dataclass

from tipcore.attacks.base import OBJECTIVES, register, register_adaptive_variants
from tipcore.attacks.matching import MatchOptions
from tipcore.attacks.template import GradientInversion, Recipe


@dataclass(frozen=True)
class DLGConfig(MatchOptions):
    iterations: int = 300  # L-BFGS outer steps
    lr: float = 1.0
    evals_per_step: int = 20  # L-BFGS max_iter: closure evaluations allowed per outer step
    history_size: int = 100
    max_restarts: int = 3  # restarts of a diverging run, each from fresh random numbers
    explode_factor: float = 1e4  # loss above this multiple of the first loss counts as divergence
    objective: str = "auto"  # FedAvg: auto/unrolled replays the client's local steps; gradient: one-step stand-in

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        if not 1 <= self.iterations <= 100_000:
            raise ValueError(f"iterations must be in [1, 100000], got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 1 <= self.evals_per_step <= 1000:
            raise ValueError(f"evals_per_step must be in [1, 1000], got {self.evals_per_step}")
        if not 1 <= self.history_size <= 1000:
            raise ValueError(f"history_size must be in [1, 1000], got {self.history_size}")
        if not 0 <= self.max_restarts <= 100:
            raise ValueError(f"max_restarts must be in [0, 100], got {self.max_restarts}")
        if not self.explode_factor > 1:
            raise ValueError(f"explode_factor must be > 1, got {self.explode_factor}")


class _LBFGSMatching(GradientInversion):
    label_strategy = "soft"

    def __init__(self, config: DLGConfig | None = None) -> None:
        self.config = config or DLGConfig()

    def recipe(self) -> Recipe:
        c = self.config
        return Recipe(distance="l2", optimiser="lbfgs", labels=self.label_strategy, init="randn",
                      iterations=c.iterations, lr=c.lr, max_restarts=c.max_restarts, explode_factor=c.explode_factor,
                      evals_per_step=c.evals_per_step, history_size=c.history_size, objective=c.objective,
                      match=MatchOptions(c.match, c.assumed_cutoff, c.assumed_ratio, c.min_separation, c.min_contrast,
                                         c.residual_floor))


@register("dlg", DLGConfig, "DLG: L2 gradient matching, L-BFGS, image and soft label optimised jointly")
class DLG(_LBFGSMatching):
    label_strategy = "soft"

    def describe(self) -> str:
        return ("Deep Leakage from Gradients (Zhu et al., 2019). The server starts from random noise and a "
                "random soft label, and moves both with L-BFGS until the gradient they produce matches the "
                "shared one in squared L2 distance (a server told the labels optimises the image alone). "
                "Strong on small sigmoid networks such as LeNet; fragile "
                "on deep ReLU networks, and sometimes diverges (then it is restarted).")


@register("idlg", DLGConfig, "iDLG: label read off the last layer's gradient signs, then DLG on the image")
class IDLG(_LBFGSMatching):
    label_strategy = "auto"

    def describe(self) -> str:
        return ("Improved DLG (Zhao et al., 2020). With cross-entropy and non-negative features, the only "
                "negative row of the last layer's weight gradient belongs to the true label, so the label is "
                "read off exactly (or taken as given when the server is told the labels); L-BFGS then matches "
                "gradients over the image alone, which converges more reliably than DLG.")


register_adaptive_variants("dlg", DLG, DLGConfig)
register_adaptive_variants("idlg", IDLG, DLGConfig)
