"""Privacy curves and the reproduction report: resumable cell tables, well-formed outputs, both attackers."""

from __future__ import annotations

import csv
import json

import pytest

from tipcore.studies import cells as evaluation, reproduce, sweep
from tipcore.studies.cells import UtilityProtocol
from tipcore.common.progress import drive
from tipcore.studies.resumable import ResumableTable

TINY_GRID = {"none": ("", (None,)), "tip": ("beta", (0.2,))}
TINY_UTILITY = UtilityProtocol(rounds=1, clients=2, seeds=(0,))


def tiny_sweep(**changes) -> sweep.SweepConfig:
    return sweep.SweepConfig(**{"grid": TINY_GRID, "images": 1, "iterations": 2, "utility": TINY_UTILITY,
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
    real_cells, real_utility = sweep.attack_cells, evaluation.utility_cell

    def counting_cells(cfgs, **kw):
        calls["attack"] += len(cfgs)
        return real_cells(cfgs, **kw)

    def counting_utility(*a, **kw):
        calls["utility"] += 1
        return real_utility(*a, **kw)

    monkeypatch.setattr(sweep, "attack_cells", counting_cells)
    monkeypatch.setattr(evaluation, "utility_cell", counting_utility)
    cfg = tiny_sweep()
    # Stop as the second attack group starts (the attacks run before the utility cells): the table keeps
    # the first group, the second (stopped inside its optimisation) is not recorded, and the rerun does only
    # what is missing.
    seen = []
    drive(sweep.run(cfg, tmp_path, should_stop=lambda: len(seen) >= 2), seen.append)
    first = dict(calls)
    assert first == {"attack": 4, "utility": 0} and not (tmp_path / "curves.json").exists()
    assert seen[-1].stopped and seen[-1].done == 2 and len(list(csv.DictReader((tmp_path / "attacks.csv").open()))) == 2
    drive(sweep.run(cfg, tmp_path))
    assert calls["utility"] == 2 and calls["attack"] == 6  # 2 settings x 1 image x 2 attackers, one group twice
    rows = list(csv.DictReader((tmp_path / "attacks.csv").open()))
    assert len(rows) == 4 and {r["attacker"] for r in rows} == {"naive", "adaptive"}
    tip = [r for r in rows if r["defense"] == "tip"]
    assert all(float(r["noise_to_signal"]) > 1 for r in tip)  # the noise-to-signal of the perturbed slices
    # One noise level on both axes: the attack cells and the utility run report the setting's own z.
    utility = {r["defense"]: r for r in csv.DictReader((tmp_path / "utility" / "utility.csv").open())}
    assert all(float(r["noise_rel"]) == pytest.approx(0.2) for r in tip)
    assert float(utility["tip"]["noise_rel"]) == pytest.approx(0.2) and utility["none"]["noise_rel"] == ""
    drive(sweep.run(cfg, tmp_path))  # everything done: nothing recomputed
    assert calls["utility"] == 2 and calls["attack"] == 6
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert {(p["defense"], p["attacker"]) for p in curves["points"]} == {
        ("none", "naive"), ("none", "adaptive"), ("tip", "naive"), ("tip", "adaptive")}
    tip_point = [p for p in curves["points"] if p["defense"] == "tip"][0]
    assert tip_point["noise_scale"] == tip_point["noise_rel_attack"] == pytest.approx(tip_point["noise_rel_utility"])
    assert curves["reference"]["random_psnr"] < curves["reference"]["grey_psnr"]
    html = (tmp_path / "curves.html").read_text()
    # Self-contained: plotly.js is inlined, no <script src=...> fetches anything when the page opens.
    assert "Plotly.newPlot" in html and "<script src=" not in html.replace(" ", "")


def test_reproduce_command_names_the_directories_it_was_run_with():
    cfg = reproduce.ReproduceConfig(images=3)
    assert cfg.command().endswith("--images 3 --out DIR")
    assert cfg.command("docs/reproduction", "docs/utility").endswith(
        "--images 3 --utility-dir docs/utility --out docs/reproduction")


def test_reproduce_config_checks_every_attacks_options_before_any_compute():
    with pytest.raises(ValueError, match="lr"):
        reproduce.ReproduceConfig(ig_lr=-1.0)
    with pytest.raises(ValueError, match="unknown option"):
        reproduce.ReproduceConfig(ig_attacks=("idlg",), ig_preset="paper")


def test_sweep_config_is_validated_before_any_compute():
    with pytest.raises(ValueError, match="distinct"):
        sweep.SweepConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="distinct"):
        UtilityProtocol(seeds=(1, 1))
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
    # The FedAvg utility runs have their own tests (tests/test_flsim.py, and the sweep test above runs a real
    # one); here a distinct made-up accuracy per setting is enough to check that the report picks, pairs and
    # prints correctly. The fake reports the setting's own z back, as a real utility cell does.
    labels = [row.label for row in reproduce.PAPER.rows] + [label for label, _ in reproduce.PAPER.matched_candidates()]
    fake = {label: 0.90 - 0.01 * i for i, label in enumerate(labels)}
    fake["dp_paper z=0.001"] = fake["tip p=0.1"] + 0.001  # the closest to TIP: the matched DP
    lenet_settings = reproduce.settings_for("lenet", reproduce.ATTACK_ROUND)
    by_setting = {s.label(): label for label, s in [*lenet_settings.items(), *reproduce.PAPER.matched_candidates()]}

    def fake_utility(setting, protocol, seed, **kw):
        return {"accuracy": fake[by_setting[setting.label()]], "fl_rounds": protocol.rounds,
                "noise_rel": setting.relative_noise(), "noise_to_signal": None, "curve": "0.5 0.8 0.81"}

    monkeypatch.setattr(evaluation, "utility_cell", fake_utility)
    cfg = reproduce.ReproduceConfig(images=2, lenet_attacks=("idlg", "idlg_drop"), lenet_iters=2, ig_attacks=("ig",),
                                    ig_images=1, ig_iters=1, utility=UtilityProtocol(rounds=3, seeds=(0,)))
    drive(reproduce.run(cfg, tmp_path))
    rows = list(csv.DictReader((tmp_path / "cells.csv").open()))
    settings = {row.label for row in reproduce.PAPER.rows}
    lenet = [r for r in rows if r["model"] == "lenet"]
    assert {r["setting"] for r in lenet} - settings == {"dp_paper z=0.001"}
    assert len([r for r in lenet if r["setting"] in settings]) == len(settings) * 2 * 2
    assert len([r for r in rows if r["model"] == "resnet18"]) == len(reproduce.PAPER.ig_rows)
    assert all(float(r["psnr"]) > 0 for r in rows)
    # Privacy was measured at the z the row defines (read back from what each defense ran with).
    tip_z = lenet_settings["tip p=0.1"].value
    assert all(float(r["noise_rel"]) == pytest.approx(tip_z) for r in lenet if r["setting"] == "tip p=0.1")
    report = (tmp_path / "REPORT.md").read_text()
    assert "`dp_paper z=0.001` is closest" in report
    for needle in ("| tip p=0.1 |", "idlg_drop", "Wilcoxon", "matched utility", "Not run for this report (device: the CPU",
                   "python -m tipcore reproduce --images 2", "round 2 (per seed) of 3", f"--out {tmp_path}`"):
        assert needle in report, needle
    utility = list(csv.DictReader((tmp_path / "utility" / "utility.csv").open()))
    assert len(utility) == len(settings) + len(reproduce.PAPER.matched_candidates())
    header = [line for line in report.splitlines() if line.startswith("| attacker |")][0]
    for row in [line for line in report.splitlines() if line.startswith(("| naive ", "| best "))]:
        assert row.count("|") == header.count("|"), row
        assert "significant" in row or "lower PSNR" in row or "undefined" in row, row
    # Another attacker joins the finished run: only its cells are computed, and the report reads it.
    more = reproduce.ReproduceConfig(**{**cfg.__dict__, "lenet_attacks": ("idlg", "idlg_drop", "idlg_lowpass")})
    drive(reproduce.run(more, tmp_path))
    added = list(csv.DictReader((tmp_path / "cells.csv").open()))[len(rows):]
    assert {r["attack"] for r in added} == {"idlg_lowpass"} and len(added) == len(lenet) // 2
    assert "`idlg_lowpass`" in (tmp_path / "REPORT.md").read_text()
    # The same directory with other settings is refused instead of mixing their cells into one report.
    with pytest.raises(ValueError, match="other settings"):
        drive(reproduce.run(reproduce.ReproduceConfig(**{**cfg.__dict__, "lenet_iters": 3}), tmp_path))


def test_paired_verdict_never_calls_a_non_significant_difference_a_finding():
    assert reproduce.verdict((10.0, 0.43), [33.17, 30.0], [33.24, 31.0], "TIP", "DP").startswith(
        "no significant difference")
    assert reproduce.verdict((0.0, 1.9e-6), [5.1, 5.0], [33.2, 30.0], "TIP", "DP").startswith("TIP has the lower PSNR")


def test_two_jobs_sharing_a_table_see_each_others_finished_cells(tmp_path):
    path = tmp_path / "shared.csv"
    mine = ResumableTable(path, ["a", "v"], ["a"])
    theirs = ResumableTable(path, ["a", "v"], ["a"])
    theirs.append({"a": 1, "v": "x"})
    assert not mine.has({"a": 1})  # not re-read yet
    mine.refresh()
    assert mine.has({"a": 1}) and len(mine.rows) == 1
    mine.append({"a": 2, "v": "y"})
    theirs.append({"a": 2, "v": "z"})  # both computed it: the first row is the one kept
    theirs.refresh()
    assert [r["v"] for r in theirs.select(a=2)] == ["y"]


def test_a_utility_cell_another_job_finished_is_not_run_again(tmp_path, monkeypatch):
    from tipcore.studies import cells as evaluation

    protocol = evaluation.UtilityProtocol(rounds=1, seeds=(0,))
    setting = evaluation.DefenseSetting("none", "", None)
    calls = []
    monkeypatch.setattr(evaluation, "utility_cell", lambda *a, **k: calls.append(a) or {"accuracy": 0.5})
    first, second = evaluation.UtilityStore(tmp_path, protocol), evaluation.UtilityStore(tmp_path, protocol)
    assert first.run(setting, 0) and second.run(setting, 0)
    assert len(calls) == 1 and len(second.rows(setting)) == 1


def test_reproduce_shards_split_the_images_and_the_last_one_writes_the_report(tmp_path, monkeypatch):
    # The cells' numbers are faked (the real ones are tested above); what is checked is who computes what.
    attacked = []

    def fake_cells(cfgs, **kw):
        attacked.extend((c.image_ids[0], c.attack, c.defense, repr(sorted(c.defense_cfg.items()))) for c in cfgs)
        return [{"psnr": 10.0, "ssim": 0.1, "label_accuracy": 1.0, "noise_rel": None, "noise_to_signal": None,
                 "update_cosine": 1.0, "flag_precision": None, "flag_recall": None, "restarts": 0, "seconds": 0.1,
                 "stopped": False} for _ in cfgs]

    def fake_utility(setting, protocol, seed, **kw):
        return {"accuracy": 0.5, "fl_rounds": 1, "noise_rel": setting.relative_noise(), "noise_to_signal": None,
                "curve": "0.5"}

    monkeypatch.setattr(reproduce, "attack_cells", fake_cells)
    monkeypatch.setattr(evaluation, "utility_cell", fake_utility)
    cfg = reproduce.ReproduceConfig(images=3, lenet_attacks=("idlg",), lenet_iters=1,
                                    utility=UtilityProtocol(rounds=1, seeds=(0,)))
    drive(reproduce.run(cfg, tmp_path, shard=(1, 2)))
    assert {cell[0] for cell in attacked} == {"cifar10-01"} and not (tmp_path / "REPORT.md").exists()
    drive(reproduce.run(cfg, tmp_path, shard=(0, 2)))
    assert {cell[0] for cell in attacked} == {"cifar10-00", "cifar10-01", "cifar10-02"}
    rows = len(reproduce.PAPER.rows) + 1  # and the DP row at TIP's utility
    assert len(attacked) == len(set(attacked)) == 3 * rows and (tmp_path / "REPORT.md").exists()
    with pytest.raises(ValueError, match="shard"):
        drive(reproduce.run(cfg, tmp_path, shard=(2, 2)))


def _fake_reproduce_cells(monkeypatch, accuracy=lambda setting: 0.5):
    def fake_cells(cfgs, **kw):
        return [{"psnr": 10.0, "ssim": 0.1, "label_accuracy": 1.0, "noise_rel": None, "noise_to_signal": None,
                 "update_cosine": 1.0, "flag_precision": None, "flag_recall": None, "restarts": 0, "seconds": 0.1,
                 "stopped": False} for _ in cfgs]

    def fake_utility(setting, protocol, seed, **kw):
        return {"accuracy": accuracy(setting), "fl_rounds": 1, "noise_rel": setting.relative_noise(),
                "noise_to_signal": None, "curve": "0.5"}

    monkeypatch.setattr(reproduce, "attack_cells", fake_cells)
    monkeypatch.setattr(evaluation, "utility_cell", fake_utility)


def test_the_reports_rows_headline_and_matched_dp_are_the_studys_declared_data(tmp_path, monkeypatch):
    """No row name is written into the report's code: another study (its own labels, headline row, baseline
    and candidate z) gives a report about its own rows."""
    _fake_reproduce_cells(monkeypatch, accuracy=lambda s: 0.61 if s.defense == "tip" else
                          (0.6 if s.defense == "dp_paper" and s.value == 0.1 else 0.3))
    study = reproduce.Study(rows=(reproduce.RowSpec("clean", "none"), reproduce.RowSpec("wide tip", "tip", {"ratio": 0.3})),
                            headline="wide tip", baseline="clean", ig_rows=(), matched_defense="dp_paper",
                            zs=(0.01, 0.1))
    cfg = reproduce.ReproduceConfig(images=1, lenet_attacks=("idlg",), lenet_iters=1, study=study,
                                    utility=UtilityProtocol(rounds=1, seeds=(0,)))
    assert cfg.manifest()["study"]["headline"] == "wide tip"  # another table is another directory's job
    assert "study" not in reproduce.ReproduceConfig().manifest() and "study" not in cfg.command()
    drive(reproduce.run(cfg, tmp_path))
    report = (tmp_path / "REPORT.md").read_text()
    assert {r["setting"] for r in csv.DictReader((tmp_path / "cells.csv").open())} == {"clean", "wide tip",
                                                                                      "dp_paper z=0.1"}
    assert "TIP (wide tip, z = " in report and "among the paper's DP at z in 0.01 (0.300), 0.1 (0.600)" in report
    assert "`dp_paper z=0.1` is closest" in report and "| clean |" in report and "tip p=0.1" not in report
    assert "round 1 (per seed) of 1" in report  # the baseline row's convergence
    for bad, message in ((dict(headline="tip"), "headline 'tip' is not one of its rows"),
                         (dict(baseline="none"), "baseline"), (dict(ig_rows=("dp",)), "ig_rows dp"),
                         (dict(matched_defense="prune"), "noise defense"),
                         (dict(rows=(*study.rows, reproduce.RowSpec("clean", "dp"))), "distinct")):
        with pytest.raises(ValueError, match=message):
            reproduce.Study(**{**study.__dict__, **bad})
