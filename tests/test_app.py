"""The Streamlit app, driven headless with streamlit.testing (no browser): pages render, sliders and presets
change what is shown, a tiny attack runs and its results persist, bad uploads fail cleanly, URLs round-trip.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 60
FORBIDDEN = ("torch", "pytorch_grad_cam", "torchvision")


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


def selected_text(at: AppTest) -> str:
    found = [md.value for md in at.markdown if md.value.startswith("**Selected in")]
    assert found, "the 'Selected in …' line is missing"
    return found[0]


def chart_titles(at: AppTest) -> list[str]:
    titles = []
    for chart in at.get("plotly_chart"):
        layout = json.loads(chart.proto.spec).get("layout", {})
        titles.append(layout.get("title", {}).get("text", "").replace("<br>", " "))  # lines broken for phones
    return titles


def alpha_chart_traces(at: AppTest) -> list[str]:
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if "α" in spec.get("layout", {}).get("title", {}).get("text", ""):
            return [trace["name"] for trace in spec["data"]]
    raise AssertionError("no α chart")


def wait_for_results(at: AppTest, limit: float = 120.0) -> None:
    start = time.monotonic()
    while "results" not in at.session_state:
        assert time.monotonic() - start < limit, "the attack did not finish in time"
        time.sleep(1.0)  # each rerun competes with the attack thread for the GIL: poll gently
        at.run()
    no_exceptions(at)


def click(at: AppTest, label: str) -> AppTest:
    for b in at.button:
        if b.label == label:
            return b.click().run()
    raise AssertionError(f"no button {label!r}")


# ------------------------------------------------------------------------------------------ structure


def test_app_never_imports_torch() -> None:
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.relative_to(ROOT)} imports {name}"


def test_settings_query_round_trip() -> None:
    from app.state import Settings

    s = Settings(model="convnet", defenses=("none", "tip_random"), ratio=0.35, delta=1e-6, labels_known=True,
                 seed=7, image_id="cifar100-03", dataset="cifar100", attack="ig", adaptive="drop")
    query = s.to_query()
    assert "source" not in query  # defaults stay out of the URL
    back, problems = Settings.from_query(query)
    assert back == s and problems == []
    bad, problems = Settings.from_query({"seed": "seven", "ratio": "nan", "unknown": "x"})
    assert bad.seed == 0 and bad.ratio == Settings().ratio and len(problems) == 2


def test_attack_slots_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import resources

    monkeypatch.setenv("TIP_MAX_CONCURRENT_ATTACKS", "3")
    assert resources.max_concurrent_attacks() == 3
    monkeypatch.setenv("TIP_MAX_CONCURRENT_ATTACKS", "zero")
    assert resources.max_concurrent_attacks() == resources.DEFAULT_MAX_ATTACKS
    slots = resources.AttackSlots(1)
    assert slots.acquire(0.01) and slots.active == 1
    assert not slots.acquire(0.01)
    slots.release()
    assert slots.active == 0


def _waiting_runner(calls: list):
    def runner(cfg, images, *, should_stop, on_event):
        calls.append(cfg)
        while not should_stop():
            time.sleep(0.01)
        return f"record of {cfg}"
    return runner


def test_a_just_started_job_waits_for_its_first_snapshot_and_a_queued_one_does_not() -> None:
    from types import SimpleNamespace

    from app import jobs, resources

    def runner(cfg, images, *, should_stop, on_event):
        time.sleep(0.3)
        on_event(SimpleNamespace(step=1, loss=1.0))
        while not should_stop():
            time.sleep(0.01)
        return f"record of {cfg}"

    slots = resources.AttackSlots(1)
    window = 600.0  # "just started" however loaded the machine is
    first = jobs.Job(plan=[("none", "a")], images=None, slots=slots, iterations=10,
                     first_snapshot_window_s=window).start(runner)
    second = jobs.Job(plan=[("none", "b")], images=None, slots=slots, iterations=10,
                      first_snapshot_window_s=window).start(runner)
    deadline = time.monotonic() + 60
    while first.status != "running" and time.monotonic() < deadline:  # state, not a fixed delay
        time.sleep(0.01)
    assert second.status == "waiting"
    waited = time.monotonic()
    assert not second.wait_first_snapshot(30)  # queued: returns at once instead of stalling the page
    assert time.monotonic() - waited < 5
    assert first.wait_first_snapshot(30)  # running: returns when the snapshot is there
    assert first.latest["none"].step == 1
    first.stop(), second.stop()
    assert first.wait(60) and second.wait(60)
    assert second.first_snapshot.is_set()  # ended without a snapshot: a waiting page is released too


def test_jobs_share_the_slots_and_abandoned_jobs_stop() -> None:
    from app import jobs, resources

    slots = resources.AttackSlots(1)
    calls: list = []
    first = jobs.Job(plan=[("none", "a1"), ("tip", "a2")], images=None, slots=slots,
                     iterations=10).start(_waiting_runner(calls))
    second = jobs.Job(plan=[("none", "b1")], images=None, slots=slots, iterations=10,
                      abandon_s=1.5).start(_waiting_runner(calls))
    deadline = time.monotonic() + 10
    # Wait until the first job's runner has really started on a1 (its status turns "running" just before).
    while not (first.status == "running" and slots.waiting == 1 and calls == ["a1"]):
        assert time.monotonic() < deadline, (first.status, second.status)
        time.sleep(0.01)
    assert second.status == "waiting" and slots.active == 1 and slots.position(second) == 0
    first.stop()
    assert first.wait(5) and first.status == "stopped" and first.records == {"none": "record of a1"}
    # The second job got the slot, and nobody polls it: it is abandoned, stops, and frees the slot.
    assert second.wait(5) and second.status == "stopped" and calls == ["a1", "b1"]
    assert slots.active == 0


# ------------------------------------------------------------------------------------------ pages


def test_first_page_is_drawn_before_the_engine_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold start: the punchline (a visitor's first view, drawn from precomputed assets) and Teach never wait
    for the engine and never read its registries (torch) while it loads; their words are the registries' own.
    The engine pages do wait."""
    from app import resources

    def captions(at: AppTest) -> list[str]:
        return [c.value for c in at.caption]

    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()  # the engine loaded: the registries' labels
    no_exceptions(at)
    loaded = captions(at)
    waited: list[str] = []

    class Loading:
        error = None
        ready = False
        core_ready = False

        def wait(self, timeout: float | None = None) -> bool:
            waited.append("full")
            return True

        def wait_core(self, timeout: float | None = None) -> bool:
            waited.append("core")
            return True

    def no_registries() -> None:
        raise AssertionError("the first page read the engine's registries while the engine loads")

    monkeypatch.setattr(resources, "engine_warmup", lambda: Loading())
    monkeypatch.setattr(resources, "engine_core_ready", lambda: False)
    monkeypatch.setattr(resources, "registries", no_registries)
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()
    no_exceptions(at)
    assert at.title[0].value == "Can the server see your photo in a gradient?" and waited == []
    if any(m.label == "PSNR (dB)" for m in at.metric):  # the precomputed comparison is drawn, in the same words
        assert captions(at) == loaded and any(c.startswith("attacker: iDLG + ") for c in loaded)
    at.switch_page("views/teach.py").run()
    no_exceptions(at)
    assert waited == []
    monkeypatch.undo()
    monkeypatch.setattr(resources, "engine_warmup", lambda: Loading())
    at.switch_page("views/live.py").run()
    assert waited == ["full"]


