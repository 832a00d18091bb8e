"""Frozen-dataclass configs built from plain dicts (CLI flags, the app's widgets, result.json)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Mapping, TypeVar

from tipcore.common.parsing import parse_record

T = TypeVar("T")


def from_dict(config_cls: type[T], values: Mapping[str, Any] | None, *, name: str = "") -> T:
    """Build ``config_cls`` from ``values``, each checked by the typed parser against its field's type and knob
    (``tipcore.common.parsing.parse_record``: what a result.json or the app hands in gets the CLI's rules);
    unknown keys are refused with a message that names them. ``name``: where the values come from, for
    the error (e.g. ``spec.round``)."""
    return config_cls(**parse_record(config_cls, {} if values is None else values, name=name))


def to_dict(config: Any) -> dict[str, Any]:
    if not is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return asdict(config)


def create_registered(registry: Mapping[str, Any], kind: str, name: str, options: Mapping[str, Any] | None) -> Any:
    """Look ``name`` up in a registry of specs (``config_cls`` + ``factory``) and build it from ``options``:
    the one way attacks and defenses are made, with the same error for an unknown name."""
    if name not in registry:
        raise ValueError(f"unknown {kind} '{name}'; choose one of: {', '.join(registry)}")
    spec = registry[name]
    return spec.factory(from_dict(spec.config_cls, options))
