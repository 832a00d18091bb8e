"""How many Inverting Gradients iterations the paper's setting needs on a CPU before the undefended attack succeeds.

The report's ResNet-18 part (``python -m tipcore reproduce --ig-attacks ...``) needs an iteration budget at which
IG clearly rebuilds an undefended image, or no defense can be judged by it. This script runs the report's own
round (CIFAR ResNet-18 at random init, FedAvg with 4 local steps, lr 1e-3, clip 5) without a defense and attacks
it with the report's IG (the paper's one-gradient stand-in objective, lr 0.1 decayed at 3/8, 5/8, 7/8) at each
budget, separately (the schedule depends on the budget), and prints PSNR per image and budget with the time.

    python bench/ig_budget.py --images 2 --budgets 250,500,1000,2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header  # noqa: E402
from tipcore.studies.cells import DefenseSetting, attack_config, cifar10_ids, reference_psnr  # noqa: E402
from tipcore.pipeline.experiment import run  # noqa: E402
from tipcore.studies.reproduce import IG_MODEL, IG_ROUND  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--budgets", default="250,500,1000,2000")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    header("IG budget on the report's ResNet-18 FedAvg round, no defense")
    images = cifar10_ids(args.images)
    ref = reference_psnr(images)
    print(f"# reference: random image {ref['random_psnr']:.2f} dB, grey guess {ref['grey_psnr']:.2f} dB")
    print("| budget | image | PSNR (dB) | SSIM | seconds | s / iteration |")
    print("|---|---|---|---|---|---|")
    for budget in (int(b) for b in args.budgets.split(",")):
        for image in images:
            spec = attack_config(image, DefenseSetting("none"), "ig", iterations=budget, seed=args.seed,
                                 model=IG_MODEL, round_cfg=IG_ROUND,
                                 attack_options={"lr": args.lr, "objective": "gradient"})
            t0 = time.perf_counter()
            record = run(spec)
            dt = time.perf_counter() - t0
            print(f"| {budget} | {image} | {record.scores.psnr:.2f} | {record.scores.ssim:.3f} | {dt:.0f} | "
                  f"{record.result.seconds / max(record.result.iterations, 1):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
