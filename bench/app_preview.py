"""Slider redraw cost in the explorer: `python bench/app_preview.py [--threads 2]`.

Moving a TIP slider calls ``TipExplainer.preview`` (selection + noise on precomputed α) and
``TipPreview.kernel`` (one kernel's spectra): aim under 300 ms on CPU for LeNet and ConvNet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header, timed  # noqa: E402
from tipcore.federation import data
from tipcore.explorer.previews import TipExplainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("explorer: TIP slider redraw")
    print("| model | explainer build ms (once per image) | heatmap ms (once) | preview + kernel ms (per slider move) |")
    print("|---|---|---|---|")
    image = data.sample_image("cifar10-00")
    for name in ("lenet", "convnet", "resnet18"):
        t0 = time.perf_counter()
        explainer = TipExplainer(name, image, 3)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        explainer.heatmap()
        heat = time.perf_counter() - t0
        ratios = iter([0.1, 0.3, 0.6] * 10)

        def move() -> None:
            preview = explainer.preview({"ratio": next(ratios), "cutoff": 0.5})
            layer = preview.layers[0]
            preview.kernel(layer.name, layer.selected[0][0])

        med, _ = timed(move, repeat=9)
        print(f"| {name} | {build * 1e3:.0f} | {heat * 1e3:.0f} | {med * 1e3:.1f} |")


if __name__ == "__main__":
    main()
