"""Privacy curves and the reproduction report: resumable cell tables, well-formed outputs, both attackers."""

from __future__ import annotations

import csv
import json

import pytest

from tipcore import reproduce, sweep
from tipcore.progress import drive
from tipcore.resumable import ResumableTable

TINY_GRID = {"none": ("", (0.0,)), "tip": ("beta", (1.0,))}


def tiny_sweep(**changes) -> sweep.SweepConfig:
    return sweep.SweepConfig(**{"grid": TINY_GRID, "images": 1, "iterations": 2, "fl_rounds": 1,
                                "adaptive": ("idlg_drop",), **changes})


def test_resumable_table_drops_a_row_cut_short_and_refuses_another_jobs_file(tmp_path):
    path = tmp_path / "t.csv"
    table = ResumableTable(path, ["a", "b", "v"], ["a", "b"])
    table.append({"a": "x", "b": 1, "v": 0.5})
    with path.open("a") as f:
        f.write("y,2")  # a kill in the middle of a row
    again = ResumableTable(path, ["a", "b", "v"], ["a", "b"])
    assert again.has({"a": "x", "b": 1}) and not again.has({"a": "y", "b": 2})
    assert path.read_text().splitlines() == ["a,b,v", "x,1,0.5"]
    with pytest.raises(ValueError, match="other columns"):
        ResumableTable(path, ["a", "c"], ["a"])


@pytest.mark.slow
def test_sweep_resumes_without_recomputing(tmp_path, monkeypatch):
    calls = {"attack": 0, "utility": 0}
    real_cells, real_utility = sweep.attack_cells, sweep.utility_accuracy

    def counting_cells(cfgs, **kw):
        calls["attack"] += len(cfgs)
        return real_cells(cfgs, **kw)

    def counting_utility(*a, **kw):
        calls["utility"] += 1
        return real_utility(*a, **kw)

    monkeypatch.setattr(sweep, "attack_cells", counting_cells)
    monkeypatch.setattr(sweep, "utility_accuracy", counting_utility)
    cfg = tiny_sweep()
    # Stop as the second cell starts: the table keeps the first, the second (stopped inside its FL
    # simulation) is not recorded, and the rerun does only what is missing.
    seen = []
    drive(sweep.run(cfg, tmp_path, should_stop=lambda: len(seen) >= 2), seen.append)
    first = dict(calls)
    assert first == {"attack": 0, "utility": 2} and not (tmp_path / "curves.json").exists()
    assert seen[-1].stopped and seen[-1].done == 1 and len(list(csv.DictReader((tmp_path / "utility.csv").open()))) == 1
    drive(sweep.run(cfg, tmp_path))
    assert calls["utility"] == 3 and calls["attack"] == 4  # 2 settings x 1 image x 2 attackers
    rows = list(csv.DictReader((tmp_path / "attacks.csv").open()))
    assert len(rows) == 4 and {r["attacker"] for r in rows} == {"naive", "adaptive"}
    tip = [r for r in rows if r["defense"] == "tip"]
    assert all(float(r["noise_to_signal"]) > 1 for r in tip)  # the noise-to-signal of the perturbed slices
    drive(sweep.run(cfg, tmp_path))  # everything done: nothing recomputed
    assert calls["utility"] == 3 and calls["attack"] == 4
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert {(p["defense"], p["attacker"]) for p in curves["points"]} == {
        ("none", "naive"), ("none", "adaptive"), ("tip", "naive"), ("tip", "adaptive")}
    assert curves["reference"]["random_psnr"] < curves["reference"]["grey_psnr"]
    html = (tmp_path / "curves.html").read_text()
    # Self-contained: plotly.js is inlined, no <script src=...> fetches anything when the page opens.
    assert "Plotly.newPlot" in html and "<script src=" not in html.replace(" ", "")


def test_reproduce_config_checks_every_attacks_options_before_any_compute():
    with pytest.raises(ValueError, match="lr"):
        reproduce.ReproduceConfig(ig_lr=-1.0)
    with pytest.raises(ValueError, match="unknown option"):
        reproduce.ReproduceConfig(ig_attacks=("idlg",), ig_preset="paper")


def test_sweep_config_is_validated_before_any_compute():
    with pytest.raises(ValueError, match="unknown defense"):
        sweep.SweepConfig(grid={"nonsense": ("ratio", (0.1,))})
    with pytest.raises(ValueError, match="ratio"):
        sweep.SweepConfig(grid={"prune": ("ratio", (1.5,))})
    with pytest.raises(ValueError, match="unknown attack"):
        sweep.SweepConfig(adaptive=("idlg_guess",))
    with pytest.raises(ValueError, match="images"):
        sweep.SweepConfig(images=0)


@pytest.mark.slow
def test_reproduce_on_two_images_writes_a_well_formed_report(tmp_path, monkeypatch):
    # The FedAvg utility runs (minutes for Soteria) have their own tests (tests/test_fl.py); here a distinct
    # made-up accuracy per setting is enough to check that the report picks, pairs and prints correctly.
    fake = {label: 0.90 - 0.01 * i for i, label in enumerate(
        [*reproduce.report_settings(), *(c.label() for c in reproduce.MATCHED_DP_CANDIDATES)])}
    fake["dp_paper sigma=0.001"] = fake["tip p=0.1"] + 0.001  # the closest to TIP: the matched DP
    def key(s):
        return s.defense, s.knob, s.strength

    by_setting = {**{key(s): label for label, s in reproduce.report_settings().items()},
                  **{key(c): c.label() for c in reproduce.MATCHED_DP_CANDIDATES}}
    monkeypatch.setattr(reproduce, "utility_accuracy", lambda setting, **kw: fake[by_setting[key(setting)]])
    cfg = reproduce.ReproduceConfig(images=2, lenet_attacks=("idlg", "idlg_drop"), lenet_iters=2, ig_attacks=("ig",),
                                    ig_images=1, ig_iters=1, fl_rounds=1)
    drive(reproduce.run(cfg, tmp_path))
    rows = list(csv.DictReader((tmp_path / "cells.csv").open()))
    settings = set(reproduce.report_settings())
    lenet = [r for r in rows if r["model"] == "lenet"]
    assert {r["setting"] for r in lenet} - settings == {r["setting"] for r in lenet if r["setting"].startswith("dp_paper sigma")}
    assert len([r for r in lenet if r["setting"] in settings]) == len(settings) * 2 * 2
    assert len([r for r in rows if r["model"] == "resnet18"]) == len(settings)
    assert all(float(r["psnr"]) > 0 for r in rows)
    report = (tmp_path / "REPORT.md").read_text()
    assert "`dp_paper sigma=0.001` is closest" in report
    assert {r["setting"] for r in lenet} - settings == {"dp_paper sigma=0.001"}
    for needle in ("| tip p=0.1 |", "idlg_drop", "Wilcoxon", "matched utility", "Not run for this report (device: the CPU",
                   "python -m tipcore reproduce --images 2"):
        assert needle in report, needle
    utility = list(csv.DictReader((tmp_path / "utility.csv").open()))
    assert len(utility) == len(settings) + len(reproduce.MATCHED_DP_CANDIDATES)
    header = [line for line in report.splitlines() if line.startswith("| attacker |")][0]
    for row in [line for line in report.splitlines() if line.startswith("| best ")]:
        assert row.count("|") == header.count("|"), row
    # The same directory with other settings is refused instead of mixing their cells into one report.
    with pytest.raises(ValueError, match="other settings"):
        drive(reproduce.run(reproduce.ReproduceConfig(**{**cfg.__dict__, "lenet_iters": 3}), tmp_path))
