"""Attack time at each torch thread count and OpenMP wait policy, and whether the bytes change with the count.

    python bench/threads.py [--threads 1,2] [--policies PASSIVE,ACTIVE] [--lenet-steps 30] [--ig-steps 5]

Each cell is a fresh interpreter (OpenMP reads its policy once, when torch loads) that sets its threads the
way the CLI and the explorer's workers do (``TIP_THREADS`` through ``tipcore.common.runtime``) and runs two
RunSpecs: DLG's LeNet attacked by iDLG, and CIFAR ResNet-18 by Inverting Gradients (FedSGD on gallery image
cifar10-00, clip 5, no defense). It prints the attack loop's seconds (``AttackResult.seconds``), the PSNR and
the first bytes of reconstruction.png's SHA-256 (equal digests: the count did not change the result), with
the load average at the cell's end: on a shared machine the times say as much about its neighbours as
about the thread count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CELL = r"""
import hashlib, sys
from tipcore.common.runtime import configure_threads
from tipcore.federation.fl import RoundConfig
from tipcore.pipeline import experiment

threads = configure_threads()
lenet_steps, ig_steps = int(sys.argv[1]), int(sys.argv[2])
specs = {"lenet idlg": experiment.RunSpec(round=RoundConfig(clip=5.0), attack="idlg",
                                          attack_cfg={"iterations": lenet_steps}, report_every=lenet_steps),
         "resnet18 ig": experiment.RunSpec(model="resnet18", round=RoundConfig(clip=5.0), attack="ig",
                                           attack_cfg={"iterations": ig_steps}, report_every=ig_steps)}
for name, spec in specs.items():
    record = experiment.run(spec)
    png = experiment.artifact_files(record)["reconstruction.png"]
    load = open("/proc/loadavg").read().split()[0]
    print(f"{name}|{threads}|{record.result.seconds:.2f}|{record.scores.psnr:.4f}|"
          f"{hashlib.sha256(png).hexdigest()[:12]}|{load}", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--policies", default="PASSIVE,ACTIVE", help="OMP_WAIT_POLICY values, comma-separated")
    ap.add_argument("--lenet-steps", type=int, default=30)
    ap.add_argument("--ig-steps", type=int, default=5)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    print(f"# threads bench: {os.cpu_count()} CPU cores; load average at start "
          f"{open('/proc/loadavg').read().split()[0]}; LeNet iDLG {args.lenet_steps} steps, "
          f"ResNet-18 IG {args.ig_steps} steps")
    print("| policy | run | threads | attack s | PSNR dB | reconstruction.png sha256 | load |")
    print("|---|---|---|---|---|---|---|")
    for policy in args.policies.split(","):
        for threads in args.threads.split(","):
            env = {**os.environ, "OMP_WAIT_POLICY": policy, "TIP_THREADS": threads}
            proc = subprocess.run([sys.executable, "-c", CELL, str(args.lenet_steps), str(args.ig_steps)],
                                  cwd=root, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {policy} | failed | {threads} | {proc.stderr.strip().splitlines()[-1:]} |")
                continue
            for line in proc.stdout.splitlines():
                name, n, seconds, psnr, digest, load = line.split("|")
                print(f"| {policy} | {name} | {n} | {seconds} | {psnr} | {digest} | {load} |", flush=True)


if __name__ == "__main__":
    main()