def test_punchline_renders_without_compute() -> None:
    at = new_app()
    no_exceptions(at)
    assert at.title[0].value.startswith("Can the server see")
    # Either the precomputed comparison (PSNR metrics) or the info naming the command that makes it.
    has_metrics = any(m.label == "PSNR (dB)" for m in at.metric)
    has_info = any("python" in i.value for i in at.info)
    assert has_metrics or has_info


def test_punchlines_tip_label_note_follows_the_tip_family_not_a_name_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """The note on TIP's leaked label is shown for a TIP-family entry (app.state.TIP_FAMILY), and not for
    another defense whose name merely starts with "tip"."""
    from dataclasses import replace

    from tipcore.explorer import showcase

    from app import resources

    punch = showcase.load_punchline()
    if punch is None:
        pytest.skip("no precomputed punchline")
    note = "Note the label under TIP"

    def page_with(defense: str):
        entries = tuple(replace(e, defense=defense) if e.defense == "tip" else e for e in punch.entries)
        monkeypatch.setattr(showcase, "load_punchline", lambda: replace(punch, entries=entries))
        resources.punchline.clear()
        at = new_app()
        no_exceptions(at)
        return [c.value for c in at.caption if c.value.startswith(note)]

    try:
        assert page_with("tip_random") and not page_with("tipsy")
    finally:
        resources.punchline.clear()


def _curve_point(defense: str, knob: str, strength: float, attacker: str, attack: str, psnr: float,
                 accuracy: float | None) -> dict:
    return {"defense": defense, "knob": knob, "strength": strength, "noise_scale": strength if knob == "beta" else None,
            "attacker": attacker, "attack": attack, "psnr": psnr, "psnr_std": 1.0, "ssim": 0.5, "label_accuracy": 1.0,
            "accuracy": accuracy, "update_cosine": 0.9, "noise_to_signal": 10.0 * strength, "images": 2}


def write_synthetic_curves(path: Path) -> Path:
    """A made-up privacy-curves file in the sweep's schema (test data only, never committed)."""
    points = [_curve_point("none", "", 0.0, "naive", "idlg", 38.0, 0.95),
              _curve_point("none", "", 0.0, "adaptive", "idlg_drop", 37.0, 0.95)]
    for i, beta in enumerate((0.001, 0.01, 0.1)):
        points.append(_curve_point("tip", "beta", beta, "naive", "idlg", 20.0 - 6 * i, 0.94))
        points.append(_curve_point("tip", "beta", beta, "adaptive", "idlg_drop", 18.0 + 6 * i, 0.94))
        points.append(_curve_point("dp_paper", "epsilon", 10.0 ** (2 - i), "naive", "idlg", 30.0 - 8 * i,
                                   None if i == 2 else 0.9 - 0.2 * i))
        points.append(_curve_point("dp_paper", "epsilon", 10.0 ** (2 - i), "adaptive", "idlg_noise_aware",
                                   31.0 - 8 * i, None if i == 2 else 0.9 - 0.2 * i))
    path.write_text(json.dumps({"command": "python -m tipcore sweep --out runs/sweep", "settings": {"test": "yes"},
                                "reference": {"random_psnr": 5.1, "grey_psnr": 11.8}, "points": points}))
    return path


@pytest.fixture()
def synthetic_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's load_privacy_curves() serves a synthetic file from tmp_path."""
    from tipcore.explorer import showcase

    from app import resources

    path = write_synthetic_curves(tmp_path / "privacy_curves.json")
    load = showcase.load_privacy_curves
    monkeypatch.setattr(showcase, "load_privacy_curves", lambda: load(path))
    resources.privacy_curves.clear()
    yield path
    resources.privacy_curves.clear()


def test_privacy_curves_loader_checks_the_schema(tmp_path: Path) -> None:
    from tipcore.explorer import showcase

    path = write_synthetic_curves(tmp_path / "curves.json")
    curves = showcase.load_privacy_curves(path)
    assert curves is not None and {p["attacker"] for p in curves["points"]} == {"naive", "adaptive"}
    assert curves["reference"] == {"random_psnr": 5.1, "grey_psnr": 11.8}
    assert showcase.load_privacy_curves(tmp_path / "missing.json") is None
    for key, value in (("attacker", "clever"), ("psnr", None), ("accuracy", "high")):
        broken = json.loads(path.read_text())
        broken["points"][0][key] = value
        bad = tmp_path / f"bad_{key}.json"
        bad.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=key):
            showcase.load_privacy_curves(bad)


