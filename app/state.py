"""Per-visitor settings: one typed dataclass, kept in ``st.session_state`` and mirrored in the URL.

* ``current()`` returns this visitor's ``Settings``; on a session's first run it is read from the query
  parameters, so a shared link reproduces the view.
* ``bind(...)`` draws a widget whose value lives in a ``Settings`` field (widget key ``w_<field>``): the
  widget's latest value is pulled into the settings, checked against the options on offer, and pushed back
  before the widget is drawn, so values survive page switches and invalid values never reach a widget.
* ``apply(**changes)`` changes settings from a callback (presets, gallery clicks) and keeps widgets in step.
* ``publish()`` writes the non-default settings into ``st.query_params``.

Of tipcore only the torch-free text parser is used here; validation against the engine's registries
happens in ``controls``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Sequence

import streamlit as st

from tipcore.common.parsing import describe, parse_typed

SETTINGS_KEY = "settings"
WIDGET_PREFIX = "w_"


@dataclass
class Settings:
    """Everything a visitor can set; field names are also the URL's query-parameter names."""

    preset: str = "demo"
    # image
    source: str = "gallery"  # "gallery" | "upload"
    dataset: str = "cifar10"
    image_id: str = "cifar10-00"
    upload_label: int = 0
    # model and federated round
    model: str = "lenet"
    weights: str = "random"
    mode: str = "fedsgd"
    local_steps: int = 1
    lr: float = 1e-3
    clip: float = 5.0  # 0: the round does not clip
    # defenses
    defenses: tuple[str, ...] = ("none", "dp", "tip")
    epsilon: float = 5.0
    delta: float = 1e-5
    tip_variant: str = "tip"
    ratio: float = 0.1
    cutoff: float = 0.5
    noise: str = "calibrated"
    beta: float = 0.01
    prune_ratio: float = 0.7
    soteria_ratio: float = 0.8
    # attack
    attack: str = "idlg"  # the naive attack (dlg, idlg, ig); a link may also name a variant, e.g. idlg_drop
    adaptive: str = "none"  # what the attacker knows of the defense: none (naive), drop, lowpass, noise_aware
    iterations: int = 50
    seed: int = 0
    labels_known: bool = False
    # "How TIP works" view
    layer: str = ""  # "" : the first conv layer
    channel: int = -1  # -1: the first selected channel of the layer

    def to_query(self) -> dict[str, str]:
        """The fields that differ from the defaults, as strings."""
        default = Settings()
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = _format(value)
        return out

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> tuple["Settings", list[str]]:
        """Settings from query parameters; returns the settings and one message per ignored parameter."""
        s = cls()
        problems: list[str] = []
        hints = typing.get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        for key, raw in params.items():
            if key not in names:
                continue  # other parameters (e.g. Streamlit's own) are not ours to judge
            try:
                setattr(s, key, _parse(hints[key], str(raw)))
            except ValueError as exc:
                problems.append(f"ignored URL parameter {key}={raw!r}: {exc}")
        return s, problems


# Presets fill the sidebar in one click; "custom" leaves every value as it is. The named ones are the
# engine's (tipcore.pipeline.presets, also `--preset NAME` on the CLI), translated into this sidebar's settings.
CUSTOM = "custom"


def presets() -> dict[str, tuple[str, dict[str, Any]]]:
    from tipcore.pipeline import presets as engine

    out = {name: (p.label, _preset_settings(p)) for name, p in engine.PRESETS.items()}
    out[CUSTOM] = ("Custom", {})
    return out


def _preset_settings(p: Any) -> dict[str, Any]:
    tip = dict(p.defense_options.get("tip", {}))
    r = p.round
    return dict(model=p.model, weights=p.weights, mode=r.mode, local_steps=r.local_steps, lr=r.lr,
                clip=0.0 if r.clip is None else r.clip, defenses=tuple(p.defenses), epsilon=p.epsilon, delta=p.delta,
                tip_variant="tip", ratio=tip.get("ratio", 0.1), cutoff=tip.get("cutoff", 0.5),
                noise=tip.get("noise", "calibrated"), attack=p.attack, adaptive="none",
                iterations=p.cpu_iterations or int(p.attack_options.get("iterations", 100)),
                labels_known=p.labels_known)


