"""What scales how on a Flower Deployment Engine on this machine: `python bench/flower_scaling.py`.

For K SuperNodes (default 2, 4, 8) and each defense (default none and tip), starts a SuperLink and K
SuperNodes on loopback (tipcore.flower.deployment), runs R rounds of the examples/flower app (digits
ConvNet, 4,000 training digits split over the K nodes, 1 local epoch, B = 32) and reports:

* the client's own cost per round, measured inside each ClientApp and averaged by FedAvg: local training
  seconds, and the DefenseMod's seconds (TIP: Grad-CAM pass + selection + noise);
* the wall time of a round and of all R rounds, as the ServerApp saw it (after every node connected);
* peak resident memory per SuperNode: the SuperNode process, its SuperExec and the ClientApp process it
  spawns, summed (RSS from /proc sampled ten times a second; shared library pages are counted in each;
  a child that a ClientApp forks, caught before it execs, is left out: it shares the ClientApp's pages).

With --split, a second table per round: the round's exchange (ServerApp sends the train messages →
last reply in), and within it, averaged over the nodes, the ClientApp process's start-up (its age when
the app's train handler is entered: Python, flwr, the app's imports, pulling the message; Flower 1.42
starts a fresh process per message), of which the app module's imports, local training (of which
loading the shard), the DefenseMod, and the rest (Flower's polling and message transport, pushing the
reply, waiting for the slower node); and the peak RSS of each node, whole and ClientApp process alone.

Prints Markdown tables and writes the raw numbers to --json.
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
    return sum(rss_by_pid(pids).values())


def rss_by_pid(pids: set[int]) -> dict[int, float]:
    """MiB resident per live pid (gone or unreadable pids are left out)."""
    out = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def is_clientapp(pid: int) -> bool:
    try:
        return b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def measure(nodes: int, defense: str, rounds: int, workdir: Path) -> dict:
    peaks = [0.0] * nodes  # the node's whole tree
    app_peaks = [0.0] * nodes  # its ClientApp process alone
    clientapps: list[set[int]] = [set() for _ in range(nodes)]  # one per message handled

    forks: list[set[int]] = [set() for _ in range(nodes)]  # a ClientApp's own children caught before exec

    def sample(fed: LocalFederation) -> None:
        for k in range(nodes):
            rss = rss_by_pid(fed.node_tree(k))
            apps = {pid for pid in rss if is_clientapp(pid)}
            # A child that a ClientApp forks to run a program (e.g. a library probing with subprocess) bears
            # the ClientApp's command line and counts its shared pages in RSS until it execs: not counted.
            child_forks = {pid for pid in apps if parent(pid) in apps}
            forks[k].update(child_forks)
            apps -= child_forks
            clientapps[k].update(apps)
            peaks[k] = max(peaks[k], sum(v for pid, v in rss.items() if pid not in child_forks))
            app_peaks[k] = max([app_peaks[k], *(rss[pid] for pid in apps)])

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
    per_round = []
    for r, m in sorted(summary["client_metrics"].items(), key=lambda kv: int(kv[0])):
        exchange = summary["round_times"][int(r) - 1]["seconds"]
        known = m.get("startup-seconds", 0.0) + m["train-seconds"] + m["defense-seconds"]
        per_round.append({"round": int(r), "exchange_s": exchange, "startup_s": m.get("startup-seconds"),
                          "app_import_s": m.get("app-import-seconds"), "train_s": m["train-seconds"],
                          "data_s": m.get("data-seconds"), "defense_s": m["defense-seconds"],
                          "rest_s": exchange - known})
    return {"nodes": nodes, "defense": defense, "rounds": rounds, "startup_s": startup_s, "per_round": per_round,
            "peak_rss_mib_nodes": peaks, "peak_clientapp_rss_mib_nodes": app_peaks,
            "clientapp_processes_per_node": [len(p) for p in clientapps],
            "clientapp_forks_seen_per_node": [len(p) for p in forks],
            "rounds_wall_s": summary["seconds"], "round_wall_s": summary["seconds"] / rounds,
            "train_s": statistics.mean(m["train-seconds"] for m in metrics),
            "defense_s": statistics.mean(m["defense-seconds"] for m in metrics),
            "peak_rss_mib_per_node": statistics.median(peaks), "peak_rss_mib_max": max(peaks),
            "accuracy": summary["accuracy"]}


def _s(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def print_split(rows: list[dict]) -> None:
    print("\n# Per round: where the exchange's seconds go (client columns averaged over the nodes)")
    print("| K | defense | round | exchange s | ClientApp start-up s | of which app imports s | train s "
          "| of which shard s | defense s | rest s | ClientApp processes / node |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for r in row["per_round"]:
            print(f"| {row['nodes']} | {row['defense']} | {r['round']} | {r['exchange_s']:.1f} | {_s(r['startup_s'])} "
                  f"| {_s(r['app_import_s'])} | {r['train_s']:.2f} | {_s(r['data_s'], '.3f')} | {r['defense_s']:.3f} "
                  f"| {r['rest_s']:.1f} | {'/'.join(map(str, row['clientapp_processes_per_node']))} |")
    for row in rows:
        if any(row["clientapp_forks_seen_per_node"]):
            print(f"\n(K = {row['nodes']} {row['defense']}: ClientApp children caught before exec, not counted: "
                  f"{'/'.join(map(str, row['clientapp_forks_seen_per_node']))} per node)")
    print("\n# Peak RSS per node, MiB (whole node: SuperNode + SuperExec + ClientApp; ClientApp process alone)")
    print("| K | defense | node | peak RSS node | peak RSS ClientApp | SuperNode + SuperExec (difference) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for k, (whole, app) in enumerate(zip(row["peak_rss_mib_nodes"], row["peak_clientapp_rss_mib_nodes"])):
            print(f"| {row['nodes']} | {row['defense']} | {k} | {whole:.0f} | {app:.0f} | {whole - app:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="2,4,8")
    ap.add_argument("--defenses", default="none,tip")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "flower-bench")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--split", action="store_true", help="also print the per-round cost split and memory per node")
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
    if args.split:
        print_split(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
