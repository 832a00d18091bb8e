"""Side-by-side comparison of 4 defenses of one image, batched vs one single attack:
`python bench/batched_comparison.py [--threads 2] [--repeat 3] [--floor-repeat 15]`.

For each attack (iDLG and its channel-dropping variant on DLG's LeNet, FedSGD clip 5; Inverting Gradients
on LeNet), it times, in one process: each of the four defenses (none, TIP, the paper's DP at σ = 1e-3,
pruning 0.7) attacked alone, and the same four as one batched optimisation
(``tipcore.pipeline.experiment.stream_comparison``). A single attack's cost varies with the defense (L-BFGS stops
early where the target cannot be matched), so the batched time is compared with the mean single attack
and with the slowest one. Aim: batched < 2 single attacks.

Then, per attack, what a batched run evaluated: the problem evaluations (rows) over all closure calls
against the four separate runs' evaluations, and how many calls evaluated 1, 2, 3 or 4 problems at once.

Last, the floor: one closure evaluation of K copies of a problem (``batched_closure``'s K-fold replicated
model, K = 1, 2, 3, 4, with the kernels the batched run takes: PyTorch's native ones up to 3 copies,
oneDNN's from 4 (``batched.NATIVE_MAX_FOLDS``); also all-native) against one evaluation of the single attack's own closure on the same problem,
interleaved, median over ``--floor-repeat`` samples. With the calls counted above, Σ calls(K) · t(K) (t(1):
the single closure, which the batched run uses for a problem left alone) is what the batched run's
evaluations cost at least, the rest of its time being the optimiser and the loop; beside it, the target
(two mean single attacks) and the part of it that the single attacks' own closure calls take.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header, timed  # noqa: E402
from tipcore import attacks  # noqa: E402
from tipcore.attacks.speed.batched import BatchedComparison, batched_closure  # noqa: E402
from tipcore.attacks.template import Attacked, attack_closure  # noqa: E402
from tipcore.common.progress import drive  # noqa: E402
from tipcore.common.seeding import generator  # noqa: E402
from tipcore.federation.fl import RoundConfig  # noqa: E402
from tipcore.pipeline import experiment  # noqa: E402

DEFENSES = (("none", {}), ("tip", {}), ("dp_paper", {"sigma": 1e-3}), ("prune", {"ratio": 0.7}))
ATTACKS = (("idlg", 100), ("idlg_drop", 100), ("ig", 300))
FOLDS = (1, 2, 3, 4)
# Whose problem the floor copies: idlg_drop's matcher rescales channels only against TIP (the others get
# no map), and a batch that holds TIP applies the stacked map to every row; iDLG and IG have no map.
FLOOR_PROBLEM = {"idlg": 0, "idlg_drop": 1, "ig": 0}
EVALS_PER_SAMPLE = 5  # closure calls per timed sample (one call of LeNet is a few ms)


def configs(attack: str, iterations: int) -> list[experiment.RunSpec]:
    return [experiment.RunSpec(seed=0, model="lenet", image_ids=("cifar10-00",), round=RoundConfig(clip=5.0),
                                        defense=d, defense_cfg=o, attack=attack, attack_cfg={"iterations": iterations},
                                        device="cpu") for d, o in DEFENSES]


def batched_counts(cfgs: list[experiment.RunSpec]) -> Counter[int]:
    """One batched run as ``stream_comparison`` makes it; returns its closure calls by rows evaluated."""
    prepared = [experiment.prepare(c) for c in cfgs]
    comparison = BatchedComparison(attacks.create(cfgs[0].attack, cfgs[0].attack_cfg))
    drive(comparison.reconstruct(prepared[0].view, [p.defended for p in prepared],
                                 generators=[generator(c.seed, "attack") for c in cfgs]))
    assert comparison.evaluated is not None
    return comparison.evaluated.calls_by_rows


def floor(cfg: experiment.RunSpec, repeat: int, folds: tuple[int, ...] = FOLDS) -> tuple[float, dict[int, float]]:
    """(seconds of one single-attack closure call, {K: seconds of one K-fold closure call, -K: the same with
    PyTorch's native kernels instead of oneDNN}) on ``cfg``'s problem."""
    prepared = experiment.prepare(cfg)
    recipe = attacks.create(cfg.attack, cfg.attack_cfg).recipe()
    problem = Attacked(recipe, prepared.view, prepared.defended, generator(cfg.seed, "attack"))
    single = attack_closure(recipe, problem, prepared.view.num_classes)
    z = torch.rand(problem.problem.shape, generator=generator(0, "bench-floor")).flatten()
    variants: dict[int, Callable[[], object]] = {0: lambda: single(z)}
    for k in folds:
        closure, zs = batched_closure(recipe, [problem] * k), z.expand(k, -1).clone()
        variants[k] = lambda closure=closure, zs=zs: closure(zs)

        def native(closure=closure, zs=zs) -> object:
            with torch.backends.mkldnn.flags(enabled=False):
                return closure(zs)

        variants[-k] = native
    samples: dict[int, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeat):  # interleaved, so that a busy neighbour slows every variant alike
        for k, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(EVALS_PER_SAMPLE):
                fn()
            samples[k].append((time.perf_counter() - t0) / EVALS_PER_SAMPLE)
    median = {k: statistics.median(v) for k, v in samples.items()}
    return median.pop(0), median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--floor-repeat", type=int, default=15)
    ap.add_argument("--wide-folds", default="8,16",
                    help="also time one closure call of these many copies (the sweep batches 16 settings), comma-separated; '' for none")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("batched comparison of 4 defenses vs one single attack (LeNet, cifar10-00)")
    print("attack, steps | single attacks s (none, tip, dp_paper, prune) | 4 batched s | "
          "batched / mean single | batched / slowest single")
    counts: dict[str, tuple[list[int], Counter[int], float, float]] = {}
    for attack, iterations in ATTACKS:
        cfgs = configs(attack, iterations)
        singles, evaluations = [], []
        for c in cfgs:
            record = experiment.run(c)  # the warm-up run, whose evaluations are counted
            evaluations.append(record.result.evaluations)
            singles.append(timed(lambda c=c: experiment.run(c), repeat=args.repeat, warmup=0)[0])
        calls = batched_counts(cfgs)  # likewise the batched warm-up
        batched, _ = timed(lambda: drive(experiment.stream_comparison(cfgs)), repeat=args.repeat, warmup=0)
        mean = sum(singles) / len(singles)
        counts[attack] = (evaluations, calls, batched, mean)
        print(f"{attack}, {iterations} | {', '.join(f'{s:.2f}' for s in singles)} | {batched:.2f} | "
              f"{batched / mean:.2f} | {batched / max(singles):.2f}")

    print()
    print("attack | separate evaluations (none, tip, dp_paper, prune; sum) | batched rows evaluated | "
          "batched closure calls (by problems evaluated: 1, 2, 3, 4)")
    for attack, (evaluations, calls, _, _) in counts.items():
        rows = sum(r * c for r, c in calls.items())
        print(f"{attack} | {', '.join(map(str, evaluations))}; {sum(evaluations)} | {rows} | "
              f"{sum(calls.values())} ({', '.join(str(calls.get(k, 0)) for k in FOLDS)})")

    print()
    print("floor: one closure call, ms (median of interleaved samples); K-fold / single in brackets; "
          "K-fold as the batched run evaluates it (native kernels up to 3 copies, oneDNN from 4), all-native after the slash")
    print("attack | single | " + " | ".join(f"{k}-fold" for k in FOLDS) +
          " | floor of the batched run s (batched s / floor) | 2 mean singles s (their closure calls alone s)")
    for attack, iterations in ATTACKS:
        single, folded = floor(configs(attack, iterations)[FLOOR_PROBLEM[attack]], args.floor_repeat)
        evaluations, calls, batched, mean = counts[attack]
        # A problem left alone in its batch is evaluated with the single closure (``SubsetClosures``).
        cost = sum(c * (single if k == 1 else folded[k]) for k, c in calls.items())
        two_singles = 2 * single * sum(evaluations) / len(evaluations)
        print(f"{attack} | {single * 1e3:.2f} | " +
              " | ".join(f"{folded[k] * 1e3:.2f} ({folded[k] / single:.2f}) / {folded[-k] * 1e3:.2f} "
                         f"({folded[-k] / single:.2f})" for k in FOLDS) +
              f" | {cost:.2f} ({batched / cost:.2f}) | {2 * mean:.2f} ({two_singles:.2f})")

    wide = tuple(int(k) for k in args.wide_folds.split(",") if k.strip())
    if wide:
        print()
        print("wider replicas: one closure call, ms (K-fold / single in brackets); as the batched run evaluates it "
              "(oneDNN from 4 copies), all-native after the slash")
        print("attack | single | " + " | ".join(f"{k}-fold" for k in wide))
        for attack, iterations in ATTACKS:
            single, folded = floor(configs(attack, iterations)[FLOOR_PROBLEM[attack]], args.floor_repeat, wide)
            print(f"{attack} | {single * 1e3:.2f} | " +
                  " | ".join(f"{folded[k] * 1e3:.2f} ({folded[k] / single:.2f}) / {folded[-k] * 1e3:.2f} "
                             f"({folded[-k] / single:.2f})" for k in wide))


if __name__ == "__main__":
    main()
