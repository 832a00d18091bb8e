"""The "How TIP works" page's precomputed grid: a tiny build in tmp_path, the loader's answers on and off the
grid, and the committed grid's files."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from tipcore.explorer import tip_grid
from tipcore.cli import build_parser

DEMO_ROUND = {"mode": "fedsgd", "batch_size": 1, "local_steps": 1, "lr": 1e-3, "clip": 5.0}


def query(**changes):
    base = dict(image_id="cifar10-00", model="lenet", weights="random", round=DEMO_ROUND, seed=0, variant="tip",
                noise="calibrated", epsilon=5.0, delta=1e-5, ratio=0.1, cutoff=0.5)
    return tip_grid.GridQuery(**{**base, **changes})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One image, two settings (no defense and TIP at p = 0.3, r = 0.5, ε = 5), two L-BFGS steps."""
    base = tmp_path_factory.mktemp("tip_grid")
    cfg = tip_grid.TipGridConfig(images=("cifar10-00",), points=((0.3, 0.5, 5.0),), iterations=2)
    path = tip_grid.make(cfg, base / "work", base / "out")
    return cfg, base, path


def test_tiny_build_writes_the_grid_and_resumes(tiny):
    cfg, base, path = tiny
    assert path == base / "out" / tip_grid.GRID_JSON and (base / "out" / tip_grid.GRID_NPZ).is_file()
    grid = tip_grid.load(base / "out")
    assert len(grid.cells) == 4 and grid.pixels.shape == (4, 32, 32, 3) and grid.pixels.dtype == np.uint8
    assert {(c["attack"], c["defense"]) for c in grid.cells} == {
        ("idlg", "none"), ("idlg", "tip"), ("idlg_drop", "none"), ("idlg_drop", "tip")}
    assert all(c["steps"] <= 2 and np.isfinite(c["psnr"]) for c in grid.cells)
    # A rerun finds every cell done: it attacks nothing (no progress event) and writes the same grid.
    events = []
    tip_grid.make(cfg, base / "work", base / "out2", on_event=events.append)
    assert [(e.done, e.total) for e in events] == [] and tip_grid.load(base / "out2") is not None


def test_loader_finds_a_grid_point_and_the_same_defense(tiny):
    _, base, _ = tiny
    grid = tip_grid.load(base / "out")
    match, reason = grid.find(query(ratio=0.3))
    assert match is not None and reason == "" and match.exact
    assert match.naive.attack == "idlg" and match.adaptive.attack == "idlg_drop"
    cell = next(c for c in grid.cells if c["attack"] == "idlg_drop" and c["defense"] == "tip")
    assert match.adaptive.psnr == pytest.approx(cell["psnr"])
    assert np.array_equal(np.round(match.adaptive.image * 255).astype(np.uint8), grid.pixels[cell["index"]])
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
    _, base, _ = tiny
    match, reason = tip_grid.load(base / "out").find(query(**{"ratio": 0.3, **changes}))
    assert match is None and words in reason


def test_config_refuses_bad_grids():
    with pytest.raises(ValueError, match="unknown gallery image"):
        tip_grid.TipGridConfig(images=("nope",))
    with pytest.raises(ValueError, match="p and r must lie in"):
        tip_grid.TipGridConfig(points=((1.5, 0.5, 5.0),))
    with pytest.raises(ValueError, match="distinct"):
        tip_grid.TipGridConfig(points=((0.1, 0.5, 5.0), (0.1, 0.5, 5.0)))
    with pytest.raises(ValueError, match="unknown attack"):
        tip_grid.TipGridConfig(adaptive="nope")


def test_missing_grid_loads_as_none(tmp_path):
    assert tip_grid.load(tmp_path) is None


def test_committed_grid_holds_the_page_defaults_for_both_attackers():
    grid = tip_grid.load()
    assert grid is not None, f"assets/showcase/{tip_grid.GRID_JSON} is missing: {tip_grid.TIP_GRID_COMMAND}"
    match, reason = grid.find(query())  # the page's defaults: the paper's p = 0.1, r = 0.5, ε = 5
    assert match is not None, reason
    assert match.undefended[0].psnr > 30 > match.naive.psnr  # TIP stops the naive attacker ...
    assert len(grid.cells) == len(grid.images) * 2 * (len(grid.settings["points"]) + 1)
    build_parser().parse_args(shlex.split(grid.command)[3:])
