"""What scales how on a Flower Deployment Engine on this machine: `python bench/flower_scaling.py`.

For K SuperNodes (default 2, 4, 8) and each defense (default none and tip), starts a SuperLink and K
SuperNodes on loopback (tipcore.flower.deployment), runs R rounds of the examples/flower app (digits
ConvNet, 4,000 training digits split over the K nodes, 1 local epoch, B = 32) and reports:

* the client's own cost per round, measured inside each ClientApp and averaged by FedAvg: local training
  seconds, and the DefenseMod's seconds (TIP: Grad-CAM pass + selection + noise);
* the wall time of a round and of all R rounds, as the ServerApp saw it (after every node connected);
* peak resident memory per SuperNode: the SuperNode process, its SuperExec and the ClientApp process it
  spawns, summed (RSS from /proc sampled ten times a second; shared library pages are counted in each).

Prints a Markdown table and writes the raw numbers to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tipcore.flower.deployment import LocalFederation  # noqa: E402

APP_DIR = ROOT / "examples" / "flower"


def rss_mib(pids: set[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            pass
    return total_kib / 1024


def measure(nodes: int, defense: str, rounds: int, workdir: Path) -> dict:
    peaks = [0.0] * nodes

    def sample(fed: LocalFederation) -> None:
        for k in range(nodes):
            peaks[k] = max(peaks[k], rss_mib(fed.node_tree(k)))

    started = time.perf_counter()
    with LocalFederation(workdir, nodes, env={"TIPFLOWER_THREADS": "1"}) as fed:
        startup_s = time.perf_counter() - started
        outcome = fed.run(APP_DIR, {"num-server-rounds": rounds, "defense": defense, "min-nodes": nodes,
                                    "record-dir": str(workdir / "records"), "round-timeout": 600.0},
                          timeout_s=3600, on_poll=sample)
    if outcome.returncode != 0:
        raise SystemExit(f"run failed for K={nodes} {defense}; see {workdir}")
    summary = json.loads((workdir / "records" / "summary.json").read_text())
    metrics = list(summary["client_metrics"].values())
    return {"nodes": nodes, "defense": defense, "rounds": rounds, "startup_s": startup_s,
            "rounds_wall_s": summary["seconds"], "round_wall_s": summary["seconds"] / rounds,
            "train_s": statistics.mean(m["train-seconds"] for m in metrics),
            "defense_s": statistics.mean(m["defense-seconds"] for m in metrics),
            "peak_rss_mib_per_node": statistics.median(peaks), "peak_rss_mib_max": max(peaks),
            "accuracy": summary["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="2,4,8")
    ap.add_argument("--defenses", default="none,tip")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "flower-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print(f"# Flower scaling: {os.cpu_count()} CPUs, R = {args.rounds} rounds, ClientApps at 1 torch thread")
    print("| K | defense | client train s | client defense s | round wall s | R rounds wall s | peak RSS / SuperNode MiB | accuracy after R |")
    print("|---|---|---|---|---|---|---|---|")
    for nodes in [int(k) for k in args.nodes.split(",")]:
        for defense in [d.strip() for d in args.defenses.split(",")]:
            row = measure(nodes, defense, args.rounds, (args.out / f"k{nodes}-{defense}").resolve())
            rows.append(row)
            print(f"| {nodes} | {defense} | {row['train_s']:.2f} | {row['defense_s']:.3f} | {row['round_wall_s']:.1f} "
                  f"| {row['rounds_wall_s']:.1f} | {row['peak_rss_mib_per_node']:.0f} (max {row['peak_rss_mib_max']:.0f}) "
                  f"| {row['accuracy'][-1]:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
