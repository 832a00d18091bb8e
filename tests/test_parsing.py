"""The one text parser (tipcore.common.parsing): typed by a config's field annotations, strict, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest

from tipcore.common.knobs import knob
from tipcore.common.parsing import describe, parse_assignments, parse_data, parse_field, parse_record, parse_typed


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


@dataclass(frozen=True)
class Round:
    lr: float = 1e-3
    steps: int = 1


@dataclass(frozen=True)
class Spec:
    round: Round = Round()
    ids: tuple[str, ...] = ("a",)
    labels: tuple[int, ...] | None = None
    options: dict[str, Any] | None = None
    cutoff: float = knob(0.5, "Cutoff", "a bounded knob", low=0.0, high=1.0)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_data_is_read_by_the_same_rules_with_its_path_named():
    """JSON data (a result.json's RunSpec, a defense.json): the field's own JSON type, ranges, finiteness,
    lists as tuples, nested configs as their dataclass; the error names the value's path."""
    got = parse_record(Spec, {"round": {"lr": 0.5, "steps": 2}, "ids": ["x", "y"], "labels": [1], "cutoff": 1},
                       name="spec")
    assert got == {"round": Round(0.5, 2), "ids": ("x", "y"), "labels": (1,), "cutoff": 1}
    assert parse_data(float, 3) == 3 and parse_data(int | None, None) is None
    assert parse_data(float, float("nan"), finite=False) != parse_data(float, float("nan"), finite=False)
    for values, message in [
        (5, "spec must be an object of Spec options, got 5"),
        ({"round": "fast"}, "spec.round must be an object of Round options, got 'fast'"),
        ({"round": {"lr": "abc"}}, "spec.round.lr must be a finite number, got 'abc'"),
        ({"round": {"lr": float("inf")}}, "spec.round.lr must be a finite number, got inf"),
        ({"round": {"steps": 1.0}}, "spec.round.steps must be an integer, got 1.0"),
        ({"round": {"steps": True}}, "spec.round.steps must be an integer, got true"),
        ({"round": {"warp": 9}}, "spec.round: unknown option(s) warp for Round"),
        ({"ids": 5}, "spec.ids must be a list of text, got 5"),
        ({"ids": "abc"}, "spec.ids must be a list of text, got 'abc'"),
        ({"labels": [True]}, "spec.labels[0] must be an integer, got true"),
        ({"cutoff": 2}, "spec.cutoff must be in [0, 1], got 2"),
        ({"options": {"x": _nested(40)}}, "nests deeper than 32"),
        ({"options": {"x": float("nan")}}, "spec.options.x holds a number that is not finite"),
    ]:
        with pytest.raises(ValueError) as err:
            parse_record(Spec, values, name="spec")
        assert message in str(err.value) and "\n" not in str(err.value), (values, str(err.value))
    with pytest.raises(ValueError, match="nests deeper than"):  # walked without recursion: no depth is too deep
        parse_data(Any, _nested(100_000), name="record")
