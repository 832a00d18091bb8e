"""TIP as a Flower client mod: fast tests on fake messages (the mod and the strategy called directly, as
Flower calls them), then a real Deployment Engine: a SuperLink and 2 SuperNodes on loopback (slow).

Skipped, with the reason, where the extra is not installed (``pip install -e '.[flower]'``; .ci/run does).
One federation serves the slow tests (start-up costs about 10 s): 2 rounds with TIP, a ServerApp that
must refuse TIP on a conv-free model at start, and last a run in which one SuperNode is killed mid-round.
Its teardown checks that every process the federation started has ended. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="flwr is not installed; install the extra with: pip install -e '.[flower]'")

from flwr.app import (ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord,  # noqa: E402
                      RecordDict)

from tipcore.flower import (RECORD_KEY, DefenseMod, NoAggregatedReply, RecordingFedAvg, RoundSettings,  # noqa: E402
                            ScaledRoundTimeout, records)
from tipcore.flower import policy  # noqa: E402
from tipcore.flower.mods import PUBLIC_KEYS  # noqa: E402
from tipcore.flower.compat import SUPPORTED_RANGE, FlowerVersionError, check_flwr_version  # noqa: E402
from tipcore.flower.deployment import LocalFederation, alive, descendants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "flower"
sys.path.insert(0, str(APP_DIR))
import launch  # noqa: E402  (examples/flower/launch.py)
from tipflower import task  # noqa: E402  (examples/flower/tipflower/task.py)

RUN_TIMEOUT_S = 150
# A SIGKILLed SuperNode is declared offline by the SuperLink only after two missed heartbeats (up to 60 s in
# flwr 1.42, not configurable); the round timeout ends the round sooner. A healthy node's round takes about
# 15 s here (most of it starting the ClientApp process), so 45 s leaves a threefold margin.
KILLED_ROUND_TIMEOUT_S = 45.0


# ------------------------------------------------------------------------------ bad input, no processes

@pytest.mark.parametrize("version", ["1.41.2", "1.43.0", "2.0.0", "nightly"])
def test_flower_outside_the_supported_range_is_refused_naming_the_range(version):
    with pytest.raises(FlowerVersionError, match=rf"flwr{SUPPORTED_RANGE}.*found flwr {version}"):
        check_flwr_version(version)
    assert check_flwr_version("1.42.7") == "1.42.7"


def test_core_install_never_imports_flwr():
    code = ("import sys, tipcore, tipcore.cli, tipcore.studies.flsim, tipcore.defenses, tipcore.pipeline.experiment; "
            "sys.exit(1 if 'flwr' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_unknown_defense_is_rejected_before_any_process_starts(tmp_path, capsys):
    children_before = descendants(os.getpid())
    assert launch.main(["--defense", "nonexistent", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown defense 'nonexistent'" in err and "tip" in err
    assert not (tmp_path / "run").exists() and descendants(os.getpid()) == children_before


def test_secure_aggregation_with_fewer_than_three_nodes_is_rejected_before_start():
    with pytest.raises(ValueError, match="needs min-nodes >= 3, got 2"):
        launch.check_run_config({"secure-aggregation": True, "min-nodes": 2})


def test_tip_on_a_model_without_conv_layers_is_rejected_before_start():
    with pytest.raises(ValueError, match="no Conv2d layers"):
        launch.check_run_config({"model": "mlp", "defense": "tip"})
    launch.check_run_config({"model": "mlp", "defense": "dp_paper"})  # DP needs no channels


# ------------------------------------------------------------------------------ fake messages, no processes
# The mod and the strategy are called exactly as Flower calls them (mod(msg, context, call_next);
# strategy.configure_train / aggregate_train), with messages built by hand: seconds, no process started.

# Everything a defense computes from the node's data: none of it may appear anywhere in a reply.
PRIVATE_KEYS = {"alpha", "selected", "mask", "beta", "layers", "summary", "noise_energy", "effective_std",
                "sigma", "n_cam", "labels", "record"}
SETTINGS = RoundSettings(lr=0.1, clip=5.0, batch_size=8, local_epochs=1)
TIP_OPTIONS = '{"ratio": 0.25, "epsilon": 5}'


@pytest.fixture
def server_process():
    """What a ServerApp process has set before it builds messages (flwr's TaskIdentity), restored after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = {k: TaskIdentity.__dict__[k] for k in ("_task_id", "_run_id", "_node_id")}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    for k, v in saved.items():
        setattr(TaskIdentity, k, v)


def _ids(msg: Message, message_id: str) -> Message:
    msg.metadata.__dict__["_message_id"] = message_id  # what the SuperLink assigns when a message is pushed
    return msg


def _train_message(node_id: int = 7, server_round: int = 1, model_name: str = "lenet") -> Message:
    config = ConfigRecord({**SETTINGS.to_config(), "server-round": server_round})
    arrays = ArrayRecord(task.build_model(model_name, 0).state_dict())
    msg = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node_id,
                  message_type=MessageType.TRAIN)
    return _ids(msg, f"train-{node_id}-{server_round}")


