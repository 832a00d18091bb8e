"""The app's precomputed first-screen results load without torch and match their regeneration commands."""

from __future__ import annotations

import shlex

import numpy as np

from tipcore.explorer import showcase
from tipcore.studies import sweep
from tipcore.cli import build_parser


def test_punchline_loads_with_images_and_metrics():
    punch = showcase.load_punchline()
    assert punch is not None
    assert [(e.defense, e.attack) for e in punch.entries] == [(d, a) for d, a, _ in showcase.PUNCHLINE_ENTRIES]
    assert ("tip", "idlg_drop") in {(e.defense, e.attack) for e in punch.entries}  # the attacker who knows TIP
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
