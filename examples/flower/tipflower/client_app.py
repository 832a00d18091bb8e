"""ClientApp: train the global model on this node's shard; the DefenseMod then defends the reply.

The defense is not in the training code: it is the ``DefenseMod`` wrapped around this app, chosen by the
run config (``defense``, ``defense-options``), the way Flower's own ``LocalDpMod`` is used.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tipcore.flower import DefenseMod, RoundSettings, check_mod_order
from tipcore.seeding import generator
from tipflower import task


def model_for(context: Context) -> torch.nn.Module:
    return task.build_model(str(context.run_config["model"]), int(context.run_config["seed"]))


def private_data(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("start this SuperNode with --node-config 'partition-id=K num-partitions=N'")
    return task.load_partition(int(node["partition-id"]), int(node["num-partitions"]), int(context.run_config["seed"]))


# check_mod_order: with more mods (SecAgg+, a clipping mod) it refuses an order that would void the defense.
app = ClientApp(mods=check_mod_order([DefenseMod(model_for, private_data)]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    config = msg.content["config"]
    settings = RoundSettings.from_config(config)
    server_round = int(config["server-round"])
    model = model_for(context)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = private_data(context)
    partition = int(context.node_config["partition-id"])
    print(f"tipflower client: partition {partition} training round {server_round} on {len(y)} examples", flush=True)
    steps = task.train(model, x, y, epochs=settings.local_epochs, batch_size=settings.batch_size, lr=settings.lr,
                       clip=settings.clip,
                       gen=generator(int(context.run_config["seed"]), f"flower-batches:{partition}:{server_round}"))
    metrics = MetricRecord({"num-examples": len(y), "local-steps": steps,
                            "train-seconds": time.perf_counter() - started})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
