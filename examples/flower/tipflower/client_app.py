"""ClientApp: train the global model on this node's shard (or, with ``examples-per-round`` N, on a seeded
sample of N of it each round); the DefenseMod then defends the reply.

The defense is not in the training code: it is the ``DefenseMod`` wrapped around this app, chosen by the
run config (``defense``, ``defense-options``), the way Flower's own ``LocalDpMod`` is used.
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()  # this module's imports (torch, flwr, tipcore): part of every round's start-up

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tipcore.flower import DefenseMod, RoundSettings, check_mod_order
from tipcore.flower.settings import round_sample
from tipcore.flower.mods import LEGACY_INS_ARRAYS, secaggplus_when_asked
from tipcore.flower.timing import process_age_s
from tipcore.common.seeding import generator
from tipflower import task


def model_for(context: Context) -> torch.nn.Module:
    return task.build_model(str(context.run_config["model"]), int(context.run_config["seed"]))


def private_data(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("start this SuperNode with --node-config 'partition-id=K num-partitions=N'")
    return task.load_partition(int(node["partition-id"]), int(node["num-partitions"]), int(context.run_config["seed"]))


# Reply path, last mod first: DefenseMod defends the trained update, then SecAgg+ (in runs with
# secure-aggregation = true) masks it. check_mod_order refuses an order that would void the defense.
app = ClientApp(mods=check_mod_order([secaggplus_when_asked, DefenseMod(model_for, private_data)]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    # Flower starts a fresh ClientApp process for every message: its age here is this round's start-up.
    startup = process_age_s()
    if LEGACY_INS_ARRAYS in msg.content.array_records:  # a SecAgg+ round: Flower's legacy fit layout
        return _legacy_train(msg, context, started, startup)
    config = msg.content["config"]
    settings = RoundSettings.from_config(config)
    server_round = int(config["server-round"])
    model = model_for(context)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    steps, n, data_s = _train(model, settings, server_round, context)
    metrics = MetricRecord({"num-examples": n, "local-steps": steps, "train-seconds": time.perf_counter() - started,
                            **cost_metrics(startup, data_s)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def cost_metrics(startup: float | None, data_s: float) -> dict[str, float]:
    """The round's cost split (bench/flower_scaling.py): the process's age when the handler was entered
    (Flower's start-up: Python, flwr, this module's imports, pulling the message), this module's import
    time within it, and loading the shard (inside train-seconds)."""
    out = {"app-import-seconds": APP_IMPORT_SECONDS, "data-seconds": data_s}
    if startup is not None:
        out["startup-seconds"] = startup
    return out


def _train(model: torch.nn.Module, settings: RoundSettings, server_round: int,
           context: Context) -> tuple[int, int, float]:
    loading = time.perf_counter()
    x, y = private_data(context)
    data_s = time.perf_counter() - loading
    partition = int(context.node_config["partition-id"])
    # examples-per-round N: this round's seeded sample of N of the shard (the DefenseMod draws the same one).
    sample = round_sample(len(y), settings, seed=int(context.run_config["seed"]), node=partition,
                          server_round=server_round)
    if sample is not None:
        x, y = x[sample], y[sample]
    print(f"tipflower client: partition {partition} training round {server_round} on {len(y)} examples", flush=True)
    steps = task.train(model, x, y, epochs=settings.local_epochs, batch_size=settings.batch_size, lr=settings.lr,
                       clip=settings.clip,
                       gen=generator(int(context.run_config["seed"]), f"flower-batches:{partition}:{server_round}"))
    return steps, len(y), data_s


def _legacy_train(msg: Message, context: Context, started: float, startup: float | None) -> Message:
    """The same training on a legacy fit message (arrays by position), replied as a FitRes."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    config = msg.content.config_records["fitins.config"]
    settings = RoundSettings.from_config(config)
    server_round = int(config["server-round"])
    model = model_for(context)
    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(msg.content[LEGACY_INS_ARRAYS], True))
    model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in zip(model.state_dict(), arrays)})
    steps, n, data_s = _train(model, settings, server_round, context)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([v.detach().numpy() for v in model.state_dict().values()]),
                 n, {"local-steps": steps, "train-seconds": time.perf_counter() - started, **cost_metrics(startup, data_s)})
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


APP_IMPORT_SECONDS = time.perf_counter() - _IMPORT_STARTED
