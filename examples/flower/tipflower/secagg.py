"""The same FedAvg under SecAgg+ (run config ``secure-aggregation = true``): Flower's legacy workflow.

flwr 1.42 runs SecAgg+ only through ``SecAggPlusWorkflow`` inside a ``DefaultWorkflow`` with a legacy
``flwr.server.strategy.FedAvg``. Each node's ClientApp trains, ``DefenseMod`` defends the update (it reads
and writes the legacy fit layout), and ``secaggplus_mod`` masks the defended parameters; the server
unmasks only their weighted sum, so it never holds one client's update and nothing per client is recorded
(``record-dir`` gets ``summary.json`` only). The weights are the state_dict entries in order (the legacy
layout has no names).
"""

from __future__ import annotations

import math
import time
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from tipcore.flower import RoundSettings
from tipflower import task


def reconstruction_threshold(nodes: int) -> int:
    """Shares needed to unmask: a majority of the sampled nodes, and at least 2."""
    return max(2, math.floor(nodes / 2) + 1)


def run(grid: Grid, context: Context, *, model: torch.nn.Module, settings: RoundSettings, rounds: int,
        min_nodes: int, round_timeout: float, record_dir: Path | None) -> dict[str, Any]:
    names = list(model.state_dict())
    accuracy: dict[int, float] = {}
    started = time.perf_counter()

    def evaluate(server_round: int, arrays: list, config: dict) -> tuple[float, dict[str, float]]:
        model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in zip(names, arrays)})
        accuracy[server_round] = task.evaluate(model)
        log(INFO, "tipflower: round %d held-out accuracy %.4f (%.1f s, SecAgg+)", server_round,
            accuracy[server_round], time.perf_counter() - started)
        return 0.0, {"accuracy": accuracy[server_round]}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=min_nodes,
                      min_available_clients=min_nodes, evaluate_fn=evaluate,
                      initial_parameters=ndarrays_to_parameters([v.numpy() for v in model.state_dict().values()]),
                      on_fit_config_fn=lambda r: {**settings.to_config(), "server-round": r})
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds, round_timeout=round_timeout),
                           strategy=strategy)
    # max_weight: the largest num-examples a node may send (all 4,000 training digits), so no weight overflows.
    secagg = SecAggPlusWorkflow(num_shares=min_nodes, reconstruction_threshold=reconstruction_threshold(min_nodes),
                                max_weight=4000, timeout=round_timeout)
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
    return {"secure_aggregation": {"num_shares": min_nodes,
                                   "reconstruction_threshold": reconstruction_threshold(min_nodes)},
            "seconds": time.perf_counter() - started, "accuracy": [accuracy[r] for r in sorted(accuracy)]}
