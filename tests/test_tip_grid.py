"""The "How TIP works" page's precomputed grid: a tiny build in tmp_path, the loader's answers on and off the
grid, and the committed grid's files."""

from __future__ import annotations

import dataclasses
import json
import shlex

import numpy as np
import pytest

from tipcore.explorer import tip_grid
from tipcore.studies.cells import adaptive_attacks
from tipcore.cli import build_parser

ADAPTIVE = ("idlg_drop", "idlg_lowpass")

DEMO_ROUND = {"mode": "fedsgd", "batch_size": 1, "local_steps": 1, "lr": 1e-3, "clip": 5.0}


def query(**changes):
    base = dict(image_id="cifar10-00", model="lenet", weights="random", round=DEMO_ROUND, seed=0, variant="tip",
                noise="calibrated", epsilon=5.0, delta=1e-5, ratio=0.1, cutoff=0.5)
    return tip_grid.GridQuery(**{**base, **changes})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One image, two settings (no defense and TIP at p = 0.3, r = 0.5, ε = 5), two L-BFGS steps: built with
    one adaptive attacker, then resumed in the same work directory with a second one added."""
    base = tmp_path_factory.mktemp("tip_grid")
    first = tip_grid.TipGridConfig(images=("cifar10-00",), points=((0.3, 0.5, 5.0),), iterations=2,
                                   adaptive=ADAPTIVE[:1])
    tip_grid.make(first, base / "work", base / "first")
    cfg = dataclasses.replace(first, adaptive=ADAPTIVE)
    events = []
    path = tip_grid.make(cfg, base / "work", base / "out", on_event=events.append)
    return cfg, base, path, events


def test_tiny_build_writes_the_grid_and_resumes(tiny):
    cfg, base, path, added = tiny
    assert path == base / "out" / tip_grid.GRID_JSON and (base / "out" / tip_grid.GRID_NPZ).is_file()
    assert len(tip_grid.load(base / "first").cells) == 4
    # Adding an attacker resumes the work directory: only the new attacker's two cells run.
    assert added and {e.total for e in added} == {2} and all("idlg_lowpass" in e.message for e in added)
    assert "adaptive" not in json.loads((base / "work" / "job.json").read_text())
    grid = tip_grid.load(base / "out")
    assert grid.settings["adaptive"] == list(ADAPTIVE) and grid.adaptive == ADAPTIVE
    assert len(grid.cells) == 6 and grid.pixels.shape == (6, 32, 32, 3) and grid.pixels.dtype == np.uint8
    assert {(c["attack"], c["defense"]) for c in grid.cells} == {
        (a, d) for a in ("idlg", *ADAPTIVE) for d in ("none", "tip")}
    assert all(c["steps"] <= 2 and np.isfinite(c["psnr"]) for c in grid.cells)
    # A rerun finds every cell done: it attacks nothing (no progress event) and writes the same grid.
    events = []
    tip_grid.make(cfg, base / "work", base / "out2", on_event=events.append)
    assert [(e.done, e.total) for e in events] == [] and tip_grid.load(base / "out2") is not None


def _best_cell(grid, defense):
    cells = [c for c in grid.cells if c["attack"] in grid.adaptive and c["defense"] == defense]
    return max(cells, key=lambda c: c["psnr"])


def test_loader_finds_a_grid_point_and_the_same_defense(tiny):
    base = tiny[1]
    grid = tip_grid.load(base / "out")
    match, reason = grid.find(query(ratio=0.3))
    assert match is not None and reason == "" and match.exact
    cell = _best_cell(grid, "tip")  # the best adaptive attacker at this point, by PSNR
    assert match.naive.attack == "idlg" and match.adaptive.attack == cell["attack"]
    assert match.adaptive.psnr == pytest.approx(cell["psnr"]) and set(match.candidates) == set(ADAPTIVE)
    assert match.candidates[cell["attack"]] == pytest.approx(max(match.candidates.values()))
    assert np.array_equal(np.round(match.adaptive.image * 255).astype(np.uint8), grid.pixels[cell["index"]])
    assert [c.attack for c in match.undefended] == ["idlg", _best_cell(grid, "none")["attack"]]
    assert match.channels == (3, 3, 3)  # LeNet: 3 conv layers of 12 channels, k = floor(0.3 * 12)
    # p = 0.25 also noises k = 3 channels per layer, r = 0.45 the same bins of a 5 x 5 kernel as r = 0.5
    same, _ = grid.find(query(ratio=0.25, cutoff=0.45))
    assert same is not None and not same.exact and same.ratio == 0.3 and same.cutoff == 0.5


@pytest.mark.parametrize("changes, words", [
    (dict(ratio=0.1), "p = 0.1 (k = 1 of 12"),
    (dict(cutoff=0.75), "r = 0.75"),
    (dict(epsilon=3.0), "ε = 3 is not on the grid"),
    (dict(image_id="cifar10-05"), "not cifar10-05"),
    (dict(image_id=None), "uploaded images"),
    (dict(model="convnet"), "not convnet"),
    (dict(round={**DEMO_ROUND, "mode": "fedavg", "local_steps": 4}), "class-demo round"),
    (dict(seed=1), "seed 0, not 1"),
    (dict(variant="tip_fullband"), "not the tip_fullband ablation"),
    (dict(noise="direct"), "direct β"),
    (dict(delta=1e-6), "δ = 1e-05, not 1e-06"),
])
def test_loader_refuses_a_point_off_the_grid(tiny, changes, words):
    base = tiny[1]
    match, reason = tip_grid.load(base / "out").find(query(**{"ratio": 0.3, **changes}))
    assert match is None and words in reason


def _with_psnr(grid, scores):
    """The grid with the PSNR of the cells of the named attackers replaced ({attack: psnr})."""
    cells = tuple({**c, "psnr": scores.get(c["attack"], c["psnr"])} for c in grid.cells)
    return dataclasses.replace(grid, cells=cells)


@pytest.mark.parametrize("winner", ADAPTIVE)
def test_the_best_adaptive_cell_is_the_highest_psnr_at_the_point(tiny, winner):
    grid = tip_grid.load(tiny[1] / "out")
    loser = next(a for a in ADAPTIVE if a != winner)
    forced = _with_psnr(grid, {winner: 40.0, loser: 10.0})
    match, _ = forced.find(query(ratio=0.3))
    assert match.adaptive.attack == winner and match.adaptive.psnr == 40.0
    assert match.candidates == {winner: 40.0, loser: 10.0}
    assert match.undefended[1].attack == winner and forced.strongest_adaptive() == winner
    index = next(c["index"] for c in grid.cells if c["attack"] == winner and c["defense"] == "tip")
    assert np.array_equal(np.round(match.adaptive.image * 255).astype(np.uint8), grid.pixels[index])


def test_a_grid_with_one_adaptive_attacker_named_as_a_string_still_loads(tiny, tmp_path):
    """The format written before the grid held several adaptive attackers: settings["adaptive"] is one name;
    only that attacker's cells count, even where another's are in the file and score higher."""
    base = tiny[1]
    meta = json.loads((base / "out" / tip_grid.GRID_JSON).read_text())
    meta["settings"]["adaptive"] = "idlg_drop"
    for cell in meta["cells"]:
        if cell["attack"] == "idlg_lowpass":
            cell["psnr"] = 99.0
    (tmp_path / tip_grid.GRID_JSON).write_text(json.dumps(meta))
    (tmp_path / tip_grid.GRID_NPZ).write_bytes((base / "out" / tip_grid.GRID_NPZ).read_bytes())
    grid = tip_grid.load(tmp_path)
    assert grid.adaptive == ("idlg_drop",) and grid.strongest_adaptive() == "idlg_drop"
    match, _ = grid.find(query(ratio=0.3))
    assert match.adaptive.attack == "idlg_drop" and list(match.candidates) == ["idlg_drop"]
    assert match.undefended[1].attack == "idlg_drop"


def test_config_takes_every_adaptive_idlg_by_default():
    cfg = tip_grid.TipGridConfig()
    assert cfg.adaptive == adaptive_attacks("idlg") and len(cfg.adaptive) >= 2
    assert cfg.attackers() == [("idlg", "naive")] + [(a, "adaptive") for a in cfg.adaptive]
    assert "adaptive" not in cfg.manifest()


def test_config_refuses_bad_grids():
    with pytest.raises(ValueError, match="unknown gallery image"):
        tip_grid.TipGridConfig(images=("nope",))
    with pytest.raises(ValueError, match="p and r must lie in"):
        tip_grid.TipGridConfig(points=((1.5, 0.5, 5.0),))
    with pytest.raises(ValueError, match="distinct"):
        tip_grid.TipGridConfig(points=((0.1, 0.5, 5.0), (0.1, 0.5, 5.0)))
    with pytest.raises(ValueError, match="unknown attack"):
        tip_grid.TipGridConfig(adaptive=("nope",))
    with pytest.raises(ValueError, match="list of attack names, got the string 'idlg_drop'"):
        tip_grid.TipGridConfig(adaptive="idlg_drop")
    with pytest.raises(ValueError, match="'idlg' does not know the defense"):
        tip_grid.TipGridConfig(adaptive=("idlg_drop", "idlg"))
    with pytest.raises(ValueError, match="distinct"):
        tip_grid.TipGridConfig(adaptive=("idlg_drop", "idlg_drop"))


def test_missing_grid_loads_as_none(tmp_path):
    assert tip_grid.load(tmp_path) is None


def test_committed_grid_holds_the_page_defaults_for_both_attackers():
    grid = tip_grid.load()
    assert grid is not None, f"assets/showcase/{tip_grid.GRID_JSON} is missing: {tip_grid.TIP_GRID_COMMAND}"
    match, reason = grid.find(query())  # the page's defaults: the paper's p = 0.1, r = 0.5, ε = 5
    assert match is not None, reason
    assert match.undefended[0].psnr > 30 > match.naive.psnr  # TIP stops the naive attacker ...
    assert len(grid.cells) == len(grid.images) * (1 + len(grid.adaptive)) * (len(grid.settings["points"]) + 1)
    assert match.adaptive.attack in grid.adaptive and match.adaptive.psnr == max(match.candidates.values())
    build_parser().parse_args(shlex.split(grid.command)[3:])
