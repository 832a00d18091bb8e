"""Side-by-side comparison of 4 defenses of one image, batched vs one single attack:
`python bench/batched_comparison.py [--threads 2] [--repeat 3]`.

For each attack (iDLG and its channel-dropping variant on DLG's LeNet, FedSGD clip 5; Inverting Gradients
on LeNet), it times, in one process: each of the four defenses (none, TIP, the paper's DP at σ = 1e-3,
pruning 0.7) attacked alone, and the same four as one batched optimisation
(``tipcore.pipeline.experiment.stream_comparison``). A single attack's cost varies with the defense (L-BFGS stops
early where the target cannot be matched), so the batched time is compared with the mean single attack
and with the slowest one. Aim: batched < 2 single attacks.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header, timed  # noqa: E402
from tipcore.pipeline import experiment
from tipcore.federation.fl import RoundConfig  # noqa: E402
from tipcore.common.progress import drive  # noqa: E402

DEFENSES = (("none", {}), ("tip", {}), ("dp_paper", {"sigma": 1e-3}), ("prune", {"ratio": 0.7}))


def configs(attack: str, iterations: int) -> list[experiment.RunSpec]:
    return [experiment.RunSpec(seed=0, model="lenet", image_ids=("cifar10-00",), round=RoundConfig(clip=5.0),
                                        defense=d, defense_cfg=o, attack=attack, attack_cfg={"iterations": iterations},
                                        device="cpu") for d, o in DEFENSES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("batched comparison of 4 defenses vs one single attack (LeNet, cifar10-00)")
    print("attack, steps | single attacks s (none, tip, dp_paper, prune) | 4 batched s | "
          "batched / mean single | batched / slowest single")
    for attack, iterations in (("idlg", 100), ("idlg_drop", 100), ("ig", 300)):
        cfgs = configs(attack, iterations)
        singles = [timed(lambda c=c: experiment.run(c), repeat=args.repeat)[0] for c in cfgs]
        batched, _ = timed(lambda: drive(experiment.stream_comparison(cfgs)), repeat=args.repeat)
        mean = sum(singles) / len(singles)
        print(f"{attack}, {iterations} | {', '.join(f'{s:.2f}' for s in singles)} | {batched:.2f} | "
              f"{batched / mean:.2f} | {batched / max(singles):.2f}")


if __name__ == "__main__":
    main()
