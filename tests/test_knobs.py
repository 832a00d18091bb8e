"""A defense is one file: its config declares its knobs, and the CLI flags, the app's widgets, validation and
the sweep grid follow. The toy defense below is that one file; nothing else in the repository knows it."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pytest

from tipcore import defenses
from tipcore.common import knobs
from tipcore.defenses.base import DefenseDiagnostics, register, unregister
from tipcore.common.knobs import check, knob

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the toy defense: one file

@dataclass(frozen=True)
class ToyScaleConfig:
    shrink: float = knob(0.5, "Shrink factor", "multiply every tensor of the update by 1 - shrink", low=0.0,
                         high=1.0, role="strength", grid=(0.25, 0.75), symbol="λ")
    rounds: int = knob(1, "Repeats", "apply the shrink this many times", low=1, high=5)

    def __post_init__(self) -> None:
        check(self)


def make_toy() -> None:
    @register("toy_scale", ToyScaleConfig, "toy: scale the update down", label="Toy scaling")
    class ToyScale:
        def __init__(self, config: ToyScaleConfig | None = None) -> None:
            self.config = config or ToyScaleConfig()

        def protect(self, update, ctx):
            factor = (1 - self.config.shrink) ** self.config.rounds
            tensors = {k: v * factor for k, v in update.tensors.items()}
            return update.with_tensors(tensors), DefenseDiagnostics("toy_scale", asdict(self.config),
                                                                    summary={"factor": factor})

        def describe(self) -> str:
            return "Scales the update down: a toy to show that a defense is one file."


@pytest.fixture
def toy():
    make_toy()
    yield "toy_scale"
    unregister("toy_scale")


# Two more one-file defenses whose strength knob is an integer (k-bit quantisation) and a choice.
@dataclass(frozen=True)
class ToyBitsConfig:
    bits: int = knob(8, "Bits", "quantise every entry to this many bits", low=1, high=16, role="strength",
                     grid=(2, 4, 8))

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True)
class ToyModeConfig:
    mode: Literal["sign", "keep"] = knob("keep", "Mode", "send the signs only, or keep the update", role="strength",
                                         grid=("sign", "keep"))

    def __post_init__(self) -> None:
        check(self)


@pytest.fixture
def typed_toys():
    @register("toy_bits", ToyBitsConfig, "toy: k-bit quantisation", label="Toy quantisation")
    class ToyBits:
        def __init__(self, config: ToyBitsConfig | None = None) -> None:
            self.config = config or ToyBitsConfig()

        def protect(self, update, ctx):
            assert isinstance(self.config.bits, int)  # the sweep hands an integer knob an integer
            levels = 2 ** self.config.bits
            tensors = {k: (v * levels).round() / levels for k, v in update.tensors.items()}
            return update.with_tensors(tensors), DefenseDiagnostics("toy_bits", asdict(self.config))

        def describe(self) -> str:
            return "Quantises the update."

    @register("toy_mode", ToyModeConfig, "toy: signs or the update", label="Toy signs")
    class ToyMode:
        def __init__(self, config: ToyModeConfig | None = None) -> None:
            self.config = config or ToyModeConfig()

        def protect(self, update, ctx):
            tensors = {k: (v.sign() if self.config.mode == "sign" else v) for k, v in update.tensors.items()}
            return update.with_tensors(tensors), DefenseDiagnostics("toy_mode", asdict(self.config))

        def describe(self) -> str:
            return "Sends signs."

    yield ("toy_bits", "toy_mode")
    unregister("toy_bits")
    unregister("toy_mode")


# A one-file defense whose knobs have exclusive bounds (a noise std > 0, a tap count in (1, 8)).
@dataclass(frozen=True)
class ToyJitterConfig:
    std: float = knob(0.1, "Jitter std", "add N(0, std²) to every entry", low=0.0, low_open=True, high=1.0,
                      high_open=True)
    taps: int = knob(3, "Taps", "smooth over this many entries", low=1, low_open=True, high=8, high_open=True)

    def __post_init__(self) -> None:
        check(self)


@pytest.fixture
def open_toy():
    @register("toy_jitter", ToyJitterConfig, "toy: jitter the update", label="Toy jitter")
    class ToyJitter:
        def __init__(self, config: ToyJitterConfig | None = None) -> None:
            self.config = config or ToyJitterConfig()

        def protect(self, update, ctx):
            return update, DefenseDiagnostics("toy_jitter", asdict(self.config))

        def describe(self) -> str:
            return "Jitters the update."

    yield "toy_jitter"
    unregister("toy_jitter")


# ----------------------------------------------------------------------------- where it shows up

def test_toy_defense_appears_in_cli_help_and_runs_with_its_generated_flag(toy, tmp_path) -> None:
    from tipcore.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as done:
        from tipcore.cli import build_parser

        build_parser("attack").parse_args(["attack", "--help"])
    assert done.value.code == 0
    text = " ".join(buf.getvalue().split())
    assert "toy_scale" in text and "--shrink" in text and "Shrink factor in [0, 1]" in text
    out = tmp_path / "run"
    assert main(["attack", "--defense", "toy_scale", "--shrink", "0.9", "--rounds", "2", "--iters", "1",
                 "--quiet", "--out", str(out)]) == 0
    import json

    result = json.loads((out / "result.json").read_text())
    assert result["spec"]["defense_cfg"] == {"shrink": 0.9, "rounds": 2}
    assert math.isclose(result["defense_summary"]["factor"], 0.01, rel_tol=1e-9)
    # Its declared ranges and types are enforced at the edge, with a one-line error.
    assert main(["attack", "--defense", "toy_scale", "--shrink", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert main(["attack", "--defense", "toy_scale", "--rounds", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_toy_defense_appears_in_the_sweep_grid(toy) -> None:
    from tipcore.studies import sweep

    grid = sweep.default_grid()
    assert grid["toy_scale"] == ("shrink", (0.25, 0.75))
    cfg = sweep.SweepConfig()  # every setting of the default grid is validated, the toy's included
    assert "toy_scale" in cfg.grid


def test_integer_and_choice_strength_knobs_sweep_with_their_own_types(typed_toys, tmp_path) -> None:
    import csv

    from tipcore.studies import sweep
    from tipcore.studies.cells import UtilityProtocol
    from tipcore.common.progress import drive

    grid = sweep.default_grid()
    assert grid["toy_bits"] == ("bits", (2, 4, 8)) and all(type(v) is int for v in grid["toy_bits"][1])
    assert grid["toy_mode"] == ("mode", ("sign", "keep"))
    # A grid read back from JSON or CSV (4.0, "8") is typed again, and a value of the wrong kind is refused.
    assert sweep.SweepConfig(grid={"toy_bits": ("bits", (4.0, "8"))}).settings()[1].value == 8
    with pytest.raises(ValueError, match="integer"):
        sweep.SweepConfig(grid={"toy_bits": ("bits", (2.5,))})
    with pytest.raises(ValueError, match="one of"):
        sweep.SweepConfig(grid={"toy_mode": ("mode", ("loud",))})
    cfg = sweep.SweepConfig(grid={"toy_bits": ("bits", (2,)), "toy_mode": ("mode", ("sign",))}, images=1,
                            iterations=1, adaptive=(), utility=UtilityProtocol(rounds=1, clients=2, seeds=(0,)))
    drive(sweep.run(cfg, tmp_path))
    rows = {r["defense"]: r for r in csv.DictReader((tmp_path / "attacks.csv").open())}
    assert rows["toy_bits"]["strength"] == "2" and rows["toy_mode"]["strength"] == "sign"
    assert {r["defense"] for r in csv.DictReader((tmp_path / "utility" / "utility.csv").open())} == set(rows)


def test_toy_defense_appears_in_the_apps_defense_picker_with_its_knobs(toy) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
    at.switch_page("views/live.py").run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.multiselect(key="w_defenses")
    assert "toy_scale" in picker.options or "Toy scaling" in picker.options
    picker.set_value(["none", "toy_scale"]).run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [w.label for w in at.number_input]
    assert "Shrink factor" in labels and "Repeats" in labels


def test_toy_knobs_symbol_labels_the_apps_charts_and_table(toy) -> None:
    """The frontier page writes a defense's knob as its config declares it (the toy's shrink as λ); a knob
    without a symbol is written by its name."""
    pytest.importorskip("streamlit")
    from app import resources
    from app.components import knob_symbol, privacy_curves_figure, strength_facets

    assert resources.engine_warmup().wait(120)  # the frontier page is drawn once the engine has loaded

    assert knob_symbol("toy_scale", "shrink") == "λ" and knob_symbol("toy_scale", "rounds") == "rounds"
    assert knob_symbol("tip", "beta") == "β" and knob_symbol("dp", "noise_multiplier") == "z"
    point = {"defense": "toy_scale", "knob": "shrink", "attacker": "naive", "attack": "idlg", "strength": 0.25,
             "psnr": 10.0, "psnr_std": 1.0, "ssim": 0.1, "label_accuracy": 1.0, "accuracy": 0.5,
             "update_cosine": 0.9, "noise_to_signal": 0.1, "images": 2}
    points = [point, {**point, "strength": 0.75}, {**point, "knob": "rounds", "strength": 2}]
    facets = strength_facets(points, {})
    titles = [a.text for a in facets.layout.annotations]
    assert "Toy scaling: λ" in titles and "Toy scaling: rounds" in titles
    # A setting without a knob (the baseline, whatever its name) is a reference point, not a panel of its own.
    alone = strength_facets([*points, {**point, "knob": "", "strength": 0.0}], {})
    assert sorted(a.text for a in alone.layout.annotations) == sorted(titles)
    assert {facets.layout.xaxis.title.text, facets.layout.xaxis2.title.text} == {"λ", "rounds"}
    curves = privacy_curves_figure(points, {})
    assert any(t.name == "Toy scaling · naive attacker (λ)" for t in curves.data)
    assert {t.customdata[0][1] for t in curves.data if t.customdata is not None} == {"λ", "rounds"}  # hover


def test_a_generated_number_widget_offers_exactly_the_knobs_range(open_toy) -> None:
    """An exclusive bound is not offered: the widget starts at the first value inside it (the next float, the
    next integer), so no value it offers is one the knob refuses."""
    pytest.importorskip("streamlit")
    at = _live_app()
    at.multiselect(key="w_defenses").set_value(["none", "toy_jitter"]).run()
    assert not at.exception, [e.value for e in at.exception]
    std, taps = _knob_input(at, "Jitter std"), _knob_input(at, "Taps")
    assert std.min == math.nextafter(0.0, 1.0) and std.max == math.nextafter(1.0, 0.0)
    assert (taps.min, taps.max) == (2, 7)
    for value in (std.min, std.max):
        ToyJitterConfig(std=value)  # the ends the widget offers are valid
    ToyJitterConfig(taps=int(taps.min)), ToyJitterConfig(taps=int(taps.max))


def _live_app(query: dict[str, str] | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    at.switch_page("views/live.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _link(at) -> dict[str, str]:
    params = {k: at.query_params[k] for k in at.query_params}
    return {k: v[0] if isinstance(v, list) else v for k, v in params.items()}


def _knob_input(at, label: str):
    found = [w for w in at.number_input if w.label == label]
    assert len(found) == 1, [w.label for w in at.number_input]
    return found[0]


def test_a_generated_widgets_value_lives_in_the_settings_the_share_link_and_the_run(toy) -> None:
    pytest.importorskip("streamlit")
    from app import controls, resources
    from app.state import Settings

    at = _live_app()
    at.multiselect(key="w_defenses").set_value(["none", "toy_scale"]).run()
    _knob_input(at, "Repeats").set_value(3).run()  # the toy's integer knob
    assert not at.exception, [e.value for e in at.exception]
    # It is in the share link, compactly (the untouched shrink stays out), and the link reads back to the
    # same settings, the integer as an integer.
    link = _link(at)
    assert link.get("defense_opts") == "toy_scale.rounds:3"
    s = at.session_state["settings"]
    back, problems = Settings.from_query(link)
    assert problems == [] and back == s and type(back.defense_opts.get("toy_scale", "rounds")) is int
    # It survives a page switch (Streamlit forgets a widget that is not drawn; the settings do not).
    at.switch_page("views/tip.py").run()
    at.switch_page("views/live.py").run()
    assert _knob_input(at, "Repeats").value == 3 and _link(at).get("defense_opts") == "toy_scale.rounds:3"
    # Reopening the link restores the widget, and the run's RunSpec carries the value.
    again = _live_app(link)
    assert _knob_input(again, "Repeats").value == 3
    item = resources.gallery_item(again.session_state["settings"].image_id)
    image = controls.ImageChoice(key=item.id, image=None, label=item.label, dataset=item.dataset, num_classes=10,
                                 caption="", gallery_id=item.id)
    plan = dict(controls.build_plan(again.session_state["settings"], image))
    assert plan["toy_scale"].defense_cfg == {"shrink": 0.5, "rounds": 3}
    # A bad value in a link is a message, read with the knob's own type and range; the rest of it holds.
    bad = _live_app({"defenses": "none,toy_scale", "defense_opts": "toy_scale.rounds:9,toy_scale.shrink:0.25,"
                                                                   "toy_scale.rounds:1.5,toy_scale.volume:2,nope"})
    warnings = " ".join(w.value for w in bad.warning)
    assert "rounds must be in [1, 5]" in warnings and "rounds expects an integer" in warnings
    assert "no option 'volume'" in warnings and "expected defense.knob:value" in warnings
    assert _knob_input(bad, "Repeats").value == 1 and _knob_input(bad, "Shrink factor").value == 0.25


# ----------------------------------------------------------------------------- the declarations themselves

def test_roles_drive_budget_clip_and_strength() -> None:
    tip = defenses.DEFENSES["tip"]
    assert tip.uses_budget and tip.takes_clip and tip.strength() == ("beta", (1e-4, 1e-3, 1e-2, 1e-1, 1.0))
    assert not defenses.DEFENSES["prune"].uses_budget and not defenses.DEFENSES["prune"].takes_clip
    assert defenses.DEFENSES["dp"].strength() is None  # a strength knob without a grid: not swept
    assert defenses.DEFENSES["tip_random"].strength()[1] == (1e-3, 1e-2, 1e-1, 1.0)  # the registration's own grid


@pytest.mark.parametrize("value, message", [
    (float("inf"), "finite"), (float("nan"), "finite"), ("0.5", "number"), (True, "number"), (1.5, r"\[0, 1\]"),
])
def test_check_rejects_bad_values_by_declared_type_and_range(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        ToyScaleConfig(shrink=value)


def test_knob_table_is_plain_data_for_a_ui() -> None:
    rows = {r["name"]: r for r in knobs.table(ToyScaleConfig)}
    assert rows["shrink"]["kind"] == "float" and rows["shrink"]["range"] == "[0, 1]"
    assert rows["shrink"]["symbol"] == "λ" and rows["rounds"]["symbol"] == "rounds"  # no symbol: the name
    assert rows["rounds"]["kind"] == "int" and rows["rounds"]["default"] == 1
    assert knobs.describe(ToyScaleConfig, "rounds").startswith("Repeats in [1, 5]")
