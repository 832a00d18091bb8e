"""Run the example on a Deployment Engine on this machine: a SuperLink, K SuperNodes, ``flwr run``.

    python examples/flower/launch.py --nodes 2 --rounds 5 --defense tip --out runs/flower/tip

checks the run config first (unknown defense, bad options, TIP on a model without conv layers: one-line
error, exit code 2, no process started), then starts the processes on free loopback ports, runs, prints
the held-out accuracy per round, and shuts every process down. The records (one client's update per
round, summary.json) land in --out/records, the logs in --out. README.md gives the same steps by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping

APP_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(APP_DIR))  # tipflower.task, to check the model the way the ServerApp will


def app_defaults() -> dict[str, Any]:
    with open(APP_DIR / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def check_run_config(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The app's run config with ``overrides``, validated as the ServerApp will at start (ValueError)."""
    from tipcore.flower.settings import RoundSettings, check_defense
    from tipflower import task

    config = app_defaults()
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown run config key(s) {', '.join(unknown)}; known: {', '.join(sorted(config))}")
    config.update(overrides)
    settings = RoundSettings(lr=float(config["lr"]), clip=float(config["clip"]), batch_size=int(config["batch-size"]),
                             local_epochs=int(config["local-epochs"]),
                             examples_per_round=int(config["examples-per-round"]))
    check_defense(str(config["defense"]), str(config["defense-options"]), settings.clip,
                  task.build_model(str(config["model"]), int(config["seed"])))
    if not 1 <= int(config["min-nodes"]):
        raise ValueError(f"min-nodes must be >= 1, got {config['min-nodes']}")
    if bool(config["secure-aggregation"]) and int(config["min-nodes"]) < 3:
        raise ValueError("secure-aggregation (SecAgg+ shares each mask among >= 3 nodes) needs min-nodes >= 3, "
                         f"got {config['min-nodes']}")
    from tipcore.flower.strategy import ScaledRoundTimeout

    ScaledRoundTimeout(None, ceiling_s=float(config["round-timeout"]), factor=float(config["round-timeout-factor"]))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes (clients), each with its own shard")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--defense", default="none", help="a registered tipcore defense: none, dp_paper, tip, ...")
    parser.add_argument("--defense-options", default="{}", help="JSON object, e.g. '{\"ratio\": 0.1, \"epsilon\": 5}'")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--examples-per-round", type=int, default=0,
                        help="each node trains every round on a seeded sample of this many of its examples "
                             "(0: its whole shard); at most 64 makes the recorded rounds attackable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-timeout", type=float, default=600.0,
                        help="seconds round 1 waits for replies, and the most any round waits")
    parser.add_argument("--round-timeout-factor", type=float, default=3.0,
                        help="later rounds wait this many times the slowest complete round (0: fixed timeout)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument("--node-defense", default="", help="the defense every node requires (its node config); "
                        "the run's --defense may then only strengthen it")
    parser.add_argument("--node-defense-options", default="{}", help="the nodes' minimum options (JSON object)")
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="SecAgg+ (Flower's legacy workflow): the server sees only the sum of the updates")
    parser.add_argument("--audit", action="store_true",
                        help="each node keeps its clean/defended updates and the private defense record (audit-node-K)")
    parser.add_argument("--out", type=Path, default=Path("runs/flower"))
    args = parser.parse_args(argv)

    out = args.out.resolve()
    overrides = {"num-server-rounds": args.rounds, "defense": args.defense, "defense-options": args.defense_options,
                 "model": args.model, "local-epochs": args.local_epochs, "seed": args.seed,
                 "examples-per-round": args.examples_per_round,
                 "min-nodes": args.nodes, "round-timeout": args.round_timeout,
                 "round-timeout-factor": args.round_timeout_factor, "secure-aggregation": args.secure_aggregation,
                 "record-dir": str(out / "records")}
    try:
        if args.nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {args.nodes}")
        check_run_config(overrides)
        node_policy = ({"defense": args.node_defense, "defense-options": args.node_defense_options}
                       if args.node_defense else {})
        from tipcore.flower.policy import resolve

        resolve(args.defense, args.defense_options, node_policy, float(app_defaults()["clip"]))
        from tipcore.flower.deployment import FederationError, LocalFederation
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def node_config(k: int) -> dict[str, str]:
        return {**node_policy, **({"audit-dir": str(out / f"audit-node-{k}")} if args.audit else {})}

    try:
        with LocalFederation(out, args.nodes, node_config=node_config) as federation:
            outcome = federation.run(APP_DIR, overrides, timeout_s=args.timeout)
    except FederationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary_path = out / "records" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if outcome.returncode != 0 or not summary or "error" in summary:
        # flwr 1.42's `flwr run --stream` exits 0 even when the ServerApp failed: the summary says why.
        why = summary.get("error") or f"flwr run exit code {outcome.returncode}, no summary.json"
        print(f"error: the run failed: {why}; see {out}/flwr-run-0.log", file=sys.stderr)
        return 1
    for rnd, acc in enumerate(summary["accuracy"]):
        print(f"round {rnd}: held-out accuracy {acc:.4f}")
    print(f"{args.defense}: {args.nodes} nodes, {args.rounds} rounds in {summary['seconds']:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
