"""The PSNRs the Teach page's guided tour quotes (app/tour.py): `python bench/tour_numbers.py`.

Runs each attack step of the tour with the CLI at the tour's settings (the class-demo preset: LeNet, FedSGD
on cifar10-00, clip 5, ε = 5, iDLG for 50 L-BFGS steps, seed 0) and prints PSNR and labels; about a minute on
2 CPU cores. Measured for the tour: none 29.7 dB, TIP naive 5.4, TIP + drop 27.6, TIP p = 0.6 + drop 7.1,
dp_paper 5.5 with both attackers (label 5 inferred, true 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--model", "lenet", "--image-id", "cifar10-00", "--clip", "5", "--iters", "50", "--seed", "0", "--quiet"]
RUNS = (  # (tour step, attack, defense, extra flags)
    ("1 no defense", "idlg", "none", []),
    ("2 TIP p=0.1, naive", "idlg", "tip", []),
    ("4 TIP p=0.1, drop", "idlg_drop", "tip", []),
    ("5 TIP p=0.6, drop", "idlg_drop", "tip", ["--ratio", "0.6"]),
    ("7 dp_paper, naive", "idlg", "dp_paper", []),
    ("7 dp_paper, drop", "idlg_drop", "dp_paper", []),
)


def main() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("| tour step | attack | defense | PSNR dB | label true / inferred |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tour-") as tmp:
        for i, (step, attack, defense, extra) in enumerate(RUNS):
            out = Path(tmp) / str(i)
            subprocess.run([sys.executable, "-m", "tipcore", "attack", *COMMON, "--attack", attack,
                            "--defense", defense, *extra, "--out", str(out)], check=True, env=env, cwd=ROOT)
            result = json.loads((out / "result.json").read_text())
            print(f"| {step} | {attack} | {defense} | {result['psnr']:.1f} | "
                  f"{result['label_true']} / {result['label_pred']} |", flush=True)


if __name__ == "__main__":
    main()
