"""Cost of the "What leaks" page per TIP slider move: `python bench/leaks_view.py [--threads 2]`.

A slider move on that page calls ``TipExplainer.preview`` (selection and noise, as on "How TIP works") and
then ``TipExplainer.leaks`` (per-channel energies of the clean and defended update, and the fc rows); both
are cached per setting, so this is the cost of a setting not seen before.
"""

from __future__ import annotations

import argparse
import os
import sys

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
    header("explorer: What leaks, per slider move")
    print("| model | preview ms | leaks ms | conv channels drawn |")
    print("|---|---|---|---|")
    image = data.sample_image("cifar10-00")
    for name in ("lenet", "convnet", "resnet18"):
        explainer = TipExplainer(name, image, 3)
        ratios = iter([0.1, 0.3, 0.6] * 10)
        preview = explainer.preview({"ratio": 0.1})
        med_preview, _ = timed(lambda: explainer.preview({"ratio": next(ratios)}), repeat=7)
        med_leaks, _ = timed(lambda: explainer.leaks(preview), repeat=7)
        channels = sum(c.clean.size for c in explainer.leaks(preview).convs)
        print(f"| {name} | {med_preview * 1e3:.1f} | {med_leaks * 1e3:.1f} | {channels} |", flush=True)


if __name__ == "__main__":
    main()