def test_frontier_shows_naive_and_adaptive_curves(synthetic_curves: Path) -> None:
    at = new_app()
    at.switch_page("views/frontier.py").run()
    no_exceptions(at)
    assert "Privacy–utility frontier" in chart_titles(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in spec["data"]]
    assert "TIP · naive attacker" in names and "TIP · adaptive attacker" in names
    dashes = {t["name"]: t["line"]["dash"] for t in spec["data"] if "line" in t}  # (legend swatches have none)
    assert dashes["TIP · naive attacker"] == "dash" and dashes["TIP · adaptive attacker"] == "solid"
    # Same colour per defense for both attackers.
    colours = {t["name"]: t["line"]["color"] for t in spec["data"] if "line" in t}
    assert colours["TIP · naive attacker"] == colours["TIP · adaptive attacker"]
    # Random-image and grey-guess PSNR as reference lines.
    ys = sorted(shape["y0"] for shape in spec["layout"]["shapes"])
    assert ys == [5.1, 11.8]
    # The strength panels and the regenerate command.
    assert "Attack PSNR against each defense's strength" in chart_titles(at)
    assert any("python -m tipcore sweep" in c.value for c in at.code)
    # Another axis keeps both attackers.
    at.radio(key="frontier_x").set_value("noise_to_signal").run()
    no_exceptions(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "log"
    assert {"DP (paper) · naive attacker", "DP (paper) · adaptive attacker"} <= {t["name"] for t in spec["data"]}


def test_tour_names_the_frontiers_line_styles_as_drawn(synthetic_curves: Path) -> None:
    """Tour step on the frontier: its words for the naive and adaptive curves are the chart's own styles."""
    from app import tour

    (step,) = [s for s in tour.STEPS if s.page == "views/frontier.py"]
    at = new_app()
    at.switch_page("views/frontier.py").run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    dash = {t["name"]: t["line"]["dash"] for t in spec["data"] if "line" in t}
    words = {"dash": "dashed", "solid": "solid"}
    assert f"naive ({words[dash['TIP · naive attacker']]}" in step.look_for
    assert f"adaptive ({words[dash['TIP · adaptive attacker']]}" in step.look_for
    # One legend entry per defense and per line style, below the plot (beside it, it hid a phone's plot).
    legend = [t["name"] for t in spec["data"] if t.get("showlegend", True)]
    assert "naive attacker" in legend and "adaptive attacker" in legend and "TIP" in legend
    assert not [n for n in legend if " · " in n]
    assert spec["layout"]["legend"]["orientation"] == "h" and spec["layout"]["legend"]["y"] < 0


def test_frontier_without_curves_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from tipcore.explorer import showcase

    from app import resources

    monkeypatch.setattr(showcase, "load_privacy_curves", lambda: None)
    resources.privacy_curves.clear()
    try:
        at = new_app()
        at.switch_page("views/frontier.py").run()
        no_exceptions(at)
        assert not at.get("plotly_chart")
        assert any("python -m tipcore showcase frontier" in i.value for i in at.info)
    finally:
        resources.privacy_curves.clear()


def test_punchline_shows_tip_against_the_adaptive_attacker() -> None:
    from tipcore.explorer import showcase

    at = new_app()
    no_exceptions(at)
    punch = showcase.load_punchline()
    if punch is None:
        pytest.skip("no precomputed punchline")
    from tipcore import attacks

    best = punch.best_adaptive("tip")
    pairs = [(e.defense, e.attack) for e in punch.entries]
    assert pairs == [("none", "idlg"), ("dp", "idlg"), ("tip", "idlg"), ("tip", best.attack)]
    assert attacks.is_adaptive(best.attack)
    assert [m.label for m in at.metric].count("PSNR (dB)") == 4
    assert any(c.value.startswith(f"attacker: {attacks.ATTACKS[best.attack].label}, ") for c in at.caption)
    assert any(i.value.startswith("Why: TIP leaves most of the update clean") for i in at.info)
    # The strongest adaptive attacker recovers the image the naive one cannot (the precomputed numbers say so).
    assert best.psnr > punch.entry("tip", "idlg").psnr + 15


def test_the_pages_name_the_adaptive_attacker_that_won_and_how_many_it_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A punchline whose best adaptive attacker flags no channels (low-pass, best of 3): the first page names it
    (also while the engine loads, from the label the punchline recorded), the TIP page's panel titles it, and
    its channel chart says whose flags it shows."""
    from dataclasses import replace

    from tipcore.explorer import showcase

    from app import resources

    punch = showcase.load_punchline()
    if punch is None:
        pytest.skip("no precomputed punchline")
    best = punch.best_adaptive("tip")
    won = replace(best, attack="idlg_lowpass", label="iDLG + low-pass", analysis={},
                  candidates={"idlg_drop": best.psnr - 4, "idlg_lowpass": best.psnr, "idlg_energy": best.psnr - 9})
    entries = tuple(won if e is best else e for e in punch.entries)
    monkeypatch.setattr(showcase, "load_punchline",
                        lambda: replace(punch, entries=entries, channels_attack="idlg_drop"))
    caption = "attacker: iDLG + low-pass, the best of 3 adaptive attackers"

    class Loading:
        error, ready, core_ready = None, False, False

        def wait(self, timeout: float | None = None) -> bool:
            return True

        def wait_core(self, timeout: float | None = None) -> bool:
            return True

    def no_registries() -> None:
        raise AssertionError("the first page read the engine's registries while the engine loads")

    resources.punchline.clear()
    try:
        at = new_app()
        no_exceptions(at)
        assert caption in [c.value for c in at.caption]
        at.switch_page("views/tip.py").run()
        no_exceptions(at)
        assert "**TIP vs iDLG + low-pass**" in [md.value for md in at.markdown]
        texts = [c.value for c in at.caption]
        assert "the best of 3 adaptive attackers against this update" in texts  # no detection: it flags none
        assert any("Outlined: the channels iDLG + drop (the strongest attacker here that flags channels; "
                   "iDLG + low-pass flags none) flagged" in c for c in texts)
        assert any("set **Attacker knows the defense** to *matches low frequencies only*" in c for c in texts)
        with monkeypatch.context() as loading:
            loading.setattr(resources, "engine_warmup", lambda: Loading())
            loading.setattr(resources, "engine_core_ready", lambda: False)
            loading.setattr(resources, "registries", no_registries)
            at = new_app()
            no_exceptions(at)
            assert caption in [c.value for c in at.caption]  # the recorded label, not "iDLG + lowpass"
    finally:
        resources.punchline.clear()


def test_tip_and_teach_pages_show_tip_against_both_attackers() -> None:
    from tipcore import attacks
    from tipcore.explorer import showcase

    punch = showcase.load_punchline()
    if punch is None:
        pytest.skip("no precomputed punchline")
    adaptive = f"**TIP vs {attacks.ATTACKS[punch.best_adaptive('tip').attack].label}**"  # the winner, by name
    at = new_app()
    at.switch_page("views/tip.py").run()
    no_exceptions(at)
    heads = [md.value for md in at.markdown]
    assert "**TIP vs the naive iDLG**" in heads and adaptive in heads
    assert any(t.startswith("What the attacker sees") for t in chart_titles(at))
    at.switch_page("views/teach.py").run()
    no_exceptions(at)
    assert adaptive in [md.value for md in at.markdown]


def test_every_page_renders() -> None:
    at = new_app()
    for page in ("views/live.py", "views/tip.py", "views/leaks.py", "views/frontier.py", "views/teach.py"):
        at.switch_page(page).run()
        no_exceptions(at)
        assert at.title, page


def test_tip_sliders_change_the_view() -> None:
    at = new_app()
    at.switch_page("views/tip.py").run()
    no_exceptions(at)
    assert metric(at, "Channels noised") == "3/36"  # LeNet: 3 layers x 12 channels, k = 1 at p = 0.1
    assert any(n.startswith("selected: noised (k = 1)") for n in alpha_chart_traces(at))
    before = selected_text(at)

    at.slider(key="w_ratio").set_value(0.5).run()
    no_exceptions(at)
    assert metric(at, "Channels noised") == "18/36"
    assert any(n.startswith("selected: noised (k = 6)") for n in alpha_chart_traces(at))
    assert selected_text(at) != before
    assert at.query_params["ratio"] == ["0.5"] or at.query_params["ratio"] == "0.5"

    energy = metric(at, "Noise energy Σ ΔW²")
    at.slider(key="w_cutoff").set_value(1.0).run()  # 5x5 kernels: only the 4 corner bins stay noised
    no_exceptions(at)
    assert metric(at, "Noise energy Σ ΔW²") != energy

    at.radio(key="w_noise").set_value("direct").run()
    at.number_input(key="w_beta").set_value(0.0).run()
    no_exceptions(at)
    assert metric(at, "β (per-element scale)") == "0"
    assert metric(at, "σ of the round") == "direct β"

    at.selectbox(key="w_layer").set_value("body.4").run()
    assert "Selected in body.4" in selected_text(at)
    titles = chart_titles(at)
    assert any(t.startswith("Grad-CAM at body.4") for t in titles)
    assert any("Kernel W[" in t for t in titles) and any("DFT" in t for t in titles)


def test_preset_fills_the_controls() -> None:
    at = new_app()
    at.switch_page("views/live.py").run()
    estimate = [md.value for md in at.markdown if md.value.startswith("Estimated time")]
    at.selectbox(key="w_preset").set_value("paper").run()
    no_exceptions(at)
    s = at.session_state["settings"]
    got = (s.model, s.attack, s.mode, s.local_steps, s.clip, s.labels_known)
    assert got == ("resnet18", "ig", "fedavg", 4, 5.0, True)
    assert at.selectbox(key="w_model").value == "resnet18"
    assert [md.value for md in at.markdown if md.value.startswith("Estimated time")] != estimate
    assert at.query_params["model"] in (["resnet18"], "resnet18")
    # Changing one value afterwards marks the preset as modified.
    at.number_input(key="w_iterations").set_value(10).run()
    assert any("Modified from the preset" in c.value for c in at.sidebar.caption)


def test_run_streams_results_that_persist() -> None:
    at = new_app({"iterations": "5", "defenses": "none,tip"})
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    assert at.session_state["settings"].iterations == 5
    click(at, "Run attack")
    # One script run after the click already draws the running page (no idle redraw and rerun first).
    assert any(md.value.startswith("Running:") for md in at.markdown)
    assert [b for b in at.button if b.label == "Run attack"][0].disabled
    wait_for_results(at)
    res = at.session_state["results"]
    assert [d.defense for d in res.defenses] == ["none", "tip"]
    assert res.elapsed_s is not None and not any(d.from_cache for d in res.defenses)
    assert any(c.value.startswith("The attacks took") for c in at.caption)  # the real time, after the run
    for d in res.defenses:
        assert d.iterations == 5 and d.images.shape == (1, 32, 32, 3)
        assert json.loads(d.files["result.json"])["defense"] == d.defense
    assert res.metrics_csv.startswith(b"defense,attack")
    assert list(at.table[0].value["defense"]) == ["No defense", "TIP"]
    labels = [b.label for b in at.get("download_button")]
    assert {"Figure (PNG)", "Metrics (CSV)", "All artifacts (ZIP)"} <= set(labels)

    # Results survive reruns and a round trip through another page.
    at.run()
    at.switch_page("views/teach.py").run()
    at.switch_page("views/live.py").run()
    assert at.session_state["results"] is res
    assert len(at.table[0].value) == 2

    # The same settings in a new session (a shared link) open with these results from the cache, no run.
    at2 = new_app({"iterations": "5", "defenses": "none,tip"})
    at2.switch_page("views/live.py").run()
    no_exceptions(at2)
    assert "job" not in at2.session_state
    cached = at2.session_state["results"]
    assert [d.defense for d in cached.defenses] == ["none", "tip"] and all(d.from_cache for d in cached.defenses)
    assert [d.files for d in cached.defenses] == [d.files for d in res.defenses]
    assert any("result cache" in c.value for c in at2.caption)
    # Other settings are not answered from it.
    at3 = new_app({"iterations": "6", "defenses": "none,tip"})
    at3.switch_page("views/live.py").run()
    assert "results" not in at3.session_state


def test_adaptive_attackers_are_offered_and_links_name_them() -> None:
    at = new_app()
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    assert at.selectbox(key="w_attack").options == ["DLG", "iDLG", "Inverting Gradients"]
    # Every registered matcher is offered under its own label, whatever is registered (not a pinned list).
    from tipcore import attacks

    offered = at.selectbox(key="w_adaptive").options
    registered = [spec.label for name, spec in attacks.MATCHERS.items() if name != attacks.registry.NAIVE]
    assert offered[0] == "no: naive attacker" and sorted(offered[1:]) == sorted(registered)
    assert {"drops the noised channels", "matches low frequencies only", "noise-aware weighting",
            "drops channels of outlying energy"} <= set(offered)
    at.selectbox(key="w_adaptive").set_value("lowpass").run()
    no_exceptions(at)
    assert at.query_params["adaptive"] in (["lowpass"], "lowpass")
    assert any("iDLG + low-pass (knows the defense)" in md.value for md in at.markdown)
    # A link may also name the engine's attack directly.
    at = new_app({"attack": "ig_noise_aware"})
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    s = at.session_state["settings"]
    assert (s.attack, s.adaptive) == ("ig", "noise_aware")
    assert at.selectbox(key="w_adaptive").value == "noise_aware"


def test_adaptive_run_shows_detection() -> None:
    at = new_app({"iterations": "3", "defenses": "tip", "attack": "idlg", "adaptive": "drop"})
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    click(at, "Run attack")
    wait_for_results(at)
    res = at.session_state["results"]
    (d,) = res.defenses
    assert d.attack == "idlg_drop" and d.iterations == 3
    det = d.analysis["detection"]
    assert det["noised"] == 3 and det["precision"] == 1.0 and det["recall"] == 1.0  # TIP's 3 channels, found
    assert json.loads(d.files["result.json"])["update"]["detection"] == det  # the CLI's file, unchanged
    assert metric(at, "Detection precision") == "1.00" and metric(at, "Detection recall") == "1.00"
    assert any(c.value.startswith("noise-to-signal on the 3 changed slices") for c in at.caption)
    assert any("iDLG + drop (knows the defense)" in c.value for c in at.caption)


def test_calibrated_defenses_need_a_clipped_round() -> None:
    at = new_app({"clip": "0", "defenses": "none,tip"})
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    errors = [e.value for e in at.error]
    assert any("TIP calibrates the noise for updates clipped to norm C" in e for e in errors), errors
    assert [b for b in at.button if b.label == "Run attack"][0].disabled
    # Without a calibrated defense an unclipped round is fine.
    at.multiselect(key="w_defenses").set_value(["none", "prune"]).run()
    no_exceptions(at)
    assert not at.error and not [b for b in at.button if b.label == "Run attack"][0].disabled
    # The TIP page says the same instead of explaining a setting that cannot run.
    at.switch_page("views/tip.py").run()
    no_exceptions(at)
    assert any("calibrates the noise for updates clipped to norm C" in e.value for e in at.error)


def test_stop_keeps_what_was_reached() -> None:
    # Inverting Gradients on LeNet: cheap steps, so the first snapshot comes quickly.
    at = new_app({"iterations": "2000", "defenses": "none,tip", "attack": "ig"})
    at.switch_page("views/live.py").run()
    click(at, "Run attack")
    job = at.session_state["job"]
    start = time.monotonic()
    while not job.latest and time.monotonic() - start < 60:
        time.sleep(0.1)
    at.run()
    # Settings changed while it runs apply to the next run; the header keeps describing the running job.
    at.number_input(key="w_iterations").set_value(7).run()
    header = [md.value for md in at.markdown if md.value.startswith("Running:")]
    assert header and "2000 iterations" in header[0], header
    assert any("apply to the next run" in c.value for c in at.caption)
    at.button(key="stop_live").click().run()
    assert job.stop_event.is_set()
    wait_for_results(at)
    res = at.session_state["results"]
    assert res.stopped
    assert res.defenses and res.defenses[0].stopped and res.defenses[0].iterations < 2000
    assert "tip" in res.skipped
    assert any("Stopped early" in w.value for w in at.warning)
    # The run's settings (2000 iterations) are not the sidebar's any more (7): shown folded, as previous, and
    # still marked as stopped, with the step it reached.
    assert any(e.label.startswith("Previous results:") and "2000 iterations" in e.label for e in at.expander)
    d = res.defenses[0]
    assert any(f"stopped at step {d.iterations} of 2000" in c.value for c in at.caption)


def _wait_for(condition, limit: float, what: str) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, f"timed out after {limit:.0f} s waiting for {what}"
        time.sleep(0.05)


def test_stop_reaches_the_worker_at_once_and_the_attack_freezes() -> None:
    """Stop goes straight to the worker (not through the job thread's next poll): the attack ends at its
    next step, the job ends without waiting for the worker process to exit, and the result is marked
    stopped with its true step count; nothing is cached for a stopped run."""
    from app import controls, jobs, resources
    from app.state import Settings

    class Slots:
        def acquire(self, timeout: float, holder: object) -> bool:
            return True

        def release(self, holder: object) -> None:
            pass

    s = Settings(iterations=5000, defenses=("none", "tip"), attack="ig")
    item = resources.gallery_item(s.image_id)
    image = controls.ImageChoice(key=item.id, image=None, label=item.label, dataset=item.dataset, num_classes=10,
                                 caption="", gallery_id=item.id)
    job = jobs.Job(plan=controls.build_plan(s, image), images=None, slots=Slots(), iterations=5000,
                   cache=jobs.result_cache()).start()
    _wait_for(lambda: job.latest or job.done, 120, "the first snapshot")
    assert not job.done and job._worker is not None
    job.stop()
    assert job._worker._stop.is_set()  # the worker's own stop event, set by the click itself
    assert job.stopping
    _wait_for(lambda: job.done, 120, "the stopped job to end")
    assert job.status == "stopped" and not job.errors
    (name,) = job.records
    rec = job.records[name]
    assert name == "none" and rec.stopped and 0 < rec.iterations < 5000
    assert "tip" not in job.records  # skipped, not run
    job.wait(60)  # the worker process is closed after the job ended
    assert job._worker is None
    assert jobs.cached_results(job.plan, None, jobs.result_cache(), s, "", "cifar10") is None


def test_stop_while_the_worker_starts_ends_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop before the worker has loaded the engine: the worker is ended at once, and the page shows a
    stopped run with nothing reached (no "ended unexpectedly" error, no picture passed off as a result).
    No warm spare here (a cold server, or a spare for another thread count): the job starts a fresh worker."""
    from tipcore.explorer import worker

    monkeypatch.setattr(worker.Spare, "refill", lambda self: None)
    monkeypatch.setattr(worker.Spare, "take", lambda self, plan, images=None: worker.WorkerRun(plan, images).start())
    at = new_app({"iterations": "5000", "defenses": "none,tip", "attack": "ig"})
    at.switch_page("views/live.py").run()
    click(at, "Run attack")
    job = at.session_state["job"]
    assert job.current is None
    at.button(key="stop_live").click().run()
    assert job.stop_event.is_set()
    wait_for_results(at)
    res = at.session_state["results"]
    if res.defenses:  # the machine was quick enough that the first attack began: it must say it stopped
        assert all(d.stopped for d in res.defenses)
    assert res.stopped and not res.errors and "tip" in res.skipped
    assert "Results: stopped early, incomplete" in [h.value for h in at.subheader]
    assert any("Stopped early" in w.value for w in at.warning)
    assert not [e.value for e in at.error]


def test_gallery_browser_picks_an_image() -> None:
    at = new_app()
    at.switch_page("views/live.py").run()
    assert not [b for b in at.button if b.label == "Use"]  # thumbnails only on request
    at.toggle(key="browse_gallery").set_value(True).run()
    at.button(key="pick_mnist-03").click().run()
    no_exceptions(at)
    s = at.session_state["settings"]
    assert (s.source, s.dataset, s.image_id) == ("gallery", "mnist", "mnist-03")
    assert at.selectbox(key="w_image_id").value == "mnist-03"


@pytest.mark.parametrize("payload", [b"", bytes(range(256)) * 8], ids=["empty", "random-bytes"])
def test_bad_upload_shows_an_error_and_the_app_keeps_working(payload: bytes) -> None:
    at = new_app()
    at.switch_page("views/live.py").run()
    at.radio(key="w_source").set_value("upload").run()
    at.file_uploader(key="uploader").upload("broken.png", payload, "image/png").run()
    no_exceptions(at)
    errors = [e.value for e in at.error] + [e.value for e in at.sidebar.error]
    assert [e for e in errors if "Could not use 'broken.png'" in e] == errors and len(errors) == 1, errors
    assert "Pillow" not in errors[0]
    run = [b for b in at.button if b.label == "Run attack"][0]
    assert run.disabled

    # The session keeps working: back to the gallery, and the TIP page still renders.
    at.radio(key="w_source").set_value("gallery").run()
    no_exceptions(at)
    assert not [b for b in at.button if b.label == "Run attack"][0].disabled
    at.switch_page("views/tip.py").run()
    no_exceptions(at)
    assert metric(at, "Channels noised")


def test_good_upload_is_used() -> None:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    at = new_app()
    at.switch_page("views/tip.py").run()
    at.radio(key="w_source").set_value("upload").run()
    at.file_uploader(key="uploader").upload("mine.png", buf.getvalue(), "image/png").run()
    no_exceptions(at)
    assert not at.error
    assert at.session_state["upload"]["image"].shape == (32, 32, 3)
    assert metric(at, "Channels noised") == "3/36"


def test_query_params_reproduce_the_view() -> None:
    at = new_app({"ratio": "0.3", "cutoff": "0.8", "layer": "body.2", "image_id": "mnist-03", "dataset": "mnist",
                  "seed": "oops"})
    at.switch_page("views/tip.py").run()
    no_exceptions(at)
    s = at.session_state["settings"]
    assert (s.ratio, s.cutoff, s.layer, s.image_id) == (0.3, 0.8, "body.2", "mnist-03")
    assert at.slider(key="w_ratio").value == 0.3
    assert "Selected in body.2" in selected_text(at)
    assert metric(at, "Channels noised") == "9/36"  # k = floor(0.3 * 12) = 3 per layer
    assert any("seed" in w.value for w in at.warning)  # the bad parameter is reported, not fatal
    # And the URL follows the widgets.
    at.slider(key="w_cutoff").set_value(0.25).run()
    assert at.query_params["cutoff"] in (["0.25"], "0.25")


# ------------------------------------------------------------------------------------------ views and layout


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _column_rows(node: object) -> list[list[object]]:
    """Every row of st.columns under ``node``, as its list of columns."""
    rows = []
    children = list(getattr(node, "children", {}).values())
    if children and all(type(c).__name__ == "Column" for c in children):
        rows.append(children)
    for child in children:
        rows += _column_rows(child)
    return rows


def _images_in(node: object) -> int:
    children = list(getattr(node, "children", {}).values())
    return sum(1 for c in children if type(c).__name__ == "Image") + sum(_images_in(c) for c in children)


def test_bars_are_one_channel_wide() -> None:
    """Non-adjacent selected channels: plotly would size each trace's bars by the gap between its own x values."""
    import numpy as np

    from app.components import BAR_WIDTH, alpha_bars, roughness_bars

    alpha = np.linspace(-1.0, 1.0, 12)
    fig = alpha_bars(alpha, selected=[2, 9], layer="body.0", k=2)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [list(t.x) for t in bars][1] == [2, 9]
    assert all(t.width == BAR_WIDTH and BAR_WIDTH <= 1 for t in bars)

    class Layer:
        layer, roughness, noised, flagged = "body.0", np.arange(1.0, 13.0), (1, 7), (7,)

    assert all(t.width == BAR_WIDTH for t in roughness_bars([Layer()]).data if t.type == "bar")


def _axes_and_colorbars(spec: dict) -> list[tuple[str, dict]]:
    layout = spec.get("layout", {})
    out = [(k, v) for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))]
    out += [(f"{t.get('type')} colorbar", t.get("colorbar", {})) for t in spec.get("data", [])
            if t.get("type") == "heatmap"]
    return out


