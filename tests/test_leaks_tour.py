"""The "What leaks" view (the update before and after TIP) and the Teach page's guided tour: the engine's
numbers are right, the page draws exactly those numbers for LeNet and ResNet-18 and follows the sliders, and
every tour step sets the settings it says and opens its page."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 120  # ResNet-18's Grad-CAM on a loaded 2-core machine
CAT = 3  # cifar10-00's label


def new_app(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r} among {[m.label for m in at.metric]}")


def chart(at: AppTest, title_start: str) -> dict:
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        if spec.get("layout", {}).get("title", {}).get("text", "").startswith(title_start):
            return spec
    raise AssertionError(f"no chart titled {title_start!r}…")


def array(value: object) -> np.ndarray:
    """A plotly JSON array: a plain list, or a typed array ({"dtype", "bdata" in base64, "shape"})."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return flat.reshape(shape) if shape else flat
    return np.array(value, dtype=float)


def energy_panels(at: AppTest) -> dict[str, np.ndarray]:
    """The per-channel energies the overview chart draws, by panel name (NaN where a layer has no channel)."""
    spec = chart(at, "Kernel-gradient energy per output channel")
    return {t["name"]: array(t["customdata"]).astype(float) for t in spec["data"] if "customdata" in t}


# ------------------------------------------------------------------------------------------ engine


@pytest.fixture(scope="module")
def lenet_explainer():
    from tipcore.federation import data
    from tipcore.explorer.previews import TipExplainer
    from tipcore.federation.fl import RoundConfig

    return TipExplainer("lenet", data.sample_image("cifar10-00"), CAT,
                        round_cfg=RoundConfig(mode="fedsgd", batch_size=1, clip=5.0))


def test_leaks_change_exactly_the_selected_channels(lenet_explainer) -> None:
    preview = lenet_explainer.preview({"ratio": 0.3, "clip": 5.0})
    leaks = lenet_explainer.leaks(preview)
    assert [c.layer for c in leaks.convs] == lenet_explainer.layer_names
    for conv in leaks.convs:
        c_out = conv.clean.size
        k = max(1, int(np.floor(0.3 * c_out)))
        assert len(conv.selected) == k
        changed = np.flatnonzero(conv.difference)
        # LeNet's 5 x 5 kernels all have bins beyond r = 0.5: every selected channel is noised, nothing else
        assert changed.tolist() == list(conv.selected)
        rest = np.setdiff1d(np.arange(c_out), conv.selected)
        assert np.array_equal(conv.clean[rest], conv.defended[rest])  # sent bit for bit
        assert np.all(conv.difference[rest] == 0.0)
        assert np.all(conv.defended[list(conv.selected)] != conv.clean[list(conv.selected)])
    # the difference is the noise TIP reports adding, layer by layer
    for conv, diag in zip(leaks.convs, preview.layers):
        assert conv.difference.sum() == pytest.approx(diag.noise_energy, rel=1e-5)


def test_fc_row_of_the_true_label_has_the_opposite_sign(lenet_explainer) -> None:
    leaks = lenet_explainer.leaks(lenet_explainer.preview({"ratio": 0.1, "clip": 5.0}))
    fc = leaks.fc
    assert fc is not None and fc.rows.shape == (10, 768)
    assert fc.row_sums[CAT] < 0
    assert np.all(np.delete(fc.row_sums, CAT) > 0)
    # one image, one FedSGD step, sigmoid features: the whole row has the sign, not only its sum
    assert np.all(fc.rows[CAT] <= 0) and np.all(np.delete(fc.rows, CAT, axis=0) >= 0)
    assert fc.true_label == CAT and fc.inferred_label == CAT
    assert fc.max_change == 0.0  # TIP leaves the fc layer alone


# ------------------------------------------------------------------------------------------ page


@pytest.mark.parametrize("model", ["lenet", "resnet18"])
def test_leaks_page_draws_the_update(model: str) -> None:
    at = new_app({"model": model})
    at.switch_page("views/leaks.py").run()
    no_exceptions(at)
    panels = energy_panels(at)
    clean = panels["computed by the client"]
    received = panels["received by the server"]
    difference = panels["difference (what the defense added)"]
    layers = np.isfinite(clean).sum(axis=1)  # channels per layer
    changed = (difference > 0).sum()
    total = int(layers.sum())
    assert metric(at, "Channels changed") == f"{changed}/{total}"
    assert metric(at, "Channels sent exactly") == f"{total - changed}/{total}"
    # each layer: at most k = max(1, floor(0.1 C_out)) channels changed, and exactly zero difference (and the
    # clean value received bit for bit) everywhere else
    for row, c_out in enumerate(layers):
        diff_row = difference[row, :c_out]
        assert (diff_row > 0).sum() <= max(1, int(0.1 * c_out))
        same = diff_row == 0
        assert np.array_equal(clean[row, :c_out][same], received[row, :c_out][same])
    assert changed > 0
    assert metric(at, "iDLG infers") == "cat" and metric(at, "True label") == "cat"
    assert metric(at, "Largest change to fc") == "0: sent exactly"
    sums = array(chart(at, "The fc layer as the server receives it")["data"][1]["x"])
    assert int(np.argmin(sums)) == CAT and sums[CAT] < 0 < min(np.delete(sums, CAT))


