"""Privacy in a real federation: run the example with examples-per-round N, attack the rounds it records.

    python examples/flower/measure_privacy.py --nodes 2 --rounds 2 --examples-per-round 1 \
        --defenses none,tip --out runs/flower/privacy

For each defense: ``launch.py`` runs the federation on a Deployment Engine on this machine (K SuperNodes,
each training every round on a seeded sample of N examples of its 1,000-digit shard, ``--audit`` on), the
server records one client's defended update per round (``records/round-NNN``), and for every recorded
round ``python -m tipcore attack --update-dir records/round-NNN --truth audit-node-K/round-NNN`` runs the
naive attacker and each adaptive one. The attack sees only the server's record; ``--truth`` is the
recorded node's own audit copy of that round (the node whose ``node_id`` the server's defense.json names),
used only to score the reconstruction. Prints one Markdown table (accuracy per round, PSNR per attacker
and round) and writes it with every number to ``--out/privacy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent.parent
sys.path.insert(0, str(APP_DIR))
import launch  # noqa: E402  (examples/flower/launch.py)


def audit_of(run_dir: Path, server_round: Path) -> Path:
    """The audit round directory of the node the server recorded (matched by node id)."""
    node_id = json.loads((server_round / "defense.json").read_text())["node_id"]
    for audit in sorted(run_dir.glob(f"audit-node-*/{server_round.name}")):
        if json.loads((audit / "defense.json").read_text())["node_id"] == node_id:
            return audit
    raise SystemExit(f"error: no node's audit of {server_round} (node {node_id}); was the run made with --audit?")


def attack(update_dir: Path, truth: Path, name: str, iters: int, out: Path) -> dict:
    command = [sys.executable, "-m", "tipcore", "attack", "--update-dir", str(update_dir), "--truth", str(truth),
               "--attack", name, "--iters", str(iters), "--out", str(out), "--quiet", "--overwrite"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[1:])} failed: {done.stderr.strip()[-500:]}")
    print(done.stdout.strip(), flush=True)
    result = json.loads((out / "result.json").read_text())
    return {"attack": name, "psnr": result["psnr"], "ssim": result["ssim"], "label_accuracy": result["label_accuracy"],
            "labels_true": result["labels_true"], "label_pred": result["label_pred"],
            "detection": result.get("detection"), "seconds": result["seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples-per-round", type=int, default=1)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--defenses", default="none,tip")
    parser.add_argument("--naive", default="idlg")
    parser.add_argument("--adaptive", default="idlg_hybrid", help="comma-separated; the table reports the best")
    parser.add_argument("--iters", type=int, default=100, help="L-BFGS steps of each attack")
    parser.add_argument("--out", type=Path, default=Path("runs/flower/privacy"))
    args = parser.parse_args(argv)
    adaptive = [a for a in args.adaptive.split(",") if a]
    out = args.out.resolve()
    rows = []
    for defense in [d for d in args.defenses.split(",") if d]:
        run_dir = out / defense
        code = launch.main(["--nodes", str(args.nodes), "--rounds", str(args.rounds), "--defense", defense,
                            "--examples-per-round", str(args.examples_per_round),
                            "--local-epochs", str(args.local_epochs), "--audit", "--out", str(run_dir)])
        if code != 0:
            return code
        summary = json.loads((run_dir / "records" / "summary.json").read_text())
        row = {"defense": defense, "accuracy": summary["accuracy"], "seconds": summary["seconds"], "rounds": []}
        for server_round in sorted((run_dir / "records").glob("round-*")):
            truth = audit_of(run_dir, server_round)
            results = [attack(server_round, truth, name, args.iters, out / "attacks" / defense / server_round.name / name)
                       for name in [args.naive, *adaptive]]
            row["rounds"].append({"round": server_round.name, "truth": str(truth.relative_to(out)),
                                  "attacks": results})
        rows.append(row)
    settings = {k: getattr(args, k) for k in ("nodes", "rounds", "examples_per_round", "local_epochs", "iters")}
    table = markdown(rows, args.naive, adaptive)
    (out / "privacy.json").write_text(json.dumps({"settings": settings, "runs": rows, "table": table}, indent=1))
    print(table)
    return 0


def markdown(rows: list[dict], naive: str, adaptive: list[str]) -> str:
    lines = ["| defense | accuracy per round (0, 1, ...) | round | naive " + naive + " PSNR (dB) | best adaptive ("
             + ", ".join(adaptive) + ") PSNR (dB) | labels recovered (naive / adaptive) |", "|---|---|---|---|---|---|"]
    for row in rows:
        accuracy = ", ".join(f"{a:.3f}" for a in row["accuracy"])
        for i, rnd in enumerate(row["rounds"]):
            first, *rest = rnd["attacks"]
            best = max(rest, key=lambda r: r["psnr"]) if rest else None
            lines.append(f"| {row['defense'] if i == 0 else ''} | {accuracy if i == 0 else ''} | {rnd['round']} | "
                         f"{first['psnr']:.2f} | "
                         + (f"{best['psnr']:.2f} ({best['attack']})" if best else "—") + " | "
                         f"{first['label_accuracy']:.2f} / " + (f"{best['label_accuracy']:.2f}" if best else "—") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
