"""What an optimisation attack is, declared without torch: its config's ``match`` knob, its ``Recipe``, and
``GradientInversion``, the class every registered attack is; the engine that runs a recipe
(``tipcore.attacks.template``) is imported when an attack runs.

Every gradient-inversion attack of the project is a configuration of one template (the way breaching
composes its attacks from lookups): DLG is L2 + L-BFGS + a soft learnable label; iDLG is the same with the
label read off the fc gradient; Inverting Gradients is cosine + total variation + signed Adam in a box. Each
runs naive (matcher ``all``) or adaptive (any registered matcher, ``tipcore.attacks.matchers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tipcore.attacks.registry import NAIVE, check_match, matcher_config
from tipcore.common.knobs import check, knob
from tipcore.common.progress import StopHook, never_stop

if TYPE_CHECKING:
    import torch

    from tipcore.attacks.base import AttackStream
    from tipcore.federation.fl import ServerView, SharedUpdate

Distance = Literal["l2", "cosine"]
# What the attack does about labels: "soft" learns them jointly (DLG) and "auto" reads them off the fc
# gradient (iDLG), each unless the threat model tells the server the labels, which are then used as given;
# "known" requires them; "infer" reads the fc gradient even when told (an explicit experimenter's choice).
LabelStrategy = Literal["soft", "infer", "known", "auto"]
Objective = Literal["auto", "gradient", "unrolled"]
Init = Literal["randn", "centred"]


@dataclass(frozen=True)
class AttackConfig:
    """What every attack config has: the matcher it runs with. A ``{base}_{matcher}`` attack's config adds
    that matcher's knobs and defaults ``match`` to it (``tipcore.attacks.registry``)."""

    match: str = knob(NAIVE, "Matcher", "what the attacker matches of the update: all (naive) or a registered "
                      "matcher, each of which is also its own attack {attack}_{matcher} (see --attack)")

    def __post_init__(self) -> None:
        check(self)  # every knob of the attack's config, subclasses' and the matcher's included
        check_match(self)


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one optimisation attack; the registered configs translate into this."""

    distance: Distance
    optimiser: Literal["lbfgs", "adam"]
    labels: LabelStrategy
    init: Init
    iterations: int
    lr: float
    tv: float = 0.0
    trials: int = 1
    max_restarts: int = 3
    explode_factor: float = 1e4
    evals_per_step: int = 20  # L-BFGS
    history_size: int = 100  # L-BFGS
    signed: bool = True  # Adam
    boxed: bool = True  # Adam
    lr_decay: bool = True  # Adam
    decay_gamma: float = 0.1  # Adam
    matcher: str = NAIVE  # a registered matcher (tipcore.attacks.registry.MATCHERS)
    matcher_config: Any = None  # its config (None: its defaults)
    objective: Objective = "auto"  # FedAvg: unroll the client's local steps (auto) or the one-step stand-in


def matcher_fields(config: AttackConfig) -> dict[str, Any]:
    """The ``Recipe`` fields of an attack config's matcher: its name and its config, built by name."""
    return {"matcher": config.match, "matcher_config": matcher_config(config.match, config)}


class GradientInversion:
    """The template: one loop for every optimisation attack. Subclasses supply ``recipe()``."""

    name = "gradient-inversion"

    def recipe(self) -> Recipe:  # pragma: no cover - every registered attack overrides it
        raise NotImplementedError

    def reconstruct(self, view: ServerView, update: SharedUpdate, *, generator: torch.Generator,
                    should_stop: StopHook = never_stop, report_every: int = 10) -> AttackStream:
        from tipcore.attacks.template import run_recipe

        return (yield from run_recipe(self.recipe(), view, update, generator=generator, should_stop=should_stop,
                                      report_every=report_every))

    def describe(self) -> str:  # pragma: no cover - every registered attack overrides it
        raise NotImplementedError
