"""What TIP adds to one client update: `python bench/tip_overhead.py [--threads 2]`.

Ratio = (TIP's protect: Grad-CAM pass + selection + FFT noise on the selected slices) / (the client's
own forward + backward), for CIFAR ResNet-18 at batch 1 (n_cam = 1) and batch 8 with 8 distinct labels
(n_cam = 8), FedSGD. Aim: ratio < 1.0 at batch 1.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header, timed  # noqa: E402
from tipcore import defenses
from tipcore.federation import fl, models
from tipcore.defenses.tip import compute_alphas  # noqa: E402
from tipcore.common.seeding import generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header("TIP overhead on one client update")
    print("| model | batch | n_cam | client fwd+bwd ms | Grad-CAM α ms | TIP total ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in ("resnet18", "convnet", "lenet"):
        model = models.build(name, seed=0).eval()
        for batch in (1, 8):
            x = torch.rand(batch, 3, 32, 32, generator=generator(0, "bench-x"))
            y = torch.arange(batch) % 10
            cfg = fl.RoundConfig(batch_size=batch, clip=5.0)
            update, ctx = fl.client_update(model, x, y, cfg, generator=generator(0, "defense"))
            client, _ = timed(lambda: fl.batch_gradient(model, x, y, 5.0), repeat=7)
            alpha, _ = timed(lambda: compute_alphas(ctx.model, x, y), repeat=7)
            tip = defenses.create("tip")
            total, _ = timed(lambda: tip.protect(update, ctx), repeat=7)
            n_cam = len(set(y.tolist()))
            print(f"| {name} | {batch} | {n_cam} | {client * 1e3:.1f} | {alpha * 1e3:.1f} | {total * 1e3:.1f} | {total / client:.2f} |")


if __name__ == "__main__":
    main()
