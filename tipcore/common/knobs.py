"""What a component's options mean, declared once on its config dataclass.

A defense or attack config declares each user-facing option with ``knob(...)``: its label, help text, range,
unit and role, and the short symbol a chart writes for it where it has one (β, σ, z). Everything that offers or
checks options is generated from that one declaration:

- range and type checks (``check``, called from the config's ``__post_init__``),
- the CLI's option flags and their help (``tipcore.cli``),
- the app's widgets for a defense it has no hand-made controls for (``app.controls``),
- budget and clip injection (role ``budget`` / ``clip``: ``tipcore.defenses.bind_round``, ``uses_budget``),
- the sweep's default grid (role ``strength`` with a ``grid``: ``tipcore.studies.sweep.default_grid``), for integer,
  float and choice knobs alike,
- the app's chart axes, legends and tables (``symbol``, else the knob's name),
- the noise-scale axis of every comparison (``noise_unit``: what the knob's value means as noise, so a study
  can give the attacked update and every client of a utility run exactly the same relative noise).

So a new defense is one file: a config with knobs and a class registered with ``tipcore.defenses.register``.
No code anywhere branches on a knob's or a component's name: it reads these declarations.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

ROLES = ("", "budget", "clip", "strength")
# What a noise knob's value means (``tipcore.defenses.calibration.relative_noise`` turns it into a unit-free strength):
# "update": the per-element standard deviation of noise added once to the update, in the update's own units
#   (gradient units in FedSGD, parameter units in FedAvg), as TIP's β and the paper's DP σ;
# "multiplier": a DP-SGD noise multiplier z (std z·C on each local step's sum of per-example clipped gradients).
NOISE_UNITS = ("", "update", "multiplier")


@dataclass(frozen=True)
class Knob:
    label: str  # short display name, e.g. "Channel ratio p"
    help: str  # one sentence: what it does, in the user's terms
    low: float | None = None  # inclusive lower bound (exclusive with ``low_open``)
    high: float | None = None  # inclusive upper bound
    low_open: bool = False  # the bound itself is not allowed (e.g. ε > 0)
    high_open: bool = False  # likewise for the upper bound (e.g. δ < 1)
    unit: str = ""
    role: str = ""  # "budget" (ε, δ), "clip" (the round's C), "strength" (the knob a sweep turns), or ""
    # Values a sweep visits by default (role "strength"), of the knob's own type (int, float or a choice);
    # for a noise knob (``noise_unit`` set) they are unit-free relative strengths, converted per round.
    grid: tuple[Any, ...] = ()
    log: bool = False  # spans decades: plots and sliders on a log axis
    implies: tuple[tuple[str, Any], ...] = ()  # other options this one switches on, e.g. beta -> noise=direct
    noise_unit: str = ""  # "" (not a noise scale), "update" or "multiplier": see NOISE_UNITS
    symbol: str = ""  # what a chart's axis or legend writes for it, e.g. "β"; "": the knob's name

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"knob role must be one of {ROLES}, got '{self.role}'")
        if self.grid and self.role != "strength":
            raise ValueError("only a strength knob has a sweep grid")
        if self.noise_unit not in NOISE_UNITS:
            raise ValueError(f"knob noise_unit must be one of {NOISE_UNITS}, got '{self.noise_unit}'")
        if self.noise_unit and self.role != "strength":
            raise ValueError("only a strength knob can be a noise scale")

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def knob(default: Any, label: str, help: str, **meta: Any) -> Any:
    """A dataclass field with its ``Knob`` in the metadata (use in place of a plain default)."""
    return dataclasses.field(default=default, metadata={"knob": Knob(label, help, **meta)})


def knobs(config_cls: type) -> dict[str, Knob]:
    """The declared knobs of a config class, in field order."""
    return {f.name: f.metadata["knob"] for f in dataclasses.fields(config_cls) if "knob" in f.metadata}


def field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def value_kind(hint: Any) -> tuple[str, tuple[Any, ...], bool]:
    """(kind, choices, optional) of a field's type: kind is int, float, bool, str or choice."""
    optional = False
    args = typing.get_args(hint)
    if args and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    if typing.get_origin(hint) is Literal:
        return "choice", typing.get_args(hint), optional
    for kind in (bool, int, float, str):
        if hint is kind:
            return kind.__name__, (), optional
    return "other", (), optional


