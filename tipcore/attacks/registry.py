"""The attack and matcher registries: names, labels, knobs, and which attacker is built on which.

An **attack** (``ATTACKS``) is a naive gradient-inversion attack (dlg, idlg, ig) or an adaptive variant of
one, ``{base}_{matcher}``. A **matcher** (``MATCHERS``) is what an attacker matches of the received update:
``all`` for the naive attacker, or an adaptive rule fitted on the update alone (``tipcore.attacks.matchers``,
one module each). Registering a matcher makes ``{base}_{matcher}`` exist for every base attack that takes
matchers, and ``unregister_matcher`` removes them again, so a new matcher is one file.

This module and every declaration (configs, labels, summaries) import without torch: ``attack --help`` and
the app's pickers read them; the optimisation engine is loaded when an attack runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from tipcore.common.config import create_registered

NAIVE = "all"  # the matcher of the naive attacker: every tensor, as received


@dataclass(frozen=True)
class MatcherSpec:
    name: str
    label: str  # what the attacker does, for a picker: "drops the noised channels"
    short: str  # for an attack's label: "iDLG + drop"
    summary: str  # one line for --help: "adaptive: finds the noised conv channels ... and leaves them out"
    flags_channels: bool  # fills AttackResult.flagged; the run records detection precision / recall
    config_cls: type  # frozen dataclass of knobs (tipcore.common.knobs)
    factory: Callable[[Any], Any]  # config -> an object with fit(model, targets) -> tipcore.attacks.fitted.Fitted


@dataclass(frozen=True)
class AttackSpec:
    name: str
    config_cls: type
    factory: Callable[[Any], Any]
    summary: str
    label: str  # display name, e.g. "iDLG + drop"
    base: str  # the naive attack it is built on (itself for a naive one)
    matcher: str  # the registered matcher it defaults to ("all" for a naive attack)


ATTACKS: dict[str, AttackSpec] = {}
MATCHERS: dict[str, MatcherSpec] = {}
ATTACK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}  # base attack -> preset name -> options
_TAKES_MATCHERS: list[str] = []  # base attacks that get a {base}_{matcher} variant per matcher


# ------------------------------------------------------------------------------------------ matchers

def register_matcher(name: str, config_cls: type, *, label: str, summary: str, short: str | None = None,
                     flags_channels: bool = False) -> Callable[[type], type]:
    """Class decorator: register a matcher, and its ``{base}_{name}`` attack for every base that takes one."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"a matcher name is a lower-case identifier, got '{name}'")

    def decorate(cls: type) -> type:
        cls.name = name
        MATCHERS[name] = MatcherSpec(name, label, short or name.replace("_", "-"), summary, flags_channels,
                                     config_cls, cls)
        if name != NAIVE:
            for base in _TAKES_MATCHERS:
                _register_variant(base, name)
        return cls

    return decorate


def unregister_matcher(name: str) -> None:
    """Remove a matcher and its adaptive attacks (tests that register a throwaway one clean up with this)."""
    if name == NAIVE:
        raise ValueError("the naive matcher 'all' cannot be removed")
    MATCHERS.pop(name, None)
    for base in _TAKES_MATCHERS:
        ATTACKS.pop(f"{base}_{name}", None)


def adaptive_matchers() -> tuple[str, ...]:
    return tuple(n for n in MATCHERS if n != NAIVE)


def matcher_config(matcher: str, options: Any) -> Any:
    """The matcher's config from an attack config (or mapping), field by field BY NAME: every knob the
    matcher declares takes the attack's value of the same name when it has one, else its default."""
    spec = MATCHERS[matcher]
    get = options.get if isinstance(options, Mapping) else (lambda k, d: getattr(options, k, d))
    missing = object()
    values = {f.name: v for f in dataclasses.fields(spec.config_cls) if (v := get(f.name, missing)) is not missing}
    return spec.config_cls(**values)


