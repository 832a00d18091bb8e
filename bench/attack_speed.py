"""Attack and client-round speed: `python bench/attack_speed.py [--threads 2] [--quick]`.

1. DLG / iDLG on the DLG paper's LeNet, 300 L-BFGS outer steps, one 32x32 gallery image, 3 seeds:
   the engine's attack (flat compact-form L-BFGS, native conv kernels) next to a plain textbook loop
   (torch.optim.LBFGS and a Python closure over oneDNN convs).
2. Inverting Gradients on CIFAR ResNet-18, ms per iteration: the engine's closed-form cosine VJP next to
   letting autograd differentiate the cosine.
3. The client's gradient computation (forward + backward) per model and batch size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import header, timed  # noqa: E402
from tipcore.federation import data, fl, models
from tipcore.pipeline import metrics
from tipcore.attacks import create  # noqa: E402
from tipcore.attacks.problem import MatchingProblem  # noqa: E402
from tipcore.common.progress import drive  # noqa: E402
from tipcore.common.seeding import generator  # noqa: E402


def private_batch(image_id: str = "cifar10-00") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    img = data.sample_image(image_id)
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), torch.tensor([data.get_sample(image_id).label]), img


def textbook_dlg(view: fl.ServerView, update: fl.SharedUpdate, gen: torch.Generator, steps: int) -> tuple[np.ndarray, int]:
    """DLG as its reference code writes it: torch.optim.LBFGS, a closure, soft label, default oneDNN."""
    problem = MatchingProblem(view, update)
    x = torch.randn(problem.shape, generator=gen).requires_grad_(True)
    label = torch.randn((1, view.num_classes), generator=gen).requires_grad_(True)
    opt = torch.optim.LBFGS([x, label], lr=1.0)
    evals = 0

    def closure():
        nonlocal evals
        evals += 1
        opt.zero_grad()
        grads = problem.gradients(x, label, soft=True)
        loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, problem.targets))
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach().clamp(0, 1).permute(0, 2, 3, 1).numpy(), evals


def bench_dlg(seeds: list[int], steps: int) -> None:
    print(f"\n## DLG / iDLG, LeNet, {steps} L-BFGS steps, gallery cifar10-00")
    print("| attack | seed | seconds | closure evals | ms / eval | PSNR dB | label |")
    print("|---|---|---|---|---|---|---|")
    x, y, img = private_batch()
    for seed in seeds:
        model = models.build("lenet", seed=seed)
        update, _ = fl.client_update(model, x, y, fl.RoundConfig(), generator=generator(seed, "defense"))
        view = fl.ServerView("lenet", 10, model.state_dict())
        for name in ("dlg", "idlg"):
            t0 = time.perf_counter()
            res = drive(create(name, {"iterations": steps}).reconstruct(view, update, generator=generator(seed, "attack")))
            dt = time.perf_counter() - t0
            psnr = float(metrics.psnr_per_image(img[None], res.images)[0])
            print(f"| {name} | {seed} | {dt:.2f} | {res.evaluations} | {dt / res.evaluations * 1e3:.2f} | {psnr:.1f} | {res.labels[0]} |")
        t0 = time.perf_counter()
        rec, evals = textbook_dlg(view, update, generator(seed, "attack"), steps)
        dt = time.perf_counter() - t0
        psnr = float(metrics.psnr_per_image(img[None], rec)[0])
        print(f"| textbook DLG | {seed} | {dt:.2f} | {evals} | {dt / evals * 1e3:.2f} | {psnr:.1f} | |")


def bench_ig(iters: int) -> None:
    print(f"\n## Inverting Gradients, CIFAR ResNet-18 (random init, eval BN), {iters} iterations")
    x, y, _ = private_batch()
    model = models.build("resnet18", seed=0)
    update, _ = fl.client_update(model, x, y, fl.RoundConfig(), generator=generator(0, "defense"))
    view = fl.ServerView("resnet18", 10, model.state_dict())
    drive(create("ig", {"iterations": 3}).reconstruct(view, update, generator=generator(0, "attack")))  # warm-up
    t0 = time.perf_counter()
    drive(create("ig", {"iterations": iters}).reconstruct(view, update, generator=generator(0, "attack")))
    ours = (time.perf_counter() - t0) / iters
    problem = MatchingProblem(view, update)
    xd = torch.rand(problem.shape, requires_grad=True)
    tn = torch.sqrt(sum((t * t).sum() for t in problem.targets))

    def autograd_cosine() -> None:
        g = problem.gradients(xd, y, soft=False)
        dot = sum((a * b).sum() for a, b in zip(g, problem.targets))
        loss = 1 - dot / (torch.sqrt(sum((a * a).sum() for a in g)) * tn)
        torch.autograd.grad(loss, [xd])

    plain, _ = timed(autograd_cosine, repeat=max(3, iters // 4))
    print("| implementation | ms / iteration |")
    print("|---|---|")
    print(f"| engine: closed-form cosine VJP, whole attack loop (Adam, TV, box, snapshots) | {ours * 1e3:.0f} |")
    print(f"| plain: autograd through the cosine, gradient computation only | {plain * 1e3:.0f} |")


def bench_client() -> None:
    print("\n## Client gradient computation (forward + backward, mean CE)")
    print("| model | batch | ms (median) |")
    print("|---|---|---|")
    for name, batches in (("lenet", (1, 8, 64)), ("convnet", (1, 8, 64)), ("resnet18", (1, 8, 64))):
        model = models.build(name, seed=0).eval()
        for b in batches:
            x = torch.rand(b, 3, 32, 32)
            y = torch.zeros(b, dtype=torch.long)
            med, _ = timed(lambda: fl.batch_gradient(model, x, y), repeat=5)
            print(f"| {name} | {b} | {med * 1e3:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("attack speed")
    bench_dlg([0] if args.quick else [0, 1, 2], 30 if args.quick else 300)
    bench_ig(5 if args.quick else 30)
    bench_client()


if __name__ == "__main__":
    main()
