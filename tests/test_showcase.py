"""The app's precomputed first-screen results load without torch and match their regeneration commands."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from tipcore.explorer import showcase
from tipcore.studies import sweep
from tipcore.studies.cells import adaptive_attacks
from tipcore.cli import build_parser

TINY_ADAPTIVE = ("idlg_lowpass", "idlg_drop")  # one attacker that flags no channels, one that does


def test_punchline_loads_with_images_and_metrics():
    punch = showcase.load_punchline()
    assert punch is not None
    naive = [(d, a) for d, a, _ in showcase.PUNCHLINE_ENTRIES if a != showcase.BEST_ADAPTIVE]
    assert [(e.defense, e.attack) for e in punch.entries if e.attack == showcase.PUNCHLINE_NAIVE] == naive
    best = punch.best_adaptive("tip")  # the strongest attacker who knows TIP, one of those registered
    assert best is not None and best.attack in adaptive_attacks("idlg") and len(punch.entries) == len(naive) + 1
    assert best.psnr == max(best.candidates.values()) and best.candidates[best.attack] == best.psnr
    assert punch.original.shape == (32, 32, 3)
    for entry in punch.entries:
        assert entry.image.shape == (32, 32, 3) and 0 <= entry.image.min() and entry.image.max() <= 1
        assert np.isfinite(entry.psnr) and -1 <= entry.ssim <= 1
    build_parser().parse_args(shlex.split(punch.command)[3:])


def test_privacy_curves_cover_the_sweep_grid_for_both_attackers():
    curves = showcase.load_privacy_curves()
    assert curves is not None, "assets/showcase/privacy_curves.json is missing: python -m tipcore showcase frontier"
    expected = {(d, 0.0 if v is None else float(v)) for d, (_, values) in sweep.default_grid().items() for v in values}
    for kind in ("naive", "adaptive"):
        points = [p for p in curves["points"] if p["attacker"] == kind]
        assert {(p["defense"], float(p["strength"])) for p in points} == expected, kind
        assert all(np.isfinite(p["psnr"]) and 0 <= p["accuracy"] <= 1 for p in points)
    assert curves["reference"]["random_psnr"] < curves["reference"]["grey_psnr"]
    build_parser().parse_args(shlex.split(curves["command"])[3:])


def test_the_readmes_frontier_table_is_the_committed_curves():
    """README's frontier table is copied from assets/showcase/privacy_curves.json: regenerating the curves
    without rewriting the table (or editing a number by hand) fails here."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- frontier-table:", 1)[1].split("<!-- /frontier-table -->", 1)[0]
    rows = [line.strip("|").split("|") for line in block.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    curves = showcase.load_privacy_curves()
    points = {(p["defense"], float(p["strength"]), p["attacker"]): p for p in curves["points"]}
    assert len(rows) == 5
    for cells in rows:
        z, *numbers = [c.strip() for c in cells]
        expected = []
        for defense in ("tip", "dp_paper"):
            naive, adaptive = (points[(defense, float(z), kind)] for kind in ("naive", "adaptive"))
            expected += [f"{naive['psnr']:.1f}", f"{adaptive['psnr']:.1f}", f"{naive['accuracy']:.3f}"]
        assert numbers == expected, f"README frontier row z = {z}"


def test_the_picture_helper_writes_the_committed_showcase_pngs_byte_for_byte(tmp_path):
    """tipcore.common.pictures is the one PNG path (showcase, TIP grid, artifacts, app): a committed asset read
    and written again gives its exact bytes, so moving or changing the helper cannot silently change them."""
    from tipcore.common import pictures

    files = sorted(showcase.SHOWCASE_DIR.glob("punchline_*.png"))
    assert len(files) == len(showcase.PUNCHLINE_ENTRIES) + 1  # every entry and the original
    for path in files:
        image = pictures.load_png(path)
        assert image.dtype == np.float32 and image.shape == (32, 32, 3)
        pictures.save_png(tmp_path / path.name, image)
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
        assert pictures.png_bytes(pictures.to_uint8(image)) == path.read_bytes()
    # A grid is its images upscaled pixel for pixel on white, as the artifacts have always drawn it.
    grid = pictures.image_grid([np.stack([pictures.load_png(files[0])] * 2)], scale=3, pad=2)
    assert grid.shape == (2 + 96 + 2, 2 + 2 * (96 + 2), 3) and (grid[0] == 255).all()
    assert np.array_equal(grid[2:98, 2:98], pictures.upscale(pictures.load_png(files[0]), 3))


@pytest.fixture(scope="module")
def tiny_punchline(tmp_path_factory):
    """The punchline with two L-BFGS steps and two adaptive attackers, written to tmp_path over a stale
    picture of an earlier punchline."""
    out = tmp_path_factory.mktemp("punchline")
    (out / "punchline_tip_idlg_drop.png").write_bytes(b"an earlier winner's picture")
    events = []
    path = showcase.make_punchline(2, events.append, adaptive=TINY_ADAPTIVE, out_dir=out)
    return out, path, events


def test_tiny_punchline_keeps_the_best_adaptive_attacker_by_psnr(tiny_punchline):
    out, path, events = tiny_punchline
    meta = json.loads(path.read_text())
    runs = [e for e in events if e.stage == "punchline"]
    assert runs[-1].done == runs[-1].total == len(showcase.PUNCHLINE_ENTRIES) - 1 + len(TINY_ADAPTIVE)
    punch = showcase.load_punchline(out)
    best = punch.best_adaptive("tip")
    assert set(best.candidates) == set(TINY_ADAPTIVE)
    assert best.attack == max(best.candidates, key=best.candidates.get) and best.psnr == max(best.candidates.values())
    assert best.label == f"iDLG + {'drop' if best.attack == 'idlg_drop' else 'low-pass'}"
    assert punch.entry("tip") is not None and punch.entry("tip", best.attack) is best
    # idlg_lowpass flags nothing: whichever wins, the channel views are idlg_drop's flags on TIP's update.
    assert punch.channels_attack == "idlg_drop" and punch.channels
    assert sum(len(c.flagged) for c in punch.channels) > 0 and all(c.noised for c in punch.channels)
    if best.attack == "idlg_drop":  # the winner's own flags, as its run recorded them
        flags = {c.layer: list(c.flagged) for c in punch.channels if c.flagged}
        assert flags == meta["entries"][-1]["analysis"]["flagged"]
    # The pictures: one per entry and the original; the stale one of an earlier winner is gone.
    assert sorted(p.name for p in out.glob("punchline_*.png")) == sorted(
        [showcase._punch_file(d, a) for d, a, _ in showcase.PUNCHLINE_ENTRIES] + ["punchline_original.png"])


def test_adaptive_choice_takes_the_winner_and_channels_from_a_flagging_attacker():
    def run(attack, psnr, flags):
        return {"attack": attack, "psnr": psnr, "flags": flags}

    lowpass, drop = run("idlg_lowpass", 30.0, False), run("idlg_drop", 20.0, True)
    energy = run("idlg_energy", 25.0, True)
    assert showcase._adaptive_choice([drop, lowpass, energy]) == (lowpass, energy)  # the best flagging one
    assert showcase._adaptive_choice([drop, run("idlg_energy", 35.0, True)])[0]["attack"] == "idlg_energy"
    winner = run("idlg_drop", 40.0, True)
    assert showcase._adaptive_choice([lowpass, winner, energy]) == (winner, winner)
    assert showcase._adaptive_choice([lowpass, run("idlg_noise_aware", 31.0, False)])[1] is None


def test_a_punchline_made_with_one_adaptive_attacker_still_loads(tiny_punchline, tmp_path):
    """The format written before the best was kept: the adaptive entry is idlg_drop, with no candidates,
    label or channels_attack."""
    out, path, _ = tiny_punchline
    meta = json.loads(path.read_text())
    old = meta["entries"][-1]
    for key in ("candidates", "label"):
        old.pop(key)
    old.update(attack="idlg_drop", title="TIP vs adaptive iDLG", file="punchline_tip_idlg_drop.png")
    meta.pop("channels_attack")
    for e in meta["entries"]:
        e.pop("label", None)
    for png in out.glob("punchline_*.png"):
        (tmp_path / png.name).write_bytes(png.read_bytes())
    (tmp_path / "punchline_tip_idlg_drop.png").write_bytes((out / "punchline_tip_adaptive.png").read_bytes())
    (tmp_path / "punchline.json").write_text(json.dumps(meta))
    punch = showcase.load_punchline(tmp_path)
    best = punch.best_adaptive("tip")
    assert best.attack == "idlg_drop" and best.candidates == {"idlg_drop": best.psnr} and best.label == ""
    assert punch.channels_attack == "idlg_drop" and punch.best_adaptive("dp") is None


def test_punchline_refuses_an_attacker_that_does_not_adapt(tmp_path):
    with pytest.raises(ValueError, match="'idlg' is not a registered adaptive attack"):
        showcase.make_punchline(2, adaptive=("idlg",), out_dir=tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        showcase.make_punchline(2, adaptive=("idlg_drop", "idlg_drop"), out_dir=tmp_path)
    assert not list(tmp_path.iterdir())