def test_no_si_prefixes_on_any_axis(synthetic_curves: Path) -> None:
    """Ticks such as "500µ" or "1M" read as units: every axis and colour bar uses plain or power notation."""
    at = new_app()
    specs = _charts(at)
    for page in ("views/tip.py", "views/frontier.py"):
        at.switch_page(page).run()
        no_exceptions(at)
        specs += _charts(at)
    assert len(specs) >= 6
    for spec in specs:
        title = spec.get("layout", {}).get("title", {}).get("text", "")
        for name, axis in _axes_and_colorbars(spec):
            assert "s" not in axis.get("tickformat", ""), (title, name, axis)
            assert axis.get("exponentformat") == "power" or "tickvals" in axis, (title, name, axis)


def test_full_band_disables_the_cutoff_and_says_why() -> None:
    at = new_app()
    at.switch_page("views/tip.py").run()
    assert not at.slider(key="w_cutoff").disabled
    at.selectbox(key="w_tip_variant").set_value("tip_fullband").run()
    no_exceptions(at)
    assert at.slider(key="w_cutoff").disabled
    assert any("the full band noises every bin" in c.value for c in at.caption)
    assert "cutoff r does not apply" in at.slider(key="w_cutoff").help
    text = " ".join(md.value for md in at.markdown)
    assert "all 25 frequency bins" in text  # LeNet's 5 x 5 kernels, every bin noised
    assert "left exactly as they were" not in text and "outside cutoff" not in text
    at.selectbox(key="w_tip_variant").set_value("tip").run()
    assert not at.slider(key="w_cutoff").disabled
    assert "left exactly as they were" in " ".join(md.value for md in at.markdown)
    # Live attack: the cutoff applies as long as one chosen TIP variant uses it.
    at = new_app({"defenses": "none,tip_fullband"})
    at.switch_page("views/live.py").run()
    assert at.slider(key="w_cutoff").disabled
    at.multiselect(key="w_defenses").set_value(["tip", "tip_fullband"]).run()
    assert not at.slider(key="w_cutoff").disabled


