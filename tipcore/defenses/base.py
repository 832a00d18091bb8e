"""One interface for every defense: turn the update a client is about to send into the one it sends.

``protect(update, ctx)`` sees the client's private context (model, batch, generator) and returns the
defended ``SharedUpdate`` plus diagnostics the app draws and ``defense.json`` records. A defense whose work
has client-side stages worth reporting on their own (TIP's Grad-CAM pass) also offers ``protect_stages``, a
generator that yields each stage's name before running it; ``protect_in_stages`` gives every defense that
form, so the pipeline never asks which defense it holds.

Torch-free at import (so the CLI's help and the app's pickers need no torch): tensors are only touched
inside the defenses' methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generator, Mapping, Protocol

import numpy as np

from tipcore.common import knobs
from tipcore.common.config import create_registered

if TYPE_CHECKING:
    from tipcore.federation.fl import ClientContext, RoundConfig, SharedUpdate

BASELINE = "none"  # the undefended update every comparison starts from


@dataclass(frozen=True)
class LayerDiagnostics:
    name: str
    kernel_size: tuple[int, int]
    alpha: np.ndarray  # (n_cam, C_out): signed Grad-CAM weight per Grad-CAM sample
    selected: tuple[tuple[int, ...], ...]  # chosen output channels, ascending, per Grad-CAM sample
    cutoff: float
    beta: float
    mask: np.ndarray  # (kH, kW) 0/1: the noised bins of the centred spectrum
    effective_std: float  # per-element std of the noise on a selected kernel
    noise_energy: float  # Σ ΔW² over the layer (all samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kernel_size": list(self.kernel_size), "alpha": self.alpha.tolist(),
            "selected": [list(s) for s in self.selected], "cutoff": self.cutoff, "beta": self.beta,
            "mask": self.mask.astype(int).tolist(), "effective_std": self.effective_std,
            "noise_energy": self.noise_energy,
        }


@dataclass(frozen=True)
class DefenseDiagnostics:
    defense: str
    config: Mapping[str, Any] = field(default_factory=dict)
    layers: tuple[LayerDiagnostics, ...] = ()
    summary: Mapping[str, float] = field(default_factory=dict)  # e.g. sigma, beta, pruned fraction
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "defense": self.defense, "config": dict(self.config), "summary": dict(self.summary),
            "notes": self.notes, "layers": [layer.as_dict() for layer in self.layers],
        }


class Defense(Protocol):
    name: ClassVar[str]

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]: ...

    def describe(self) -> str: ...


DefenseStages = Generator[str, None, "tuple[SharedUpdate, DefenseDiagnostics]"]


def protect_in_stages(defense: Defense, update: SharedUpdate, ctx: ClientContext) -> DefenseStages:
    """The defense as named stages: yields each stage's name before it runs (so a caller can report it and
    stop between stages), returns what ``protect`` returns. A defense without ``protect_stages`` is one
    stage, "defense"."""
    staged = getattr(defense, "protect_stages", None)
    if staged is not None:
        return (yield from staged(update, ctx))
    yield "defense"
    return defense.protect(update, ctx)


def check_model(defense: Defense, model: Any) -> None:
    """Refuse, before the client's round, options that do not fit the model (TIP's layer names): a defense
    with a ``check_model(model)`` method raises a one-line ValueError there, so a typo is answered before
    the round and Grad-CAM run, not after them."""
    check = getattr(defense, "check_model", None)
    if check is not None:
        check(model)


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense. What it takes (budget, clip, a strength to sweep) is read from its config's
    knobs (``tipcore.common.knobs``), so registering is all a new defense has to do."""

    name: str
    config_cls: type
    factory: Callable[[Any], Defense]
    summary: str
    label: str  # display name, e.g. "TIP, random channels"
    sweep_grid: tuple[Any, ...] | None = None  # overrides the strength knob's grid for this defense

    @property
    def uses_budget(self) -> bool:
        """Takes (ε, δ), so a comparison can hand every defense the same budget."""
        return bool(knobs.with_role(self.config_cls, "budget"))

    @property
    def takes_clip(self) -> bool:
        """Its noise is calibrated for (or applied with) the round's clip norm C."""
        return bool(knobs.with_role(self.config_cls, "clip"))

    def strength(self) -> tuple[str, tuple[Any, ...]] | None:
        """(knob, default strengths) a sweep visits for this defense, or None if it has no strength axis. The
        values have the knob's declared type; a noise knob's are unit-free relative strengths."""
        found = knobs.strength(self.config_cls)
        if found is None:
            return None
        name, knob = found
        grid = self.sweep_grid if self.sweep_grid is not None else knob.grid
        return name, tuple(knobs.coerce(self.config_cls, name, v) for v in grid)

    def noise_knob(self) -> tuple[str, knobs.Knob] | None:
        """The knob that sets this defense's noise scale, if it adds noise. Such a defense reports the value it
        ran with under the knob's own name in its diagnostics summary (calibrated or given)."""
        return knobs.noise(self.config_cls)

    def relative_noise(self, diagnostics: DefenseDiagnostics, round_cfg: RoundConfig) -> float | None:
        """The unit-free noise strength this defense ran with in this round (``tipcore.defenses.calibration.relative_noise``),
        read from what it reported; None for a defense that adds no noise (or a round without clipping)."""
        from tipcore.defenses import calibration as privacy

        found = self.noise_knob()
        if found is None or round_cfg.clip is None:
            return None
        name, knob = found
        value = diagnostics.summary.get(name)
        return None if value is None else privacy.relative_noise(knob.noise_unit, float(value), round_cfg)


DEFENSES: dict[str, DefenseSpec] = {}


def register(name: str, config_cls: type, summary: str, *, label: str | None = None,
             sweep_grid: tuple[Any, ...] | None = None) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        cls.name = name
        DEFENSES[name] = DefenseSpec(name, config_cls, cls, summary, label or name, sweep_grid)
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a defense (tests that register a throwaway one clean up with this)."""
    DEFENSES.pop(name, None)


def create(name: str, options: Mapping[str, Any] | None = None) -> Defense:
    return create_registered(DEFENSES, "defense", name, options)


def describe(name: str) -> str:
    return create(name).describe()


def takes_clip(name: str) -> bool:
    """Whether the defense's noise is calibrated for (or applied with) a clip norm C."""
    return DEFENSES[name].takes_clip


def bind_round(name: str, options: Mapping[str, Any] | None, round_cfg: RoundConfig) -> dict[str, Any]:
    """The options a defense runs with in this round: a clip-calibrated defense takes the round's own clip.

    Calibrating for one C while the update was clipped to another (or not clipped at all) silently gives
    the wrong noise scale, so both mistakes are refused with a message that says what to change.
    """
    if name not in DEFENSES:
        raise ValueError(f"unknown defense '{name}'; choose one of: {', '.join(DEFENSES)}")
    options = dict(options or {})
    if not takes_clip(name):
        return options
    if round_cfg.clip is None:
        raise ValueError(f"defense '{name}' calibrates its noise for updates clipped to norm C, but the round "
                         "does not clip: give the round a clip norm C (the paper's is 5)")
    given = options.get("clip")
    if given is not None and float(given) != float(round_cfg.clip):
        raise ValueError(f"defense '{name}' option clip={given} differs from the round's clip {round_cfg.clip}: "
                         "they must be the same C (leave the defense's clip out; it follows the round)")
    options["clip"] = float(round_cfg.clip)
    return options