def _context(node_id: int = 7, run_config=None, **node_config) -> Context:
    run = {"defense": "tip", "defense-options": TIP_OPTIONS, "seed": 0, "model": "lenet", **(run_config or {})}
    return Context(run_id=1, node_id=node_id, node_config={"partition-id": 0, "num-partitions": 2, **node_config},
                   state=RecordDict(), run_config=run)


def _private(context):
    gen = torch.Generator().manual_seed(int(context.node_config["partition-id"]))
    return torch.rand(12, 3, 32, 32, generator=gen), torch.arange(12) % 4


def _fake_train(msg: Message, context: Context) -> Message:
    """A ClientApp stand-in: one small seeded step away from the global weights."""
    state = msg.content["arrays"].to_torch_state_dict()
    gen = torch.Generator().manual_seed(context.node_id)
    local = {k: (v - 0.01 * torch.randn(v.shape, generator=gen) if torch.is_floating_point(v) else v)
             for k, v in state.items()}
    return Message(RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": 12})}),
                   reply_to=msg)


def _mod():
    return DefenseMod(lambda ctx: task.build_model(str(ctx.run_config["model"]), 0), _private)


def _everything_said(reply: Message) -> set[str]:
    """Every key (and every key inside a JSON value) of every record in a reply."""
    said: set[str] = set()

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                said.add(str(k))
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            try:
                walk(json.loads(value))
            except json.JSONDecodeError:
                pass

    for name, record in reply.content.items():
        said.add(name)
        walk({k: record[k] for k in record.keys()} if not isinstance(record, ArrayRecord) else
             {k: None for k in record.keys()})
    return said


def test_no_reply_carries_the_defense_private_record_and_the_node_keeps_it(tmp_path, server_process):
    audit = tmp_path / "audit"
    msg, context = _train_message(), _context(**{"audit-dir": str(audit)})
    reply = _mod()(msg, context, _fake_train)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    said = _everything_said(reply)
    assert not said & PRIVATE_KEYS, sorted(said & PRIVATE_KEYS)
    public = reply.content.config_records[RECORD_KEY]
    assert set(public.keys()) <= set(PUBLIC_KEYS)
    assert public["defense"] == "tip" and json.loads(public["options"]) == {"ratio": 0.25, "epsilon": 5, "clip": 5.0}
    # The private record exists, on the node: the audit log holds α, the channels and the masks.
    kept = records.load_record(records.round_dir(audit, 1) / records.DEFENSE_FILE)
    assert kept["layers"] and {"alpha", "selected", "mask", "beta"} <= set(kept["layers"][0])
    assert kept["node_id"] == 7


def test_the_server_records_only_the_public_protocol_of_a_reply(tmp_path, server_process):
    strategy = RecordingFedAvg(record_dir=tmp_path / "server", record_meta={"model": "lenet", "num_classes": 10},
                               fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    sent = _configure(strategy, [7, 9])
    replies = [_mod()(m, _context(node_id=m.metadata.dst_node_id), _fake_train) for m in sent]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    server = records.round_dir(tmp_path / "server", 1)
    public = records.load_record(server / records.DEFENSE_FILE)
    assert not _keys(public) & PRIVATE_KEYS, sorted(_keys(public) & PRIVATE_KEYS)
    assert public["defense"] == "tip" and public["node_id"] == 7 and public["num_examples"] == 12
    assert public["local_steps"] == SETTINGS.steps(12) and public["clip"] == SETTINGS.clip
    every = records.load_record(server / records.PUBLIC_DEFENSE_FILE)
    assert set(every) == {"7", "9"} and not _keys(every) & PRIVATE_KEYS
    # What the server wrote is an attackable recorded update (the recorded-round loader reads it).
    from tipcore.federation import recorded
    rec = recorded.load(server)
    assert rec.update.num_examples == 12 and rec.update.local_steps == SETTINGS.steps(12)


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(map(str, value)).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


class _FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def _configure(strategy, nodes, server_round=1):
    arrays = ArrayRecord(task.build_model("lenet", 0).state_dict())
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(SETTINGS.to_config()),
                                             _FakeGrid(nodes)))
    messages.sort(key=lambda m: m.metadata.dst_node_id)  # FedAvg samples in random order
    return [_ids(m, f"train-{m.metadata.dst_node_id}-{server_round}") for m in messages]


