"""Display names of the engine's registered defenses, attacks and matchers, read from its registries
(through ``app.resources``, which caches them per server): the one place the app turns a name into words.

The first page after a server start is drawn from precomputed assets before the engine (torch) has loaded;
until then a name is put into words without the registries, the way they word it ("iDLG + drop")."""

from __future__ import annotations

from typing import Any

ATTACK_LABELS = {"dlg": "DLG", "idlg": "iDLG", "ig": "Inverting Gradients"}
MODEL_LABELS = {"lenet": "LeNet (DLG)", "convnet": "ConvNet", "resnet18": "ResNet-18"}


def _registries() -> dict[str, Any] | None:
    """The engine's registries, or None while the engine is still loading (never waits for it)."""
    from app import resources

    return resources.registries() if resources.engine_core_ready() else None


def defense_labels() -> dict[str, str]:
    """Display names from the engine's registry (each defense declares its own); empty while it loads."""
    reg = _registries()
    return {} if reg is None else {n: d["label"] for n, d in reg["defenses"].items()}


def defense_label(name: str) -> str:
    return defense_labels().get(name, name)


def knob_symbol(defense: str, knob: str) -> str:
    """What a chart writes for a defense's knob: the symbol its config declares (``tipcore.common.knobs``: "β"
    for TIP's beta), else the knob's name (also while the engine loads); "" for no knob."""
    reg = _registries()
    spec = None if reg is None else reg["defenses"].get(defense)
    row = next((r for r in spec["knobs"] if r["name"] == knob), None) if spec is not None else None
    return row["symbol"] if row is not None else knob


def adaptive_labels() -> dict[str, str]:
    """What the attacker does about the defense, per registered matcher ("none": the naive attacker)."""
    from app import resources

    matchers = resources.registries()["matchers"]
    return {"none": matchers["all"]["label"], **{n: m["label"] for n, m in matchers.items() if n != "all"}}


def split_attack(name: str) -> tuple[str, str]:
    """(base attack, adaptive mode) of an engine attack name: ``idlg_drop`` -> ("idlg", "drop")."""
    from app import resources

    spec = resources.registries()["attacks"].get(name)
    if spec is None or spec["matcher"] == "all":
        return name, "none"
    return spec["base"], spec["matcher"]


def attack_label(name: str, recorded: str = "") -> str:
    """A readable name for an engine attack, naive or adaptive: "iDLG + drop (knows the defense)".

    ``recorded``: the registry's label stored with a precomputed asset (``PunchEntry.label``), used while the
    engine loads, so that a page drawn before it words the attack exactly as the registry does ("iDLG +
    low-pass", which the name alone does not give)."""
    reg = _registries()
    if reg is None:  # the engine is loading: the registry's own wording, recorded or from the name
        base, _, matcher = name.partition("_")
        label = ATTACK_LABELS.get(base, base)
        label = recorded or (f"{label} + {matcher}" if matcher else label)
        return f"{label} (knows the defense)" if matcher else label
    spec = reg["attacks"].get(name)
    if spec is None:
        return ATTACK_LABELS.get(name, name)
    return spec["label"] if spec["matcher"] == "all" else f"{spec['label']} (knows the defense)"


def attacker_name(name: str, recorded: str = "") -> str:
    """``attack_label`` without "(knows the defense)", for a title or caption that already says adaptive."""
    return attack_label(name, recorded).replace(" (knows the defense)", "")
