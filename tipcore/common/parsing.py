"""One typed parser for every value that arrives as text: CLI flags, ``--defense-opt`` / ``--attack-opt``,
the app's URL parameters.

The expected type comes from a dataclass field's annotation (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``tuple[...]``), narrowed by the field's ``tipcore.common.knobs.Knob`` where it
declares one (its ``low`` / ``high`` bounds), so a config class is the one declaration of what its options
accept. The rules:

* numbers are finite (``inf`` and ``nan`` are refused);
* integers stay integers: ``1.5`` or ``1e3`` for an ``int`` field is an error, not a silent rounding;
* booleans are ``true`` / ``false`` (or ``1`` / ``0``, the form the app writes into its URLs), any case;
* ``none`` (or ``null``) gives ``None`` for an optional field, and only there;
* tuples are comma-separated.

Every failure is a one-line ``ValueError`` naming the option and what it expects. This module imports
nothing heavy (no torch), so the CLI's top-level help and the app's URL handling can use it freely.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Iterable, Literal, Mapping

_INTEGER = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_NONE = ("none", "null")


def parse_field(config_cls: type, field_name: str, text: str) -> Any:
    """``text`` as a value of ``config_cls``'s field ``field_name`` (its type and metadata decide)."""
    found = {f.name: f for f in dataclasses.fields(config_cls)}
    if field_name not in found:
        raise ValueError(f"unknown option '{field_name}' for {config_cls.__name__}; "
                         f"known: {', '.join(sorted(found)) or 'none'}")
    hint = _type_hints(config_cls)[field_name]
    return parse_typed(hint, text, name=field_name, metadata=found[field_name].metadata)


def parse_assignments(config_cls: type, pairs: Iterable[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a repeated CLI flag) as typed options of ``config_cls``; errors name ``flag``."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ValueError(f"{flag} expects KEY=VALUE, got '{pair}'")
        key, value = (part.strip() for part in pair.split("=", 1))
        try:
            out[key] = parse_field(config_cls, key, value)
        except ValueError as exc:
            raise ValueError(f"{flag} {exc}") from None
    return out


def parse_typed(hint: Any, text: str, *, name: str = "value", metadata: Mapping[str, Any] | None = None) -> Any:
    """``text`` as a value of type ``hint``; ``name`` is what the error message calls the option."""
    if not isinstance(text, str):
        raise ValueError(f"{name} expects text to parse, got {type(text).__name__}")
    value = _parse(hint, text.strip(), name)
    bounds = (metadata or {}).get("knob")  # a tipcore.common.knobs.Knob (read by its fields: no import needed here)
    if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = bounds.low, bounds.high
        too_low = low is not None and (value <= low if bounds.low_open else value < low)
        too_high = high is not None and (value >= high if bounds.high_open else value > high)
        if too_low or too_high:
            within = bounds.range_text()
            raise ValueError(f"{name} must be {'in ' if within.startswith(('[', '(')) else ''}{within}, "
                             f"got {text.strip()!r}")
    return value


def describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like, for help texts and error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "text"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if _is_union(origin):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in inner) + (" or none" if len(inner) < len(args) else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {_plural(describe(args[0]))}"
        return f"{len(args)} comma-separated values ({', '.join(describe(a) for a in args)})"
    return getattr(hint, "__name__", str(hint))


# ------------------------------------------------------------------------------------------ internals

def _parse(hint: Any, text: str, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        raise ValueError(f"{name} cannot be set from text")
    if _is_union(origin):
        if type(None) in args and text.lower() in _NONE:
            return None
        for inner in (a for a in args if a is not type(None)):
            try:
                return _parse(inner, text, name)
            except ValueError:
                continue
        raise ValueError(f"{name} expects {describe(hint)}, got {text!r}")
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{name} expects true or false, got {text!r}")
    if hint is int:
        if not _INTEGER.fullmatch(text):
            raise ValueError(f"{name} expects an integer, got {text!r}")
        return int(text)
    if hint is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name} expects a finite number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{name} expects a finite number, got {text!r}")
        return value
    if hint is str:
        return text
    if origin is Literal:
        for choice in args:
            if text == str(choice) or (isinstance(choice, str) and text.lower() == choice.lower()):
                return choice
        raise ValueError(f"{name} expects one of {', '.join(str(a) for a in args)}, got {text!r}")
    if origin is tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(args[0], p, name) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"{name} expects {describe(hint)}, got {text!r}")
        return tuple(_parse(a, p, name) for a, p in zip(args, parts))
    raise ValueError(f"{name} ({describe(hint)}) cannot be set from text")


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def _plural(what: str) -> str:
    return what.removeprefix("an ").removeprefix("a ") + "s" if what.startswith(("a ", "an ")) else what


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(config_cls: type) -> dict[str, Any]:
    """The resolved annotations (the configs use ``from __future__ import annotations``: strings)."""
    if config_cls not in _HINTS:
        _HINTS[config_cls] = typing.get_type_hints(config_cls)
    return _HINTS[config_cls]