def _selected_channels(at: AppTest) -> list[int]:
    line = selected_text(at).split("channels ", 1)[1].split(" (k =")[0]
    return [int(c) for c in line.split(", ")]


def test_changing_the_image_starts_from_a_selected_channel() -> None:
    at = new_app({"ratio": "0.25"})  # k = 3 of LeNet's 12 channels per layer
    at.switch_page("views/tip.py").run()
    first = _selected_channels(at)
    assert at.selectbox(key="w_channel").value == first[0]
    # On purpose, an unselected channel: its difference panel is all zero, and its colour bar says so.
    at.toggle(key="browse_gallery").set_value(True).run()
    other_image = None
    for candidate in ("cifar10-02", "cifar10-03", "cifar10-04", "cifar10-05", "cifar10-06"):
        at.button(key=f"pick_{candidate}").click().run()
        others = _selected_channels(at)
        unselected = [c for c in range(12) if c not in first and c not in others]
        if unselected:
            other_image = candidate
            break
    assert other_image is not None
    at.button(key="pick_cifar10-00").click().run()
    at.selectbox(key="w_channel").set_value(unselected[0]).run()
    no_exceptions(at)
    assert at.selectbox(key="w_channel").value == unselected[0]  # kept within the same image and layer
    kernel = [s for s in _charts(at) if s["layout"]["title"]["text"].startswith("Kernel W[")][0]
    assert kernel["data"][2]["colorbar"]["ticktext"] == ["unchanged"]
    # Another image: the channel is not selected there either, so the view starts from one that is.
    at.button(key=f"pick_{other_image}").click().run()
    no_exceptions(at)
    assert at.selectbox(key="w_channel").value == _selected_channels(at)[0]
    kernel = [s for s in _charts(at) if s["layout"]["title"]["text"].startswith("Kernel W[")][0]
    assert "ticktext" not in kernel["data"][2]["colorbar"]