# ------------------------------------------------------------------------------ privacy of a recorded round

def test_the_example_clientapp_reports_its_rounds_cost_split(server_process):
    """bench/flower_scaling.py splits a round with these: the process's age at the handler (Flower's start-up
    of a fresh ClientApp process), the app module's imports within it, and the shard's loading."""
    from tipflower import client_app

    settings = RoundSettings(lr=0.2, clip=5.0, batch_size=32, local_epochs=1, examples_per_round=2)
    model = task.build_model("convnet", 0)
    msg = _ids(Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "config": ConfigRecord({**settings.to_config(), "server-round": 1})}),
                       dst_node_id=7, message_type=MessageType.TRAIN), "train-7-cost")
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={"seed": 0, "model": "convnet"},
                      node_config={"partition-id": 1, "num-partitions": 3})
    metrics = client_app.train(msg, context).content["metrics"]
    assert 0 < metrics["app-import-seconds"] < metrics["startup-seconds"]  # this process is older than the import
    assert 0 <= metrics["data-seconds"] <= metrics["train-seconds"]
    assert metrics["num-examples"] == 2


def test_a_round_on_a_sample_of_the_shard_is_recorded_and_attacked_and_scored_from_the_audit(
        tmp_path, server_process, capsys):
    """examples-per-round: the example's own ClientApp (training and DefenseMod) on 2 real shards, one round
    recorded by the server, then `attack --update-dir` on it, scored with the recorded node's audit."""
    from tipflower import client_app

    from tipcore.cli import main as cli_main

    settings = RoundSettings(lr=0.2, clip=5.0, batch_size=32, local_epochs=1, examples_per_round=2)
    strategy = RecordingFedAvg(record_dir=tmp_path / "server", parameter_names=None,
                               record_meta={"model": "convnet", "num_classes": 10, "seed": 0},
                               fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    arrays = ArrayRecord(task.build_model("convnet", 0).state_dict())
    sent = sorted(strategy.configure_train(1, arrays, ConfigRecord(settings.to_config()), _FakeGrid([7, 9])),
                  key=lambda m: m.metadata.dst_node_id)
    sent = [_ids(m, f"train-{m.metadata.dst_node_id}-1") for m in sent]
    run = {"defense": "tip", "defense-options": TIP_OPTIONS, "seed": 0, "model": "convnet"}
    contexts = {7: Context(run_id=1, node_id=7, state=RecordDict(), run_config=run, node_config={
                    "partition-id": 0, "num-partitions": 2, "audit-dir": str(tmp_path / "audit-0")}),
                9: Context(run_id=1, node_id=9, state=RecordDict(), run_config=run, node_config={
                    "partition-id": 1, "num-partitions": 2, "audit-dir": str(tmp_path / "audit-1")})}
    mod = DefenseMod(client_app.model_for, client_app.private_data)
    replies = [mod(m, contexts[m.metadata.dst_node_id], client_app.train) for m in sent]
    assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
    assert not set().union(*map(_everything_said, replies)) & PRIVATE_KEYS  # the sample's examples stay home
    strategy.aggregate_train(1, replies)

    server = records.round_dir(tmp_path / "server", 1)
    public = records.load_record(server / records.DEFENSE_FILE)
    assert public["num_examples"] == 2 and public["local_steps"] == 1 and public["node_id"] == 7
    assert not _keys(public) & (PRIVATE_KEYS | {"sample_indices", "images"})
    assert {p.name for p in server.iterdir()} == {records.DEFENDED_FILE, records.GLOBAL_FILE, records.DEFENSE_FILE,
                                                  records.PUBLIC_DEFENSE_FILE}
    audit = records.round_dir(tmp_path / "audit-0", 1)
    kept = records.load_record(audit / records.DEFENSE_FILE)
    batch = records.load_tensors(audit / records.PRIVATE_BATCH_FILE)
    x, y = task.load_partition(0, 2, 0)
    assert len(kept["sample_indices"]) == 2 and torch.equal(batch["images"], x[kept["sample_indices"]])
    assert torch.equal(batch["labels"], y[kept["sample_indices"]])

    out = tmp_path / "attack"
    assert cli_main(["attack", "--update-dir", str(server), "--truth", str(audit), "--attack", "idlg_drop",
                     "--iters", "2", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["num_examples"] == 2 and result["labels_true"] == y[kept["sample_indices"]].tolist()
    assert 0 < result["psnr"] < 100 and len(result["per_image_psnr"]) == 2 and "detection" in result
    assert result["detection"]["noised"] > 0 and (out / "original.png").is_file()
    assert "psnr" in capsys.readouterr().out
    # The other node's audit is not the recorded round: refused with one line, nothing written.
    assert cli_main(["attack", "--update-dir", str(server), "--truth", str(records.round_dir(tmp_path / "audit-1", 1)),
                     "--iters", "2", "--out", str(tmp_path / "wrong"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not the audit of the update" in err and not (tmp_path / "wrong").exists()


# ------------------------------------------------------------------------------ failures cost one reply

SUPERLINK_ID = 1  # error replies the SuperLink writes for a lost node carry its id as sender


def _error_reply(msg: Message, reason: str = "Node Unavailable") -> Message:
    reply = Message(Error(code=1, reason=reason), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_ID
    return reply


def _strategy(tmp_path, nodes=2):
    return RecordingFedAvg(record_dir=tmp_path / "server", record_meta={"model": "lenet", "num_classes": 10},
                           fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)


def test_an_error_reply_costs_that_reply_and_the_round_goes_on(tmp_path, server_process, caplog):
    strategy = _strategy(tmp_path)
    ok, lost = _configure(strategy, [7, 9])
    replies = [_mod()(ok, _context(node_id=7), _fake_train), _error_reply(lost)]
    with caplog.at_level("WARNING", logger="flwr"):
        arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert strategy.rounds == [{"round": 1, "sampled": [7, 9], "aggregated": [7], "missing": [], "failed": [9]}]
    assert "node 9 replied with an error, left out of the average: Node Unavailable" in caplog.text
    assert records.load_record(records.round_dir(tmp_path / "server", 1) / records.DEFENSE_FILE)["node_id"] == 7


@pytest.mark.parametrize("case", ["all missing", "all failed"])
def test_a_round_with_no_reply_to_aggregate_stops_the_run_with_one_line(tmp_path, server_process, case):
    strategy = _strategy(tmp_path)
    sent = _configure(strategy, [7, 9])
    replies = [] if case == "all missing" else [_error_reply(m, "Message Unavailable") for m in sent]
    with pytest.raises(NoAggregatedReply) as raised:
        strategy.aggregate_train(1, replies)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("round 1: no reply to aggregate (2 node(s) sampled")
    assert ("2 did not reply" in message) == (case == "all missing")
    assert raised.value.exit_code == 202  # Flower's aggregation-error exit code for the ServerApp
    assert strategy.rounds[-1]["aggregated"] == []


def test_the_launcher_exits_non_zero_with_the_runs_one_line_error(tmp_path, monkeypatch, capsys):
    """flwr 1.42's `flwr run --stream` exits 0 even when the ServerApp failed: the launcher reads the summary."""
    from tipcore.flower import deployment

    class FailedFederation:
        def __init__(self, workdir, nodes, node_config=None):
            self.workdir = Path(workdir)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def run(self, app_dir, run_config, timeout_s):
            out = Path(run_config["record-dir"])
            out.mkdir(parents=True)
            (out / "summary.json").write_text(json.dumps({"error": "round 2: no reply to aggregate (...)"}))
            return deployment.RunOutcome(0, "", 1.0)

    monkeypatch.setattr(deployment, "LocalFederation", FailedFederation)
    assert launch.main(["--defense", "none", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the run failed: round 2: no reply to aggregate" in err


class _TimedGrid:
    """Answers after ``seconds[i]`` of a fake clock; drops the last node's reply when told to."""

    def __init__(self, clock, seconds, drop=()):
        self.clock, self.seconds, self.drop, self.timeouts = clock, list(seconds), set(drop), []

    def get_node_ids(self):
        return [7, 9]

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        if not messages:
            return []
        i = len(self.timeouts) - 1
        self.clock.now += min(self.seconds[i], timeout)
        return [m for m in messages[: (1 if i in self.drop else None)]]


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


class _Reply:  # the grid wrapper only asks a reply whether it is an error
    def has_error(self):
        return False


def test_round_timeouts_scale_with_the_measured_round_time():
    clock = _Clock()
    grid = _TimedGrid(clock, seconds=[40.0, 50.0, 1000.0, 20.0], drop={2})
    timed = ScaledRoundTimeout(grid, ceiling_s=600.0, factor=3.0, floor_s=30.0, clock=clock)
    assert timed.get_node_ids() == [7, 9]  # everything else is the wrapped grid's
    for _ in range(4):
        timed.send_and_receive([_Reply(), _Reply()], timeout=600.0)
    # round 1: the ceiling; then 3x the slowest complete round (40 s, then 50 s); the incomplete
    # round 3 (a node lost, timed out at 150 s) does not raise the bound.
    assert grid.timeouts == [600.0, 120.0, 150.0, 150.0]
    assert [h["complete"] for h in timed.history] == [True, True, False, True]
    assert timed.send_and_receive([], timeout=5.0) == [] and grid.timeouts[-1] == 5.0  # nothing sent: not timed
    assert ScaledRoundTimeout(grid, ceiling_s=60.0, factor=3.0, floor_s=30.0).floor_s == 30.0
    fixed = ScaledRoundTimeout(_TimedGrid(clock, [10.0, 10.0]), ceiling_s=45.0, factor=0, clock=clock)
    fixed.send_and_receive([_Reply()]), fixed.send_and_receive([_Reply()])
    assert fixed._grid.timeouts == [45.0, 45.0]
    with pytest.raises(ValueError, match="round-timeout-factor must be 0"):
        ScaledRoundTimeout(grid, ceiling_s=60.0, factor=0.5)


# ------------------------------------------------------------------------------ the node decides its protection

NODE_TIP = {"defense": "tip", "defense-options": '{"epsilon": 5, "ratio": 0.25}'}


@pytest.mark.parametrize("request_name, request_options, accepted", [
    ("tip", '{"epsilon": 5, "ratio": 0.25}', {"epsilon": 5}),   # the node's own minimum
    ("tip", "{}", {"epsilon": 5}),                              # nothing asked: the node's options
    ("tip", '{"epsilon": 2}', {"epsilon": 2}),                  # smaller budget: stronger, taken
    ("tip", '{"delta": 1e-7}', {"epsilon": 5, "delta": 1e-7}),
])
def test_a_request_may_strengthen_the_nodes_protection(request_name, request_options, accepted):
    name, options = policy.resolve(request_name, request_options, NODE_TIP, clip=5.0)
    assert name == "tip" and options["ratio"] == 0.25 and options["clip"] == 5.0
    assert {k: options[k] for k in accepted} == accepted


@pytest.mark.parametrize("request_name, request_options, message", [
    ("tip", '{"epsilon": 10}', "the run asks epsilon=10 for 'tip', weaker than this node's minimum epsilon=5"),
    ("tip", '{"delta": 0.001}', "weaker than this node's minimum delta=1e-05"),
    ("none", "{}", "this node requires defense 'tip' (node config); the run asked for 'none'"),
    ("dp_paper", "{}", "the run asked for 'dp_paper'"),
    ("tip", '{"ratio": 0.1}', "this node fixes ratio=0.25 for 'tip'"),
])
def test_a_weaker_or_different_request_is_refused_with_one_line(request_name, request_options, message):
    with pytest.raises(policy.PolicyError) as raised:
        policy.resolve(request_name, request_options, NODE_TIP, clip=5.0)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_node_without_a_requirement_takes_the_request_and_a_bad_node_config_is_named():
    assert policy.resolve("none", "{}", {"partition-id": 0}, clip=5.0) == ("none", {})
    with pytest.raises(policy.PolicyError, match="defense-options without defense"):
        policy.resolve("tip", "{}", {"defense-options": '{"epsilon": 1}'}, clip=5.0)
    with pytest.raises(policy.PolicyError, match="node config: unknown defense 'tipp'"):
        policy.resolve("tip", "{}", {"defense": "tipp"}, clip=5.0)


def test_the_mod_refuses_a_weaker_request_with_an_error_reply_and_sends_nothing(server_process):
    trained = []

    def train(msg, context):
        trained.append(msg)
        return _fake_train(msg, context)

    weak = _context(run_config={"defense": "tip", "defense-options": '{"epsilon": 50}'}, **NODE_TIP)
    reply = _mod()(_train_message(), weak, train)
    assert reply.has_error() and not trained  # refused before training; no update in the reply
    assert "DefenseMod: the run asks epsilon=50 for 'tip', weaker than this node's minimum epsilon=5" in \
        reply.error.reason
    strong = _context(run_config={"defense": "tip", "defense-options": '{"epsilon": 2}'}, **NODE_TIP)
    reply = _mod()(_train_message(), strong, train)
    assert not reply.has_error() and trained
    assert json.loads(reply.content.config_records[RECORD_KEY]["options"]) == {"epsilon": 2, "ratio": 0.25, "clip": 5.0}


def test_node_config_strings_with_json_reach_the_node_intact():
    """A JSON object in --node-config (defense-options) must survive Flower's own parser."""
    from flwr.common.config import parse_config_args

    from tipcore.flower.deployment import _toml_value

    config = {"defense": "tip", "defense-options": '{"epsilon": 5, "ratio": 0.25}', "partition-id": 1}
    line = " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())
    assert parse_config_args([line]) == config


def test_the_launcher_refuses_a_run_weaker_than_the_nodes_policy_before_any_process(tmp_path, capsys):
    children_before = descendants(os.getpid())
    assert launch.main(["--defense", "tip", "--defense-options", '{"epsilon": 20}', "--node-defense", "tip",
                        "--node-defense-options", '{"epsilon": 5}', "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "weaker than this node's minimum epsilon=5" in err
    assert not (tmp_path / "run").exists() and descendants(os.getpid()) == children_before


# ------------------------------------------------------------------------------ mod order (clipping, SecAgg+)

def test_a_clipping_mod_that_would_act_after_the_defense_is_refused():
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod

    from tipcore.flower import check_mod_order

    good = [secaggplus_mod, _mod(), fixedclipping_mod]
    assert check_mod_order(good) == good and good[1].order_checked
    for clipping in (fixedclipping_mod, adaptiveclipping_mod, LocalDpMod(5.0, 1.0, 5.0, 1e-5)):
        with pytest.raises(ValueError, match="is listed before DefenseMod, so it would change the defended update"):
            check_mod_order([clipping, _mod()])
    with pytest.raises(ValueError, match="secaggplus_mod is listed after DefenseMod"):
        check_mod_order([_mod(), secaggplus_mod])


def test_a_flower_clipping_norm_needs_a_checked_order_and_the_rounds_clip(server_process):
    from flwr.client.mod import make_ffn
    from flwr.clientapp.mod import fixedclipping_mod

    from tipcore.flower import check_mod_order

    def message(norm):
        msg = _train_message()
        msg.content.config_records["config"]["clipping_norm"] = norm
        return msg

    reply = _mod()(message(5.0), _context(), _fake_train)  # not built with check_mod_order
    assert reply.has_error() and "a Flower clipping mod is in use" in reply.error.reason
    app = make_ffn(_fake_train, check_mod_order([_mod(), fixedclipping_mod]))
    reply = app(message(2.0), _context())
    assert reply.has_error() and "clips at 2.0 but the round's clip" in reply.error.reason
    reply = app(message(5.0), _context())  # fixedclipping_mod clips the trained update, then TIP defends it
    assert not reply.has_error() and reply.content.config_records[RECORD_KEY]["defense"] == "tip"


def test_a_secagg_plus_message_gets_an_error_reply_that_names_the_reason(server_process):
    msg = _train_message()
    msg.content.config_records["secaggplus_configs"] = ConfigRecord({"stage": "setup"})
    reply = _mod()(msg, _context(), _fake_train)
    assert reply.has_error() and "a SecAgg+ message without Flower's legacy fit records" in reply.error.reason


def _legacy_fit_message(node_id: int = 7) -> Message:
    """A fit message as Flower's legacy workflow (the one SecAgg+ runs in) hands it to the ClientApp."""
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    state = task.build_model("lenet", 0).state_dict()
    content = RecordDict({
        "fitins.parameters": compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([v.numpy() for v in state.values()]), keep_input=False),
        "fitins.config": ConfigRecord({**SETTINGS.to_config(), "server-round": 1}),
        "secaggplus_configs": ConfigRecord({})})
    return _ids(Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN), f"fit-{node_id}")


def _legacy_fake_train(msg: Message, context: Context) -> Message:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(msg.content["fitins.parameters"], True))
    gen = torch.Generator().manual_seed(context.node_id)
    local = [a - 0.01 * torch.randn(a.shape, generator=gen).numpy() for a in arrays]
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(local), 12, {})
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def test_the_mod_defends_a_legacy_fit_message_as_secagg_plus_sends_it(server_process, tmp_path):
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    msg = _legacy_fit_message()
    reply = _mod()(msg, _context(**{"audit-dir": str(tmp_path)}), _legacy_fake_train)
    assert not reply.has_error(), reply.error.reason
    assert not _everything_said(reply) & PRIVATE_KEYS
    metrics = reply.content.config_records["fitres.metrics"]
    assert metrics[f"{RECORD_KEY}.defense"] == "tip" and "defense-seconds" in metrics
    names = list(task.build_model("lenet", 0).state_dict())
    sent = parameters_to_ndarrays(compat.arrayrecord_to_parameters(reply.content["fitres.parameters"], True))
    global_state = task.build_model("lenet", 0).state_dict()
    audit = records.load_tensors(records.round_dir(tmp_path, 1) / records.DEFENDED_FILE)
    clean = records.load_tensors(records.round_dir(tmp_path, 1) / records.CLEAN_FILE)
    for name, array in zip(names, sent):  # what goes to SecAgg+ is θ_g − (the defended update), by position
        assert torch.allclose(global_state[name] - torch.from_numpy(array), audit[name], atol=1e-6), name
    assert not torch.equal(audit["body.0.weight"], clean["body.0.weight"])  # TIP noised it
    assert torch.equal(audit["fc.bias"], clean["fc.bias"])  # and sent the rest clean


# ------------------------------------------------------------------------------ the federation

@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("federation")
    fed = LocalFederation(workdir, nodes=2, node_config=lambda k: {"audit-dir": str(workdir / f"audit-{k}")},
                          env={"TIPFLOWER_THREADS": "1"})
    try:
        fed.start()
        yield fed
    finally:
        fed.close()
        left = fed.leftovers()
        assert not left, f"processes still running after close(): {sorted(left)}"


def _run(federation, name: str, on_poll=None, **overrides):
    record_dir = federation.workdir / name
    config = {"seed": 0, "min-nodes": 2, "record-dir": str(record_dir), **overrides}
    return federation.run(APP_DIR, config, timeout_s=RUN_TIMEOUT_S, on_poll=on_poll), record_dir


@pytest.mark.slow
def test_two_rounds_with_tip_improve_the_model_and_change_only_what_the_record_says(federation):
    outcome, record_dir = _run(federation, "tip", **{"num-server-rounds": 2, "defense": "tip", "round-timeout": 120.0})
    assert outcome.returncode == 0, outcome.log[-3000:]
    summary = records.load_record(record_dir / "summary.json")
    initial, *after = summary["accuracy"]
    assert len(after) == 2 and after[-1] > initial + 0.2, summary["accuracy"]

    for rnd in (1, 2):
        server = records.round_dir(record_dir, rnd)
        sent = records.load_tensors(server / records.DEFENDED_FILE)
        assert set(records.load_tensors(server / records.GLOBAL_FILE)) >= set(sent)
        server_record = records.load_record(server / records.DEFENSE_FILE)
        assert server_record["defense"] == "tip" and server_record["model"] == "convnet"
        assert not _keys(server_record) & PRIVATE_KEYS  # the server holds no private record
        assert len(records.load_record(server / records.PUBLIC_DEFENSE_FILE)) == 2
        matched = 0
        for k in range(2):
            audit = records.round_dir(federation.workdir / f"audit-{k}", rnd)
            clean = records.load_tensors(audit / records.CLEAN_FILE)
            defended = records.load_tensors(audit / records.DEFENDED_FILE)
            record = records.load_record(audit / records.DEFENSE_FILE)
            _assert_changed_only_where_recorded(clean, defended, record)
            if server_record["node_id"] == record["node_id"]:  # the server holds exactly what this client sent
                matched += all(torch.equal(sent[n], defended[n]) for n in sent)
        assert matched == 1


def _assert_changed_only_where_recorded(clean, defended, record):
    layers = {layer["name"] + ".weight": layer for layer in record["layers"]}
    assert layers, "TIP recorded no layers"
    for name, before in clean.items():
        diff = defended[name] - before
        if name not in layers:  # biases, the fc layer: sent clean, bit for bit
            assert torch.equal(defended[name], before), name
            continue
        layer = layers[name]
        selected = sorted({c for sample in layer["selected"] for c in sample})
        changed = torch.nonzero(diff.flatten(1).abs().amax(1) > 0).flatten().tolist()
        assert changed and set(changed) <= set(selected), (name, changed, selected)
        # Within the selected kernels, only the recorded high-frequency bins carry noise.
        spectrum = torch.fft.fftshift(torch.fft.fft2(diff.double()), dim=(-2, -1)).abs()
        low = torch.tensor(layer["mask"]) == 0
        assert spectrum[..., low].max() <= 1e-3 * spectrum[..., ~low].max(), name


@pytest.mark.slow
def test_serverapp_refuses_tip_on_a_conv_free_model_before_round_one(federation):
    outcome, _ = _run(federation, "mlp", **{"num-server-rounds": 1, "defense": "tip", "model": "mlp"})
    assert "refusing to start: defense 'tip' cannot protect this model" in outcome.log, outcome.log[-3000:]
    assert "[ROUND 1" not in outcome.log


@pytest.mark.slow
def test_a_supernode_killed_mid_round_is_logged_and_the_round_ends_with_the_others(federation):
    """Runs last: it kills SuperNode 1 as soon as that node starts training in this run."""
    log_name, marker = "supernode-1.log", "training round 1"
    seen_before = federation.log(log_name).count(marker)
    killed: list[set[int]] = []

    def kill_when_training(fed):
        if not killed and fed.log(log_name).count(marker) > seen_before:
            killed.append(fed.node_tree(1))
            fed.kill_node(1)

    outcome, record_dir = _run(federation, "killed", **{"num-server-rounds": 1, "defense": "tip",
                                                         "round-timeout": KILLED_ROUND_TIMEOUT_S}, on_poll=kill_when_training)
    assert killed, "SuperNode 1 never started training"
    assert not any(alive(pid) for pid in killed[0])
    assert outcome.returncode == 0, outcome.log[-3000:]
    assert "no reply from node(s)" in outcome.log or "replied with an error" in outcome.log, outcome.log[-3000:]
    summary = records.load_record(record_dir / "summary.json")
    (participation,) = summary["participation"]
    assert len(participation["aggregated"]) == 1 and len(participation["sampled"]) == 2
    assert set(participation["missing"] + participation["failed"]) == \
        set(participation["sampled"]) - set(participation["aggregated"])
    assert summary["accuracy"][1] > summary["accuracy"][0] + 0.2


@pytest.mark.slow
def test_a_round_that_no_node_answers_in_time_fails_the_run_with_one_line(federation):
    """After the kill test (one node left), or alone: a 1 s round timeout, shorter than a ClientApp's start."""
    outcome, record_dir = _run(federation, "no-reply", **{"num-server-rounds": 2, "defense": "none",
                                                           "min-nodes": 1, "round-timeout": 1.0})
    assert "tipflower: run failed: round 1: no reply to aggregate" in outcome.log, outcome.log[-3000:]
    assert "[ROUND 2" not in outcome.log and "Exit Code: 202" in outcome.log  # the run is marked failed
    summary = records.load_record(record_dir / "summary.json")
    assert summary["error"].startswith("round 1: no reply to aggregate") and len(summary["accuracy"]) == 1
