"""TIP as a Flower client mod on a real Deployment Engine: a SuperLink and 2 SuperNodes on loopback.

Skipped, with the reason, where the extra is not installed (``pip install -e '.[flower]'``; .ci/run does).
One federation serves the whole module (start-up costs about 10 s): 2 rounds with TIP, a ServerApp that
must refuse TIP on a conv-free model at start, and last a run in which one SuperNode is killed mid-round.
Its teardown checks that every process the federation started has ended. Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="flwr is not installed; install the extra with: pip install -e '.[flower]'")

from tipcore.flower import records  # noqa: E402
from tipcore.flower.compat import SUPPORTED_RANGE, FlowerVersionError, check_flwr_version  # noqa: E402
from tipcore.flower.deployment import LocalFederation, alive, descendants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "flower"
sys.path.insert(0, str(APP_DIR))
import launch  # noqa: E402  (examples/flower/launch.py)

pytestmark = pytest.mark.slow
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
    code = ("import sys, tipcore, tipcore.cli, tipcore.flsim, tipcore.defenses, tipcore.experiment; "
            "sys.exit(1 if 'flwr' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_unknown_defense_is_rejected_before_any_process_starts(tmp_path, capsys):
    children_before = descendants(os.getpid())
    assert launch.main(["--defense", "nonexistent", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown defense 'nonexistent'" in err and "tip" in err
    assert not (tmp_path / "run").exists() and descendants(os.getpid()) == children_before


def test_tip_on_a_model_without_conv_layers_is_rejected_before_start():
    with pytest.raises(ValueError, match="no Conv2d layers"):
        launch.check_run_config({"model": "mlp", "defense": "tip"})
    launch.check_run_config({"model": "mlp", "defense": "dp_paper"})  # DP needs no channels


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
        assert len(records.load_record(server / "defense_records.json")) == 2  # every client's record is kept
        matched = 0
        for k in range(2):
            audit = records.round_dir(federation.workdir / f"audit-{k}", rnd)
            clean = records.load_tensors(audit / records.CLEAN_FILE)
            defended = records.load_tensors(audit / records.DEFENDED_FILE)
            record = records.load_record(audit / records.DEFENSE_FILE)
            _assert_changed_only_where_recorded(clean, defended, record)
            if server_record["partition"] == k:  # the server holds exactly what this client sent
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


def test_serverapp_refuses_tip_on_a_conv_free_model_before_round_one(federation):
    outcome, _ = _run(federation, "mlp", **{"num-server-rounds": 1, "defense": "tip", "model": "mlp"})
    assert "refusing to start: defense 'tip' cannot protect this model" in outcome.log, outcome.log[-3000:]
    assert "[ROUND 1" not in outcome.log


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
