"""ServerApp: FedAvg over the SuperNodes, accuracy on the held-out digits after every round, and one
client's update per round written for attack studies (RecordingFedAvg).

Everything the run config says is checked before the first message goes out: an unknown defense, bad
defense options, a clip mismatch or TIP on a model without conv layers stop the run at start.
"""

from __future__ import annotations

import json
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from tipcore.federation.fl import trainable_names
from tipcore.flower import NoAggregatedReply, RecordingFedAvg, RoundSettings, ScaledRoundTimeout, check_defense
from tipflower import task

app = ServerApp()


class RunConfigError(ValueError):
    """The run config is unusable; raised before round one."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    try:
        settings = RoundSettings(lr=float(cfg["lr"]), clip=float(cfg["clip"]), batch_size=int(cfg["batch-size"]),
                                 local_epochs=int(cfg["local-epochs"]),
                                 examples_per_round=int(cfg.get("examples-per-round", 0)))
        model = task.build_model(str(cfg["model"]), int(cfg["seed"]))
        check_defense(str(cfg["defense"]), str(cfg["defense-options"]), settings.clip, model)
    except ValueError as err:
        log(ERROR, "tipflower: refusing to start: %s", err)
        raise RunConfigError(str(err)) from None

    rounds, min_nodes = int(cfg["num-server-rounds"]), int(cfg["min-nodes"])
    record_dir = Path(str(cfg["record-dir"])).resolve() if str(cfg["record-dir"]) else None
    if bool(cfg["secure-aggregation"]):
        if min_nodes < 3:
            why = f"secure-aggregation (SecAgg+ splits each mask among >= 3 nodes) needs min-nodes >= 3, got {min_nodes}"
            log(ERROR, "tipflower: refusing to start: %s", why)
            raise RunConfigError(why)
        from tipflower import secagg

        data = secagg.run(grid, context, model=model, settings=settings, rounds=rounds, min_nodes=min_nodes,
                          round_timeout=float(cfg["round-timeout"]), record_dir=record_dir)
        data.update(defense=str(cfg["defense"]), defense_options=str(cfg["defense-options"]), model=str(cfg["model"]),
                    rounds=rounds, settings=settings.to_config())
        log(INFO, "tipflower: summary %s", json.dumps(data))
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
            (record_dir / "summary.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        return
    strategy = RecordingFedAvg(
        record_dir=record_dir, parameter_names=trainable_names(model),
        record_meta={"model": str(cfg["model"]), "num_classes": 10, "seed": int(cfg["seed"])},
        fraction_train=1.0, fraction_evaluate=0.0,  # evaluation is central, on the held-out digits
        min_train_nodes=min_nodes, min_available_nodes=min_nodes,
    )
    try:
        timed_grid = ScaledRoundTimeout(grid, ceiling_s=float(cfg["round-timeout"]),
                                        factor=float(cfg["round-timeout-factor"]))
    except ValueError as err:
        log(ERROR, "tipflower: refusing to start: %s", err)
        raise RunConfigError(str(err)) from None
    accuracy: dict[int, float] = {}
    started = time.perf_counter()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy[server_round] = task.evaluate(model)
        log(INFO, "tipflower: round %d held-out accuracy %.4f (%.1f s)", server_round, accuracy[server_round],
            time.perf_counter() - started)
        return MetricRecord({"accuracy": accuracy[server_round]})

    def summary(**extra: object) -> dict:
        return {"defense": str(cfg["defense"]), "defense_options": str(cfg["defense-options"]),
                "model": str(cfg["model"]), "rounds": rounds, "seconds": time.perf_counter() - started,
                "accuracy": [accuracy[r] for r in sorted(accuracy)], "participation": strategy.rounds,
                "round_times": timed_grid.history, "settings": settings.to_config(), **extra}

    def write(data: dict) -> None:
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
            (record_dir / "summary.json").write_text(json.dumps(data, indent=1), encoding="utf-8")

    try:
        result = strategy.start(grid=timed_grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                                timeout=float(cfg["round-timeout"]), train_config=ConfigRecord(settings.to_config()),
                                evaluate_fn=evaluate)
    except NoAggregatedReply as err:
        # One line saying why; the exception then ends the ServerApp (exit 202) and marks the run failed.
        log(ERROR, "tipflower: run failed: %s", err)
        write(summary(error=str(err)))
        raise
    data = summary(  # per round, the clients' metrics averaged by FedAvg (train-seconds, defense-seconds, ...)
        client_metrics={r: dict(m) for r, m in sorted(result.train_metrics_clientapp.items())})
    log(INFO, "tipflower: summary %s", json.dumps(data))
    write(data)