# ------------------------------------------------------------------------------------------- parsing


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


MAX_TEXT = 200  # a URL value longer than this is not a setting anyone typed


def _parse(hint: Any, raw: str) -> Any:
    """One URL value, by the engine's one text parser (finite numbers, integers stay integers, booleans
    1/0 or true/false); the message says what was expected."""
    if hint is str and len(raw.strip()) > MAX_TEXT:
        raise ValueError("too long")
    try:
        return parse_typed(hint, raw)
    except ValueError:
        raise ValueError(f"expected {describe(hint)}") from None


# ------------------------------------------------------------------------------------- session state


def current() -> Settings:
    """This visitor's settings (read from the URL on the session's first run)."""
    s = st.session_state.get(SETTINGS_KEY)
    if s is None:
        params = {k: st.query_params.get(k) for k in st.query_params.keys()}
        s, problems = Settings.from_query(params)
        st.session_state[SETTINGS_KEY] = s
        st.session_state["url_problems"] = problems
    return s


def url_problems() -> list[str]:
    """Messages about ignored URL parameters, handed out once (the first page that shows them)."""
    return list(st.session_state.pop("url_problems", []))


def widget_key(name: str) -> str:
    return WIDGET_PREFIX + name


def apply(**changes: Any) -> None:
    """Change settings (from a callback) and keep the bound widgets in step."""
    s = current()
    for name, value in changes.items():
        setattr(s, name, value)
        st.session_state[widget_key(name)] = _to_widget(value)


def apply_preset(name: str) -> None:
    values = presets().get(name, ("", {}))[1]
    apply(preset=name, **values)


def publish() -> None:
    """Mirror the non-default settings in the URL (only when they changed, to keep history clean)."""
    wanted = current().to_query()
    have = {k: st.query_params.get(k) for k in st.query_params.keys()}
    if have != wanted:
        st.query_params.from_dict(wanted)


def _to_widget(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def bind(
    widget: Callable[..., Any],
    label: str,
    name: str,
    *,
    options: Sequence[Any] | None = None,
    valid: Callable[[Any], bool] | None = None,
    fallback: Any = None,
    **kwargs: Any,
) -> Any:
    """Draw ``widget(label, ...)`` bound to settings field ``name`` and return the field's value.

    ``options``: the choices of a choice widget (selectbox, radio, multiselect, segmented control); a value
    outside them is replaced by ``fallback`` or the first option (a multiselect drops unknown items).
    ``valid``: a check for other widgets (sliders, number inputs); a failing value becomes ``fallback``
    or the field's default.
    """
    s = current()
    key = widget_key(name)
    if key in st.session_state:
        setattr(s, name, _from_widget(getattr(s, name), st.session_state[key]))
    value = getattr(s, name)
    if isinstance(value, tuple):
        if options is not None:
            value = tuple(v for v in value if v in options)
    elif options is not None and value not in options:
        value = fallback if fallback is not None else (options[0] if len(options) else value)
    if valid is not None and not valid(value):
        value = fallback if fallback is not None else getattr(Settings(), name)
    setattr(s, name, value)
    st.session_state[key] = _to_widget(value)
    if options is not None:
        kwargs["options"] = list(options)
    widget(label, key=key, **kwargs)
    return getattr(s, name)


def _from_widget(old: Any, new: Any) -> Any:
    if isinstance(old, tuple):
        return tuple(new or ())
    if isinstance(old, bool):
        return bool(new)
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(new, (int, float)):
        return int(new)
    if isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    return new


def snapshot() -> Settings:
    """A copy of the current settings (to store next to results)."""
    return replace(current())


__all__ = [
    "Settings", "presets", "current", "apply", "apply_preset", "bind", "publish", "snapshot", "url_problems",
    "widget_key",
]
