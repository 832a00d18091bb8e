"""Frozen-dataclass configs built from plain dicts (CLI flags, the app's widgets, result.json)."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def from_dict(config_cls: type[T], values: Mapping[str, Any] | None) -> T:
    """Build ``config_cls`` from ``values``, rejecting unknown keys with a message that names them."""
    values = dict(values or {})
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {config_cls.__name__}; known: {', '.join(sorted(known))}"
        )
    return config_cls(**values)


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
