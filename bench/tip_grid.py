"""The precomputed TIP grid on disk: `python bench/tip_grid.py`.

Prints the size of assets/showcase/tip_grid.{json,npz}, the attack time its cells record (each batched
optimisation's wall time split over its settings), and what the "How TIP works" page pays per slider move
instead of an attack: loading the grid (once per server, then cached) and finding the slider's setting in it.
The build's own wall time is measured around the command: `/usr/bin/time -v nice -n 10 python -m tipcore
showcase tip-grid` (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import header, timed  # noqa: E402
from tipcore.explorer import tip_grid
from tipcore.explorer.showcase import SHOWCASE_DIR  # noqa: E402


def main() -> None:
    header("How TIP works: precomputed grid")
    grid = tip_grid.load()
    if grid is None:
        sys.exit(f"no grid in {SHOWCASE_DIR}: run {tip_grid.TIP_GRID_COMMAND}")
    s = grid.settings
    sizes = {name: (SHOWCASE_DIR / name).stat().st_size for name in (tip_grid.GRID_JSON, tip_grid.GRID_NPZ)}
    print(f"images {', '.join(grid.images)}; {len(s['points'])} TIP points + no defense; attackers {s['naive']}, "
          f"{', '.join(grid.adaptive)}; {s['iterations']} steps; {len(grid.cells)} cells")
    print(f"size: {', '.join(f'{k} {v / 1024:.0f} KiB' for k, v in sizes.items())}, "
          f"total {sum(sizes.values()) / 1024:.0f} KiB")
    print(f"attack time recorded by the cells: {s['attack_seconds']:.0f} s")
    base = dict(image_id=grid.images[0], model=s["model"], weights=s["weights"], round=s["round"], seed=s["seed"],
                variant=s["variant"], noise="calibrated", epsilon=5.0, delta=s["delta"], ratio=0.15, cutoff=0.45)
    on, off = tip_grid.GridQuery(**base), tip_grid.GridQuery(**{**base, "ratio": 0.45})
    grid.find(on)  # the first call imports torch (the page has loaded it already for Grad-CAM)
    load = timed(tip_grid.load, repeat=5)[0]
    find_on = timed(lambda: grid.find(on), repeat=50)[0]
    find_off = timed(lambda: grid.find(off), repeat=50)[0]
    print("| step | ms |")
    print("|---|---|")
    print(f"| load the grid (once per server process, then cached) | {load * 1000:.1f} |")
    print(f"| find a setting on the grid (per slider move) | {find_on * 1000:.2f} |")
    print(f"| find a setting off the grid (per slider move) | {find_off * 1000:.2f} |")


if __name__ == "__main__":
    main()