def test_leaks_page_follows_the_tip_sliders() -> None:
    at = new_app()
    at.switch_page("views/leaks.py").run()
    assert metric(at, "Channels changed") == "3/36"  # LeNet: 3 conv layers of 12 channels, k = 1 each
    at.slider(key="w_ratio").set_value(0.5).run()
    no_exceptions(at)
    assert metric(at, "Channels changed") == "18/36"  # k = 6 per layer
    assert (energy_panels(at)["difference (what the defense added)"] > 0).sum() == 18


# ------------------------------------------------------------------------------------------ tour

TITLES = {"views/live.py": "Live attack", "views/leaks.py": "What leaks", "views/frontier.py": "Privacy–utility",
          "views/tip.py": "How TIP works"}


def test_tour_has_five_to_seven_steps_with_math() -> None:
    from app import tour

    assert 5 <= len(tour.STEPS) <= 7
    at = new_app()
    at.switch_page("views/teach.py").run()
    no_exceptions(at)
    assert len(at.get("latex")) >= len(tour.STEPS)
    assert [b.key for b in at.button if b.key.startswith("tour_")] == [f"tour_{i}" for i in range(len(tour.STEPS))]
    with pytest.raises(ValueError, match="unknown settings"):
        tour.TourStep("bad", "views/live.py", {"no_such_setting": 1}, "", "")


def test_each_tour_step_sets_its_settings_and_opens_its_page() -> None:
    from app import tour
    from app.state import Settings

    # start far from every step: another model, image, ratio, attacker and defenses
    at = new_app({"model": "convnet", "image_id": "cifar10-05", "ratio": "0.45", "adaptive": "lowpass",
                  "defenses": "prune", "iterations": "7"})
    for i, step in enumerate(tour.STEPS):
        at.switch_page("views/teach.py").run()
        at.button(key=f"tour_{i}").click().run()
        no_exceptions(at)
        assert at.title[0].value.startswith(TITLES[step.page]), (i, at.title[0].value)
        s = at.session_state["settings"]
        # "" (first layer) and -1 (first selected channel) are resolved by the page that draws them
        want = {k: v for k, v in step.values().items() if k not in ("layer", "channel")}
        got = {name: getattr(s, name) for name in want}
        assert got == want, i
        for name, value in step.settings.items():
            assert getattr(s, name) == value
        # the URL carries the step: a shared link reproduces it
        params = {k: at.query_params[k] for k in at.query_params}
        params = {k: v[0] if isinstance(v, list) else v for k, v in params.items()}
        from_url, problems = Settings.from_query(params)
        assert problems == [] and all(getattr(from_url, n) == v for n, v in want.items()), i


def test_formulas_of_several_parts_have_a_phone_copy_in_lines() -> None:
    """A formula joined by \\quad is also written in lines (shown instead on a phone: app/main.py's CSS);
    one of a single part is drawn once. Teach draws both copies of each tour formula (panels.formula)."""
    from app import tour
    from app.components import formula_lines

    assert formula_lines(r"x = 1") is None
    assert formula_lines(r"a = 1,\quad b = 2\qquad c") == r"\begin{gathered}a = 1, \\ b = 2 \\ c\end{gathered}"
    assert formula_lines(r"a\quad\Rightarrow\quad b") == r"\begin{gathered}a \\ \Rightarrow\ b\end{gathered}"
    assert sum(formula_lines(step.formula) is not None for step in tour.STEPS) >= 4  # the long ones
    at = new_app()
    at.switch_page("views/teach.py").run()
    no_exceptions(at)
    shown = [el.value.strip("$\n") for el in at.get("latex")]  # st.latex wraps the text in $$ lines
    for step in tour.STEPS:
        narrow = formula_lines(step.formula)
        assert step.formula in shown and (narrow is None or narrow in shown), step.title