def check_match(config: Any) -> None:
    """An attack config's ``match`` names a registered matcher, and its matcher's own checks pass."""
    if config.match not in MATCHERS:
        raise ValueError(f"match must be one of {', '.join(MATCHERS)}, got '{config.match}'")
    matcher_config(config.match, config)


# ------------------------------------------------------------------------------------------- attacks

def register_attack(name: str, config_cls: type, summary: str, *, label: str,
                    takes_matchers: bool = True) -> Callable[[type], type]:
    """Class decorator for a naive attack; with ``takes_matchers``, ``{name}_{matcher}`` is registered for
    every adaptive matcher, now and whenever one registers later."""

    def decorate(cls: type) -> type:
        cls.name = name
        ATTACKS[name] = AttackSpec(name, config_cls, cls, summary, label, name, NAIVE)
        if takes_matchers and name not in _TAKES_MATCHERS:
            _TAKES_MATCHERS.append(name)
            for matcher in adaptive_matchers():
                _register_variant(name, matcher)
        return cls

    return decorate


def _register_variant(base: str, matcher: str) -> None:
    """``{base}_{matcher}``: the base attack whose config adds the matcher's knobs and defaults to it."""
    spec, m = ATTACKS[base], MATCHERS[matcher]
    name = f"{base}_{matcher}"
    own = {f.name for f in dataclasses.fields(spec.config_cls)}
    hints = typing.get_type_hints(m.config_cls)
    clash = sorted(f.name for f in dataclasses.fields(m.config_cls) if f.name in own)
    if clash:
        raise ValueError(f"matcher '{matcher}' declares knob(s) {', '.join(clash)} that attack '{base}' already has")
    added = [(f.name, hints[f.name], dataclasses.field(default=f.default, metadata=f.metadata))
             for f in dataclasses.fields(m.config_cls)]
    added.append(("match", str, dataclasses.field(default=matcher, metadata=_match_metadata(spec.config_cls))))
    config_cls = dataclasses.make_dataclass(f"{spec.config_cls.__name__}_{matcher}", added,
                                            bases=(spec.config_cls,), frozen=True)
    config_cls.__module__ = spec.config_cls.__module__
    factory = type(f"{spec.factory.__name__}_{matcher}", (spec.factory,), {"name": name})
    summary = f"{spec.summary.split(':')[0]} + {matcher}: {m.summary.split(': ', 1)[-1]}"
    ATTACKS[name] = AttackSpec(name, config_cls, factory, summary, f"{spec.label} + {m.short}", base, matcher)


def _match_metadata(config_cls: type) -> Mapping[str, Any]:
    return next(f.metadata for f in dataclasses.fields(config_cls) if f.name == "match")


def create(name: str, options: Mapping[str, Any] | None = None) -> Any:
    return create_registered(ATTACKS, "attack", name, options)


def base_attack(name: str) -> str:
    """The naive attack an adaptive variant is built on (``idlg_drop`` -> ``idlg``)."""
    return ATTACKS[name].base


def is_adaptive(name: str) -> bool:
    return ATTACKS[name].matcher != NAIVE


def adaptive_variants(base: str) -> tuple[str, ...]:
    """Every registered ``{base}_{matcher}``: the attackers "best adaptive" takes the strongest of per image."""
    return tuple(n for n, s in ATTACKS.items() if s.base == base and s.matcher != NAIVE)


def preset_options(attack: str, preset: str) -> dict[str, Any]:
    """A named set of options for an attack or any of its adaptive variants (``ig_drop`` uses ``ig``'s)."""
    presets = ATTACK_PRESETS.get(base_attack(attack), {})
    if preset not in presets:
        known = ", ".join(f"{b}: {', '.join(p)}" for b, p in ATTACK_PRESETS.items()) or "none"
        raise ValueError(f"attack '{attack}' has no preset '{preset}' (presets: {known})")
    return dict(presets[preset])