def check(config: Any) -> None:
    """Type and range of every knob of ``config``; raises a one-line ValueError naming the option."""
    hints = field_types(type(config))
    for name, k in knobs(type(config)).items():
        value = getattr(config, name)
        kind, choices, optional = value_kind(hints[name])
        if value is None:
            if not optional:
                raise ValueError(f"{name} is required")
            continue
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if kind == "choice" and value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if kind in ("int", "float"):
            too_low = k.low is not None and (value <= k.low if k.low_open else value < k.low)
            too_high = k.high is not None and (value >= k.high if k.high_open else value > k.high)
            if too_low or too_high:
                raise ValueError(f"{name} must be {_in(k)}, got {value!r}")


def _in(k: Knob) -> str:
    text = k.range_text()
    return f"in {text}" if text.startswith(("[", "(")) else text


def strength(config_cls: type) -> tuple[str, Knob] | None:
    """The knob a sweep turns for this config, if it declares one with a grid."""
    for name, k in knobs(config_cls).items():
        if k.role == "strength" and k.grid:
            return name, k
    return None


def noise(config_cls: type) -> tuple[str, Knob] | None:
    """The knob that sets this config's noise scale (``noise_unit`` declared), if any."""
    for name, k in knobs(config_cls).items():
        if k.noise_unit:
            return name, k
    return None


def coerce(config_cls: type, name: str, value: Any) -> Any:
    """``value`` as the declared type of knob ``name`` (a grid read from JSON or CSV holds 3.0 for an int knob
    and "0.5" for a float one): whole numbers for int knobs, numbers for float knobs, a listed choice."""
    kind, choices, _optional = value_kind(field_types(config_cls)[name])
    if kind == "int":
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(number)
    if kind == "float":
        return float(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind == "choice":
        for choice in choices:
            if value == choice or str(value) == str(choice):
                return choice
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def with_role(config_cls: type, role: str) -> list[str]:
    return [name for name, k in knobs(config_cls).items() if k.role == role]


def table(config_cls: type) -> list[dict[str, Any]]:
    """The knobs as plain data (for a UI that draws one widget per knob)."""
    hints = field_types(config_cls)
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    rows = []
    for name, k in knobs(config_cls).items():
        kind, choices, optional = value_kind(hints[name])
        rows.append({"name": name, "label": k.label, "help": k.help, "kind": kind, "choices": list(choices),
                     "optional": optional, "default": defaults[name], "low": k.low, "high": k.high,
                     "low_open": k.low_open, "high_open": k.high_open, "unit": k.unit, "role": k.role,
                     "log": k.log, "implies": dict(k.implies), "range": k.range_text(),
                     "noise_unit": k.noise_unit, "symbol": k.symbol or name})
    return rows


def describe(config_cls: type, name: str) -> str:
    """'Channel ratio p in [0, 1]: fraction of ...' — for help texts."""
    k = knobs(config_cls)[name]
    rng = k.range_text()
    unit = f" {k.unit}" if k.unit else ""
    return f"{k.label}{' ' + _in(k) if rng else ''}{unit}: {k.help}"


# The knobs every budgeted defense shares, declared once so they read the same everywhere.
def epsilon_knob(default: float = 5.0) -> Any:
    return knob(default, "Privacy budget ε", "smaller ε means more noise (shared by every budgeted defense of a "
                "comparison)", low=0.0, low_open=True, role="budget", log=True, symbol="ε")


def delta_knob(default: float = 1e-5) -> Any:
    return knob(default, "δ", "the δ of (ε, δ)", low=0.0, low_open=True, high=1.0, high_open=True, role="budget",
                log=True)


def clip_knob(default: float = 5.0) -> Any:
    return knob(default, "Clip norm C", "the clip norm the noise is calibrated for; it follows the round's clip",
                low=0.0, low_open=True, role="clip")

