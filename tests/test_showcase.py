"""The app's precomputed first-screen results load without torch and match their regeneration commands."""

from __future__ import annotations

import shlex

import numpy as np

from tipcore import showcase
from tipcore.cli import build_parser


def test_punchline_loads_with_images_and_metrics():
    punch = showcase.load_punchline()
    assert punch is not None
    assert [e.defense for e in punch.entries] == [d for d, _ in showcase.PUNCHLINE_DEFENSES]
    assert punch.original.shape == (32, 32, 3)
    for entry in punch.entries:
        assert entry.image.shape == (32, 32, 3) and 0 <= entry.image.min() and entry.image.max() <= 1
        assert np.isfinite(entry.psnr) and -1 <= entry.ssim <= 1
    build_parser().parse_args(shlex.split(punch.command)[3:])


def test_frontier_covers_every_grid_point():
    frontier = showcase.load_frontier()
    assert frontier is not None
    expected = {(d, v) for d, (_, values) in showcase.FRONTIER_GRID.items() for v in values}
    assert {(p.defense, p.strength) for p in frontier.points} == expected
    assert all(0 <= p.accuracy <= 1 and np.isfinite(p.psnr) for p in frontier.points)
    build_parser().parse_args(shlex.split(frontier.command)[3:])
