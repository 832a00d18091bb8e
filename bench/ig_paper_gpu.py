"""Inverting Gradients at the TIP paper's budget on CIFAR ResNet-18, naive and adaptive, on a GPU.

The reproduction report (docs/REPRODUCTION.md) runs IG on ResNet-18 with a CPU budget of 24 iterations; this
script runs the paper's protocol (``--attack-preset paper``: 10,000 signed-Adam iterations, lr 0.004, TV 1e-4,
one trial) on the same round as the report (one FedAvg update of 4 local steps, clip 5, random-init ResNet-18)
for the first N gallery CIFAR-10 images, every setting of one image attacked together in one batched
optimisation. Cells are appended to ``OUT/cells.csv`` as they finish, so a run cut short keeps what it did and a
rerun with the same flags resumes.

    python bench/ig_paper_gpu.py --device cuda --images 4 --out runs/ig-paper
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header  # noqa: E402
from tipcore import attacks  # noqa: E402
from tipcore.studies.cells import DefenseSetting, attack_cells, attack_config, cifar10_ids  # noqa: E402
from tipcore.studies.reproduce import IG_ROUND, kind_of  # noqa: E402
from tipcore.studies.resumable import ResumableTable  # noqa: E402

SETTINGS = {
    "none": DefenseSetting("none"),
    "tip p=0.1": DefenseSetting("tip", "ratio", 0.1),
    "tip p=0.3": DefenseSetting("tip", "ratio", 0.3),
    "dp_paper": DefenseSetting("dp_paper"),
}
COLUMNS = ("setting", "image", "attack", "attacker", "iterations", "steps", "stopped", "psnr", "ssim", "flag_precision", "flag_recall",
           "noise_to_signal", "seconds")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--attacks", default="ig,ig_drop")
    p.add_argument("--iterations", type=int, default=None, help="default: the paper preset's 10000")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ig-paper")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from: {', '.join(SETTINGS)}")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop the running attack this many seconds after the start and record how far it got")
    args = p.parse_args()

    header("IG at the paper's budget on ResNet-18")
    options = attacks.preset_options("ig", "paper")
    iterations = args.iterations or options.pop("iterations")
    options.pop("iterations", None)
    names = [a for a in args.attacks.split(",") if a]
    chosen = {label: SETTINGS[label] for label in args.settings.split(",")}
    started = time.monotonic()

    def past_deadline() -> bool:
        return args.deadline_s is not None and time.monotonic() - started > args.deadline_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = ResumableTable(out / "cells.csv", COLUMNS, ("setting", "image", "attack"))
    print(f"# {iterations} iterations, options {options}, settings {list(chosen)}, device {args.device}", flush=True)
    for image in cifar10_ids(args.images):
        for attack in names:
            todo = [(label, s) for label, s in chosen.items()
                    if not cells.has(dict(setting=label, image=image, attack=attack))]
            if not todo:
                continue
            cfgs = [attack_config(image, s, attack, iterations=iterations, seed=args.seed, model="resnet18",
                                  round_cfg=IG_ROUND, attack_options=options) for _, s in todo]
            from dataclasses import replace

            t0 = time.perf_counter()
            rows = attack_cells([replace(c, device=args.device) for c in cfgs], should_stop=past_deadline)
            seconds = time.perf_counter() - t0
            for (label, _), row in zip(todo, rows):
                cells.append(dict(setting=label, image=image, attack=attack, attacker=kind_of(attack),
                                  iterations=iterations, **{k: row[k] for k in COLUMNS if k in row}))
                print(f"{image} {attack:8s} {label:10s} PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.3f}  "
                      f"recall {row['flag_recall']}  steps {row['steps']}{' (stopped)' if row['stopped'] else ''}", flush=True)
            print(f"# {image} {attack}: {len(todo)} settings in {seconds:.1f} s "
                  f"({1000 * seconds / iterations:.2f} ms per batched iteration)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
