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
