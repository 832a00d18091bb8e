"""Per-visitor settings: one typed dataclass, kept in ``st.session_state`` and mirrored in the URL.

* ``current()`` returns this visitor's ``Settings``; on a session's first run it is read from the query
  parameters, so a shared link reproduces the view.
* ``bind(...)`` draws a widget whose value lives in a ``Settings`` field (widget key ``w_<field>``): the
  widget's latest value is pulled into the settings, checked against the options on offer, and pushed back
  before the widget is drawn, so values survive page switches and invalid values never reach a widget.
* ``bind_option(...)`` does the same for a widget generated from a defense's knob (``controls``
  draws one per knob of a defense without hand-made controls): its value lives in ``Settings.defense_opts``.
* ``apply(**changes)`` changes settings from a callback (presets, gallery clicks) and keeps widgets in step.
* ``publish()`` writes the non-default settings into ``st.query_params``.

Of tipcore only torch-free parts are used here: the text parser, and for ``defense_opts`` the defenses'
registry and knob declarations (a knob's value in a link is read with that knob's own type and range).
Validation of the other fields against the engine's registries happens in ``controls``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Sequence

import streamlit as st

from tipcore.common.parsing import describe, parse_field, parse_typed

SETTINGS_KEY = "settings"
WIDGET_PREFIX = "w_"
OPTION_PREFIX = WIDGET_PREFIX + "defense_opts."  # + "<defense>.<knob>": a generated widget's key

TIP_FAMILY = ("tip", "tip_random", "tip_fullband")
# Defenses whose options are Settings fields of their own (TIP's ratio, cutoff, noise, beta; the pruning and
# Soteria ratios; the shared budget): every other defense gets generated widgets, kept in ``defense_opts``.
HAND_MADE = (*TIP_FAMILY, "none", "dp", "dp_paper", "prune", "soteria")
GENERATED_KINDS = ("bool", "choice", "int", "float")  # the kinds of knob a generated widget can show
MAX_OPTIONS = 64  # entries of defense_opts a link may carry


def generated(row: Mapping[str, Any]) -> bool:
    """Whether a generated widget is drawn for this knob (a row of ``tipcore.common.knobs.table``): not the
    shared budget or the round's clip, and a kind a widget can show (a number needs a default)."""
    if row["role"] in ("budget", "clip") or row["kind"] not in GENERATED_KINDS:
        return False
    return row["kind"] in ("bool", "choice") or row["default"] is not None


@dataclass(frozen=True)
class KnobValues:
    """The generated widgets' values that differ from their knob's default: sorted (defense, knob, value)
    triples. In a link: ``defense.knob:value`` entries joined by commas, e.g. ``toy_bits.bits:4``."""

    items: tuple[tuple[str, str, Any], ...] = ()

    def get(self, defense: str, knob: str, default: Any = None) -> Any:
        for d, k, v in self.items:
            if (d, k) == (defense, knob):
                return v
        return default

    def with_value(self, defense: str, knob: str, value: Any, default: Any) -> "KnobValues":
        """These values with ``defense.knob`` set to ``value`` (dropped when it is the default)."""
        rest = [(d, k, v) for d, k, v in self.items if (d, k) != (defense, knob)]
        if value != default:
            rest.append((defense, knob, value))
        return KnobValues(tuple(sorted(rest, key=lambda e: (e[0], e[1]))))

    def of(self, defense: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Every generated knob of ``defense`` (``rows``: its ``knobs.table``) with its value here or its default."""
        return {r["name"]: self.get(defense, r["name"], r["default"]) for r in rows if generated(r)}

    def to_text(self) -> str:
        return ",".join(f"{d}.{k}:{_format(v)}" for d, k, v in self.items)

    def __str__(self) -> str:
        return self.to_text() or "defaults"

    @classmethod
    def parse(cls, text: str) -> tuple["KnobValues", list[str]]:
        """Values from a link's text, each read with its knob's own type and range; returns the values and
        one message per ignored entry (unknown defense or knob, bad value)."""
        out = cls()
        problems: list[str] = []
        entries = [e.strip() for e in text.split(",") if e.strip()]
        if len(entries) > MAX_OPTIONS or len(text) > MAX_OPTIONS * MAX_TEXT:
            return out, [f"more than {MAX_OPTIONS} entries or too long"]
        for entry in entries:
            try:
                defense, knob, value, default = _knob_value(entry)
            except ValueError as exc:
                problems.append(f"entry {entry[:MAX_TEXT]!r}: {exc}")
            else:
                out = out.with_value(defense, knob, value, default)
        return out, problems


def _knob_value(entry: str) -> tuple[str, str, Any, Any]:
    """(defense, knob, value, default) of one ``defense.knob:value`` entry."""
    from tipcore import defenses
    from tipcore.common import knobs

    name, sep, text = entry.partition(":")
    defense, dot, knob = name.partition(".")
    if not sep or not dot or not defense or not knob:
        raise ValueError("expected defense.knob:value")
    spec = defenses.DEFENSES.get(defense)
    if spec is None or defense in HAND_MADE:
        raise ValueError(f"no defense '{defense}' with generated options")
    rows = {r["name"]: r for r in knobs.table(spec.config_cls) if generated(r)}
    if knob not in rows:
        raise ValueError(f"{defense} has no option '{knob}'; known: {', '.join(rows) or 'none'}")
    return defense, knob, parse_field(spec.config_cls, knob, text), rows[knob]["default"]


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
    # generated widgets' values (defenses without hand-made controls), only those off their default
    defense_opts: KnobValues = field(default_factory=KnobValues)
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
            if hints[key] is KnobValues:
                s.defense_opts, bad = KnobValues.parse(str(raw))
                problems += [f"ignored URL parameter {key}, {why}" for why in bad]
                continue
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
    if isinstance(value, KnobValues):
        return value.to_text()
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
        if isinstance(value, KnobValues):  # the generated widgets take their values from the settings again
            for key in [k for k in st.session_state if str(k).startswith(OPTION_PREFIX)]:
                del st.session_state[key]
            continue
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


def option_key(defense: str, knob: str) -> str:
    return f"{OPTION_PREFIX}{defense}.{knob}"


def bind_option(widget: Callable[..., Any], label: str, defense: str, knob: str, default: Any, **kwargs: Any) -> Any:
    """Draw ``widget(label, ...)`` bound to ``defense``'s knob ``knob`` in ``Settings.defense_opts`` (as
    ``bind`` does for a field: the widget's latest value is pulled in, the settings' value pushed back
    before drawing) and return the value; ``default`` is the knob's declared default."""
    s = current()
    key = option_key(defense, knob)
    if key in st.session_state:
        s.defense_opts = s.defense_opts.with_value(defense, knob, _from_widget(default, st.session_state[key]),
                                                   default)
    value = s.defense_opts.get(defense, knob, default)
    st.session_state[key] = value
    widget(label, key=key, **kwargs)
    return value


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
    "Settings", "KnobValues", "presets", "current", "apply", "apply_preset", "bind", "bind_option", "option_key",
    "generated", "publish", "snapshot", "url_problems", "widget_key", "HAND_MADE", "TIP_FAMILY",
]
