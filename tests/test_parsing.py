"""The one text parser (tipcore.common.parsing): typed by a config's field annotations, strict, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from tipcore.common.knobs import knob
from tipcore.common.parsing import describe, parse_assignments, parse_field, parse_typed


@dataclass(frozen=True)
class Knobs:
    ratio: float = 0.1
    k: int | None = None
    signed: bool = True
    noise: Literal["calibrated", "direct"] = "calibrated"
    layers: str = "all"
    names: tuple[str, ...] = ()
    size: tuple[int, int] = (32, 32)
    cutoff: float = knob(0.5, "Cutoff", "a bounded knob", low=0.0, high=1.0)
    epsilon: float = knob(5.0, "ε", "an open bound", low=0.0, low_open=True)


@pytest.mark.parametrize("name, text, value", [
    ("ratio", "0.3", 0.3), ("ratio", " 1e-3 ", 1e-3), ("ratio", "2", 2.0),
    ("k", "3", 3), ("k", "-2", -2), ("k", "none", None), ("k", "None", None),
    ("signed", "true", True), ("signed", "FALSE", False), ("signed", "1", True), ("signed", "0", False),
    ("noise", "direct", "direct"), ("noise", "Direct", "direct"),
    ("layers", "body.0,body.2", "body.0,body.2"), ("layers", "none", "none"),
    ("names", "a, b,", ("a", "b")), ("size", "8,16", (8, 16)), ("cutoff", "1", 1.0), ("epsilon", "1e-3", 1e-3),
])
def test_values_parse_by_the_fields_type(name, text, value):
    parsed = parse_field(Knobs, name, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("name, text, message", [
    ("ratio", "abc", "ratio expects a finite number, got 'abc'"),
    ("ratio", "inf", "ratio expects a finite number, got 'inf'"),
    ("ratio", "nan", "ratio expects a finite number"),
    ("ratio", "none", "ratio expects a finite number"),  # None only where the field is optional
    ("k", "1.5", "k expects an integer or none, got '1.5'"),
    ("k", "1e3", "k expects an integer or none"),
    ("signed", "maybe", "signed expects true or false, got 'maybe'"),
    ("signed", "yes", "signed expects true or false"),
    ("noise", "loud", "noise expects one of calibrated, direct, got 'loud'"),
    ("size", "8", "size expects 2 comma-separated values"),
    ("cutoff", "1.5", "cutoff must be in [0, 1], got '1.5'"),
    ("epsilon", "0", "epsilon must be > 0, got '0'"),
    ("warp", "9", "unknown option 'warp' for Knobs; known: cutoff, epsilon, k, layers"),
])
def test_bad_values_are_one_line_errors_naming_the_option(name, text, message):
    with pytest.raises(ValueError) as err:
        parse_field(Knobs, name, text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_assignments_name_the_flag():
    assert parse_assignments(Knobs, ["ratio=0.3", " k = 2 ", "signed=false"], "--opt") == {
        "ratio": 0.3, "k": 2, "signed": False}
    with pytest.raises(ValueError, match="^--opt expects KEY=VALUE, got 'ratio'$"):
        parse_assignments(Knobs, ["ratio"], "--opt")
    with pytest.raises(ValueError, match="^--opt ratio expects a finite number, got 'abc'$"):
        parse_assignments(Knobs, ["ratio=abc"], "--opt")


def test_the_engines_configs_are_all_parseable():
    """Every field of every registered defense and attack config has a type the parser understands."""
    from tipcore import attacks, defenses

    for registry in (defenses.DEFENSES, attacks.ATTACKS):
        for spec in registry.values():
            for f in spec.config_cls.__dataclass_fields__.values():
                default = getattr(spec.config_cls(), f.name)
                text = "none" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) \
                    else str(default).lower() if isinstance(default, bool) else str(default)
                assert parse_field(spec.config_cls, f.name, text) == default, (spec.name, f.name)


def test_describe():
    assert describe(int | None) == "an integer or none"
    assert describe(tuple[str, ...]) == "a comma-separated list of text"
    assert parse_typed(float, "3") == 3.0
