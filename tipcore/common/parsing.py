"""One typed parser for every value that arrives from outside: as text (CLI flags, ``--defense-opt`` /
``--attack-opt``, the app's URL parameters, environment variables) or as decoded JSON data (a result.json's
RunSpec, a recorded update's defense.json, a result-cache entry's header: ``parse_data`` / ``parse_record``).

The expected type comes from a dataclass field's annotation (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``tuple[...]``), narrowed by the field's ``tipcore.common.knobs.Knob`` where it
declares one (its ``low`` / ``high`` bounds), so a config class is the one declaration of what its options
accept. The rules:

* numbers are finite (``inf`` and ``nan`` are refused);
* integers stay integers: ``1.5`` or ``1e3`` for an ``int`` field is an error, not a silent rounding;
* booleans are ``true`` / ``false`` (or ``1`` / ``0``, the form the app writes into its URLs), any case;
* ``none`` (or ``null``) gives ``None`` for an optional field, and only there;
* tuples are comma-separated (in data: JSON lists);
* in data, a value has the field's own JSON type: ``"10"`` is not an integer, ``[1]`` not a string, ``1`` not
  ``true``; a nested config (a RunSpec's round) is a JSON object read by the same rules, and free-form values
  (``Any``) nest at most ``MAX_DEPTH`` deep.

Every failure is a one-line ``ValueError`` naming the option and what it expects. This module imports
nothing heavy (no torch), so the CLI's top-level help and the app's URL handling can use it freely.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import numbers
import re
import types
import typing
from typing import Any, Iterable, Literal, Mapping

_INTEGER = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_NONE = ("none", "null")
# How deep free-form data may nest (lists and objects in lists and objects). The project's files nest
# five levels at most (defense.json: record, layers, layer, per-image alphas, values); a deeper file is
# not one of them, and refusing it keeps every walk over the data (and Python's recursion) bounded.
MAX_DEPTH = 32


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
    _check_bounds(value, metadata, name, repr(text.strip()))
    return value


def parse_data(hint: Any, value: Any, *, name: str = "value", metadata: Mapping[str, Any] | None = None,
               finite: bool = True) -> Any:
    """``value``, decoded JSON data, as a value of type ``hint`` by the rules above (a list becomes a tuple, a
    nested config object its dataclass; an integer is a number where a float is asked); ``finite=False`` lets
    float fields hold NaN and ±inf (a cache's losses of a diverged run). ``name`` is the value's path in
    the file, e.g. ``spec.round.lr``, for the one-line error."""
    parsed = _parse_data(hint, value, name, finite, 0)
    _check_bounds(parsed, metadata, name, _shown(value))
    return parsed


def parse_record(config_cls: type, values: Any, *, name: str = "", finite: bool = True) -> dict[str, Any]:
    """A JSON object as the keyword arguments of dataclass ``config_cls``: every key a field (unknown keys are
    refused, naming them), every value parsed by ``parse_data`` with that field's type and knob."""
    where = f"{name} " if name else ""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}must be an object of {config_cls.__name__} options, got {_shown(values)}")
    found = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(str(k) for k in values if k not in found)
    if unknown:
        raise ValueError(f"{name + ': ' if name else ''}unknown option(s) {', '.join(unknown)} for {config_cls.__name__}; "
                         f"known: {', '.join(sorted(found))}")
    hints = _type_hints(config_cls)
    return {key: parse_data(hints[key], value, name=f"{name}.{key}" if name else key,
                            metadata=found[key].metadata, finite=finite)
            for key, value in values.items()}


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
    if _is_mapping(origin) or dataclasses.is_dataclass(hint):
        return "an object"
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


def _check_bounds(value: Any, metadata: Mapping[str, Any] | None, name: str, shown: str) -> None:
    bounds = (metadata or {}).get("knob")  # a tipcore.common.knobs.Knob (read by its fields: no import needed here)
    if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = bounds.low, bounds.high
        too_low = low is not None and (value <= low if bounds.low_open else value < low)
        too_high = high is not None and (value >= high if bounds.high_open else value > high)
        if too_low or too_high:
            within = bounds.range_text()
            raise ValueError(f"{name} must be {'in ' if within.startswith(('[', '(')) else ''}{within}, got {shown}")


def _parse_data(hint: Any, value: Any, name: str, finite: bool, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{name} nests deeper than {MAX_DEPTH} levels")
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def wrong() -> ValueError:  # in data a tuple is a JSON list, not comma-separated text
        return ValueError(f"{name} must be {describe(hint).replace('comma-separated ', '')}, got {_shown(value)}")

    if hint is Any:
        return _free_form(value, name, finite, depth)
    if _is_union(origin):
        if value is None:
            if type(None) in args:
                return None
            raise wrong()
        inners = [a for a in args if a is not type(None)]
        if len(inners) == 1:  # X | None: X's own error says more (which element of a list is wrong)
            return _parse_data(inners[0], value, name, finite, depth)
        for inner in inners:
            try:
                return _parse_data(inner, value, name, finite, depth)
            except ValueError:
                continue
        raise wrong()
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise wrong()
    if hint is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise wrong()
        number = value if isinstance(value, int) else float(value)  # 10 stays 10: what was asked, as asked
        if finite and not math.isfinite(number):
            raise wrong()
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise wrong()
    if origin is Literal:
        for choice in args:  # the type too: True is not 1, 1 is not "1"
            if type(value) is type(choice) and value == choice:
                return choice
        raise wrong()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_data(args[0], v, f"{name}[{i}]", finite, depth + 1) for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong()
        return tuple(_parse_data(a, v, f"{name}[{i}]", finite, depth + 1) for i, (a, v) in enumerate(zip(args, value)))
    if _is_mapping(origin):
        if not isinstance(value, Mapping):
            raise wrong()
        key_hint, value_hint = args if len(args) == 2 else (str, Any)
        return {_parse_data(key_hint, k, f"{name} key", finite, depth + 1):
                _parse_data(value_hint, v, f"{name}.{k}", finite, depth + 1) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):  # already built (and checked by its own __post_init__)
            return value
        if depth + 1 > MAX_DEPTH:
            raise ValueError(f"{name} nests deeper than {MAX_DEPTH} levels")
        return hint(**parse_record(hint, value, name=name, finite=finite))
    raise ValueError(f"{name} ({describe(hint)}) cannot be read from data")


def _free_form(value: Any, name: str, finite: bool, depth: int) -> Any:
    """JSON data of any shape (an option mapping's values, a record): scalars, lists and string-keyed objects,
    nested at most MAX_DEPTH deep; walked without recursion, so no depth of input can exhaust the stack."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            raise ValueError(f"{name} nests deeper than {MAX_DEPTH} levels")
        if item is None or isinstance(item, (bool, str, numbers.Integral)):
            continue
        if isinstance(item, numbers.Real):
            if finite and not math.isfinite(float(item)):
                raise ValueError(f"{name} holds a number that is not finite ({item!r})")
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((v, level + 1) for v in item)
        elif isinstance(item, Mapping) and all(isinstance(k, str) for k in item):
            stack.extend((v, level + 1) for v in item.values())
        else:
            raise ValueError(f"{name} holds {type(item).__name__}, which is not JSON data")
    return value


def _shown(value: Any) -> str:
    """A value as an error message names it: short, on one line, its JSON type when it is a container."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_mapping(origin: Any) -> bool:
    return origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping)


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