def _plan_keys(settings) -> tuple:
    """The run keys of the plan ``settings`` describe on their gallery image (what the live page compares)."""
    from app import controls, jobs, resources

    item = resources.gallery_item(settings.image_id)
    image = controls.ImageChoice(key=item.id, image=None, label=item.label, dataset=item.dataset,
                                 num_classes=10, caption="", gallery_id=item.id)
    keys = jobs.plan_keys(controls.build_plan(settings, image), None)
    assert keys
    return keys


def _fake_results(names: list[str], settings=None):
    from dataclasses import replace

    import numpy as np

    from app import jobs
    from app.state import Settings

    rng = np.random.default_rng(0)
    defenses = tuple(jobs.DefenseResult(
        defense=name, original=rng.random((1, 32, 32, 3)).astype(np.float32), num_classes=10,
        images=rng.random((1, 32, 32, 3)).astype(np.float32), psnr=10.0 + i, ssim=0.1 * i,
        label_true=(3,), label_pred=(3,), label_accuracy=1.0, iterations=30, restarts=0, seconds=2.0 + i,
        stopped=False, diverged=False, history_steps=(1, 30), history_images=(rng.random((32, 32, 3)),) * 2,
        history_losses=(1.0, 0.1), summary={"beta": 0.5}, notes="", files={"result.json": b"{}"}, attack="idlg",
        analysis={}) for i, name in enumerate(names))
    defenses = tuple(replace(d, files={"result.json": b"{}", "metrics.csv": b"defense,attack\n" + d.defense.encode()
                                       + b",idlg\n"}) for d in defenses)
    settings = settings or Settings(defenses=tuple(names))
    return jobs.Results("fake01", rng.random((1, 32, 32, 3)).astype(np.float32), "cifar10-00 · cat (label 3)", 10,
                        "cifar10", defenses, {}, (), False, settings, b"defense,attack\n", b"",
                        keys=_plan_keys(settings))


def _subheaders(at: AppTest) -> list[str]:
    return [h.value for h in at.subheader]


def _cache_captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if "cache" in c.value]


def test_results_are_shown_only_under_the_settings_that_made_them() -> None:
    """The stale-picture bug: after a settings change the previous run's pictures stood under the new
    header as if current. Now they are folded away and named as the previous settings' results."""
    from app.state import Settings

    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.query_params["defenses"] = "none"
    at.session_state["results"] = _fake_results(["none"], Settings(defenses=("none",)))
    at.run()
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    assert "Results" in _subheaders(at) and len(at.table) == 1
    assert not [w for w in at.warning if "settings changed" in w.value]

    at.number_input(key="w_iterations").set_value(7).run()  # nothing ran with 7 iterations
    no_exceptions(at)
    assert not [h for h in _subheaders(at) if h.startswith("Results")]
    (stale,) = [w.value for w in at.warning if "settings changed" in w.value]
    assert "iterations: 50 → 7" in stale
    (folded,) = [e for e in at.expander if e.label.startswith("Previous results:")]
    assert "50 iterations" in folded.label and "defenses: No defense" in folded.label
    assert not _cache_captions(at)
    assert any("press **Run attack**" in i.value for i in at.info)

    at.number_input(key="w_iterations").set_value(50).run()  # back to the settings that made them
    no_exceptions(at)
    assert "Results" in _subheaders(at) and not [w for w in at.warning if "settings changed" in w.value]

    at.multiselect(key="w_defenses").set_value(["none", "tip"]).run()  # a superset is not these results either
    assert not [h for h in _subheaders(at) if h.startswith("Results")]


def test_tour_steps_never_show_another_steps_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tour without pressing Run: step 1's (cached) result appears only at step 1, with a true cache
    caption; no other step shows it as its own or claims the cache."""
    from app import jobs, tour
    from app.state import Settings

    monkeypatch.setenv("TIP_CACHE_DIR", str(tmp_path / "cache"))
    first = Settings(**tour.STEPS[0].values())
    fake = _fake_results(["none"], first)
    ((_, key),) = fake.keys
    jobs.result_cache().put(key, fake.defenses[0])

    at = new_app()
    for i, step in enumerate(tour.STEPS):
        at.switch_page("views/teach.py").run()
        at.button(key=f"tour_{i}").click().run()
        no_exceptions(at)
        if step.page != "views/live.py":
            continue
        if i == 0:
            assert "Results" in _subheaders(at), i
            assert any("From the server's result cache" in c for c in _cache_captions(at)), i
        else:
            assert not [h for h in _subheaders(at) if h.startswith("Results")], (i, step.title)
            assert not _cache_captions(at), (i, _cache_captions(at))
            res = at.session_state["results"]
            assert res.settings.defenses == ("none",)  # kept, but only as the previous settings' results
            assert any(e.label.startswith("Previous results:") for e in at.expander), i


def test_results_stay_readable_with_eight_defenses() -> None:
    names = ["none", "dp", "dp_paper", "prune", "soteria", "tip", "tip_random", "tip_fullband"]
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.query_params["defenses"] = ",".join(names)  # results are shown only under the settings that made them
    at.session_state["results"] = _fake_results(names)
    at.run()
    at.switch_page("views/live.py").run()
    no_exceptions(at)
    # Pictures in rows of at most 4: the header's image; the private image and 8 reconstructions; 8 history
    # thumbnails.
    rows = [r for r in _column_rows(at.main) if sum(_images_in(c) for c in r)]
    assert rows and all(len(r) <= 4 for r in rows), [len(r) for r in rows]
    assert [sum(_images_in(c) for c in r) for r in rows] == [1, 4, 4, 1, 4, 4]
    # The numbers in one table, one row per defense, nothing rounded away.
    (table,) = at.table
    frame = table.value
    assert list(frame["defense"]) == ["No defense", "DP-SGD", "DP (paper)", "Pruning", "Soteria", "TIP",
                                      "TIP, random channels", "TIP, full band"]
    assert list(frame["PSNR (dB)"]) == [f"{10.0 + i:.1f}" for i in range(8)]
    labels = [b.label for b in at.get("download_button")]
    assert {"Figure (PNG)", "Metrics (CSV)", "All artifacts (ZIP)", "result.json of TIP, full band"} <= set(labels)
    (loss,) = [c for c in _charts(at) if c["layout"]["title"]["text"].startswith("Attack loss")]
    assert loss["layout"]["legend"]["y"] < 0  # eight names below the plot, not over its title


def test_comparison_figure_has_titles_and_psnr() -> None:
    import io

    import numpy as np
    from PIL import Image

    from app.components import comparison_png

    black = np.zeros((32, 32, 3), np.float32)

    def text_above_and_below(titles: tuple[str, str]) -> tuple[bool, bool]:
        png = np.asarray(Image.open(io.BytesIO(comparison_png([(*titles, black)], scale=4))).convert("L"))
        rows = np.where((png[:, 12:140] == 0).all(axis=1))[0]  # the black 128-pixel picture
        return bool((png[:rows.min(), 12:140] < 128).any()), bool((png[rows.max() + 1:, 12:140] < 128).any())

    assert text_above_and_below(("", "")) == (False, False)
    assert text_above_and_below(("TIP", "PSNR 5.1 dB · SSIM 0.01")) == (True, True)


# ------------------------------------------------------------------------------------------ precomputed grid


def test_tip_page_shows_the_precomputed_reconstructions_on_the_grid_and_run_it_off_it() -> None:
    from tipcore import attacks
    from tipcore.explorer import tip_grid

    grid = tip_grid.load()
    assert grid is not None, tip_grid.TIP_GRID_COMMAND
    at = new_app()
    at.switch_page("views/tip.py").run()
    no_exceptions(at)
    heads = [md.value for md in at.markdown]
    assert "**TIP vs naive iDLG**" in heads and "**TIP vs the best adaptive iDLG**" in heads
    psnrs = [m.value for m in at.metric if m.label == "PSNR (dB)"]
    defaults = (0.1, 0.5, 5.0)  # the page's p, r, ε
    expected = {(c["attack"], c["defense"]): c["psnr"] for c in grid.cells if c["image"] == "cifar10-00"
                and (c["defense"] == "none" or (c["ratio"], c["cutoff"], c["epsilon"]) == defaults)}
    best = max(expected[(a, "tip")] for a in grid.adaptive)  # the strongest adaptive attacker at the defaults
    for psnr in (expected[("idlg", "none")], expected[("idlg", "tip")], best):
        assert f"{psnr:.1f}" in psnrs, (psnr, psnrs)
    assert not any(md.value.startswith("**Off the precomputed grid**") for md in at.markdown)

    at.slider(key="w_ratio").set_value(0.15).run()  # k = 1 channel per layer, as at the grid's p = 0.1
    no_exceptions(at)
    assert any("same defense as the grid's p = 0.1, r = 0.5 (TIP noises k = 1 of 12 channels per layer" in md.value
               for md in at.markdown)

    at.slider(key="w_ratio").set_value(0.45).run()  # k = 5: not on the grid
    no_exceptions(at)
    off = [md.value for md in at.markdown if md.value.startswith("**Off the precomputed grid**")]
    assert off and "p = 0.45 (k = 5 of 12" in off[0]
    assert "**TIP vs naive iDLG**" not in [md.value for md in at.markdown]
    click(at, "Run it: adaptive iDLG")
    no_exceptions(at)
    s = at.session_state["settings"]
    mode = attacks.ATTACKS[grid.strongest_adaptive("cifar10-00")].matcher  # the grid's most frequent winner
    assert (s.defenses, s.attack, s.adaptive, s.ratio) == (("tip",), "idlg", mode, 0.45)
    assert at.title[0].value == "Live attack"


def test_tip_page_names_the_grids_best_adaptive_attacker_and_runs_it_off_the_grid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid with two adaptive attackers where the second (low-pass, flags nothing) beats idlg_drop by 5 dB
    everywhere: the panel shows its picture under its name, "best of 2", and Run it on Live picks it."""
    from dataclasses import replace

    from tipcore.explorer import tip_grid

    from app import resources

    grid = tip_grid.load()
    assert grid is not None, tip_grid.TIP_GRID_COMMAND
    drop = [c for c in grid.cells if c["attack"] == "idlg_drop"]
    lowpass = [{**c, "attack": "idlg_lowpass", "psnr": c["psnr"] + 5.0, "flag_precision": None,
                "flag_recall": None} for c in drop]
    kept = [c for c in grid.cells if c["attack"] in (grid.settings["naive"], "idlg_drop")]
    forced = replace(grid, cells=tuple(kept + lowpass),
                     settings={**grid.settings, "adaptive": ["idlg_drop", "idlg_lowpass"]})
    monkeypatch.setattr(tip_grid, "load", lambda directory=None: forced)
    resources.tip_grid.clear()
    try:
        at = new_app()
        at.switch_page("views/tip.py").run()
        no_exceptions(at)
        winner = next(c for c in lowpass if c["image"] == "cifar10-00" and c["defense"] == "tip"
                      and (c["ratio"], c["cutoff"], c["epsilon"]) == (0.1, 0.5, 5.0))
        assert f"{winner['psnr']:.1f}" in [m.value for m in at.metric if m.label == "PSNR (dB)"]
        assert "iDLG + low-pass, best of 2 adaptive attackers at this setting" in [c.value for c in at.caption]
        assert any(md.value.startswith("**The attackers at this setting**") and
                   f"iDLG + low-pass (best of 2 adaptive attackers) **{winner['psnr']:.1f} dB**" in md.value
                   for md in at.markdown)
        at.slider(key="w_ratio").set_value(0.45).run()  # off the grid
        click(at, "Run it: adaptive iDLG")
        no_exceptions(at)
        assert at.session_state["settings"].adaptive == "lowpass"
    finally:
        resources.tip_grid.clear()
