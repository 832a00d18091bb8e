"""tipcore.pipeline.experiment: config validation and round trips, one run end to end, the artifact files, atomic writes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tipcore import defenses
from tipcore.federation import data
from tipcore.pipeline import experiment
from tipcore.pipeline.runspec import RunSpec
from tipcore.federation.fl import RoundConfig

RESULT_KEYS = {"psnr", "ssim", "mse", "label_true", "label_pred", "iterations", "restarts", "seconds", "model",
               "attack", "defense", "seed", "versions", "device"}
METRIC_KEYS = ("psnr", "ssim", "mse", "label_accuracy", "per_image_psnr", "label_true", "label_pred", "iterations",
               "restarts", "diverged", "stopped", "final_loss")


def small_config(**changes) -> RunSpec:
    base = dict(seed=0, model="lenet", image_ids=("cifar10-00",), round=RoundConfig(clip=5.0), defense="tip",
                defense_cfg={"ratio": 0.3, "noise": "direct", "beta": 0.01}, attack="idlg",
                attack_cfg={"iterations": 4}, report_every=2, device="cpu")
    base.update(changes)
    return RunSpec(**base)


@pytest.fixture(scope="module")
def record():
    return experiment.run(small_config())


# --------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, pattern", [
    ({"model": "vgg"}, r"unknown model 'vgg'.*lenet"),
    ({"defense": "magic"}, r"unknown defense 'magic'.*tip"),
    ({"attack": "gifd"}, r"unknown attack 'gifd'.*dlg"),
    ({"weights": "imagenet"}, r"weights"),
    ({"seed": -1}, r"seed"),
    ({"report_every": 0}, r"report_every"),
    ({"defense": "tip", "defense_cfg": {"ratoi": 0.1}}, r"ratoi"),
    ({"defense": "prune", "defense_cfg": {"ratio": 1.5}}, r"ratio.*\[0, 1\]"),
    ({"defense": "tip", "defense_cfg": {"cutoff": -0.1}}, r"cutoff.*\[0, 1\]"),
    ({"attack": "ig", "attack_cfg": {"lr": 0}}, r"lr"),
    ({"attack": "dlg", "attack_cfg": {"itertions": 3}}, r"itertions"),
])
def test_config_validation_names_the_problem(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        small_config(**changes)


def test_config_round_trips_through_dict_and_json():
    cfg = RunSpec(seed=5, model="convnet", image_ids=("cifar10-01", "cifar10-02"), labels=(8, 8),
                           num_classes=10, round=RoundConfig(mode="fedavg", batch_size=2, local_steps=3, lr=0.01,
                                                             clip=5.0),
                           defense="tip", defense_cfg={"ratio": 0.3, "noise": "direct", "beta": 0.01}, attack="ig",
                           attack_cfg={"iterations": 10, "tv": 0.001}, labels_known=True, report_every=5,
                           device="cpu")
    d = cfg.to_dict()
    assert RunSpec.from_dict(d) == cfg
    assert RunSpec.from_dict(json.loads(json.dumps(d))) == cfg
    assert RunSpec.from_dict(RunSpec().to_dict()) == RunSpec()
    with pytest.raises(ValueError, match="colour"):
        RunSpec.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="momentum"):
        RunSpec.from_dict({**d, "round": {**d["round"], "momentum": 0.9}})


def test_with_budget_only_touches_budgeted_defenses():
    for name, spec in defenses.DEFENSES.items():
        options = experiment.with_budget(name, {}, 2.0, 1e-6)
        if spec.uses_budget:
            assert options == {"epsilon": 2.0, "delta": 1e-6}
            defenses.create(name, options)  # the budget is a valid option of that defense
        else:
            assert options == {}


def test_image_and_label_errors():
    with pytest.raises(ValueError, match="batch_size"):
        experiment.run(small_config(image_ids=("cifar10-00", "cifar10-01")))
    with pytest.raises(ValueError, match=r"label 12.*\[0, 9\]"):
        experiment.prepare(small_config(labels=(12,), num_classes=10))
    with pytest.raises(ValueError, match="labels are required"):
        experiment.prepare(small_config(), images=np.zeros((1, 32, 32, 3), np.float32))


def test_an_uploaded_image_runs_with_its_label():
    image = data.sample_image("cifar10-05")
    record = experiment.run(small_config(labels=(2,), attack_cfg={"iterations": 2}), images=image)
    assert record.prepared.labels == (2,) and np.array_equal(record.prepared.images[0], image)
    assert record.scores.label_accuracy == 1.0  # iDLG reads the given label back off the update


# -------------------------------------------------------------------------------------- run, artifacts

def test_run_record_is_consistent(record):
    assert record.result.iterations == 4
    assert [s.step for s in record.result.history] == [2, 4]
    assert record.prepared.labels == (data.get_sample("cifar10-00").label,)
    assert record.prepared.diagnostics.defense == "tip"
    assert set(record.prepared.defended.tensors) == set(record.prepared.clean.tensors)


def test_artifact_files_are_complete_and_parse(record):
    files = experiment.artifact_files(record)
    assert set(files) >= {"result.json", "defense.json", "metrics.csv", "original.png", "reconstruction.png",
                          "progress.png"}
    assert all(isinstance(v, bytes) and v for v in files.values())
    result = json.loads(files["result.json"])
    assert RESULT_KEYS <= set(result)
    assert result["psnr"] == pytest.approx(record.scores.psnr) and result["ssim"] == pytest.approx(record.scores.ssim)
    assert result["label_true"] == [3] and result["label_pred"] == list(record.result.labels)
    assert (result["model"], result["attack"], result["defense"], result["seed"]) == ("lenet", "idlg", "tip", 0)
    assert result["iterations"] == 4 and result["restarts"] == 0 and result["seconds"] >= 0
    assert {"torch", "tipcore", "numpy"} <= set(result["versions"]) and isinstance(result["device"], str)
    assert RunSpec.from_dict(result["spec"]) == record.config
    diag = json.loads(files["defense.json"])
    assert diag["defense"] == "tip" and [layer["name"] for layer in diag["layers"]] == ["body.0", "body.2", "body.4"]
    rows = list(csv.reader(io.StringIO(files["metrics.csv"].decode())))
    assert rows[0][:5] == ["defense", "attack", "model", "seed", "psnr"] and len(rows) == 2
    assert rows[1][:4] == ["tip", "idlg", "lenet", "0"]
    for name in ("original.png", "reconstruction.png", "progress.png"):
        with Image.open(io.BytesIO(files[name])) as img:
            img.load()
            assert img.format == "PNG" and img.mode == "RGB" and min(img.size) >= 32


def _strict_json(payload: bytes):
    def reject(token: str):
        raise ValueError(f"{token} is not JSON (RFC 8259)")

    return json.loads(payload, parse_constant=reject)


def test_artifact_json_is_strict_json(record):
    files = experiment.artifact_files(record)
    _strict_json(files["result.json"])
    _strict_json(files["defense.json"])
    # A diverged run's NaN loss and an infinite noise-to-signal (a slice that was exactly zero) must come out as
    # null, not as the NaN / Infinity tokens strict parsers reject: this record holds both.
    from dataclasses import replace

    broken = replace(record, result=replace(record.result, final_loss=float("nan")),
                     analysis={**record.analysis, "noise_to_signal": float("inf")})
    result = _strict_json(experiment.artifact_files(broken)["result.json"])
    assert result["final_loss"] is None and result["update"]["noise_to_signal"] is None


def test_same_seed_same_metrics_and_different_seed_differs():
    a = experiment.result_dict(experiment.run(small_config(seed=3)))
    with torch.random.fork_rng():
        torch.rand(1000)  # the global RNG must not matter
        b = experiment.result_dict(experiment.run(small_config(seed=3)))
    c = experiment.result_dict(experiment.run(small_config(seed=4)))
    assert {k: a[k] for k in METRIC_KEYS} == {k: b[k] for k in METRIC_KEYS}
    assert json.dumps(a["defense_summary"], sort_keys=True) == json.dumps(b["defense_summary"], sort_keys=True)
    assert a["psnr"] != c["psnr"]


# -------------------------------------------------------------------------------------- atomic writes

class _FailsAfterFirst(Mapping):
    """A file mapping whose iteration raises after handing out its first file."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self._files = files

    def __getitem__(self, key: str) -> bytes:
        return self._files[key]

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self):
        keys = iter(self._files)
        yield next(keys)
        raise RuntimeError("disk full (simulated)")


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_artifacts_writes_and_replaces(tmp_path, record):
    files = experiment.artifact_files(record)
    out = tmp_path / "run"
    assert experiment.write_artifacts(out, files) == out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    (out / "stale.txt").write_text("from an older run")
    new = {"result.json": b"{}", "extra.bin": b"\x00\x01"}
    experiment.write_artifacts(out, new)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == new  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp or old directories left


def test_write_artifacts_failure_leaves_out_untouched(tmp_path, record):
    files = experiment.artifact_files(record)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="disk full"):
        experiment.write_artifacts(out, _FailsAfterFirst(files))
    assert list(tmp_path.iterdir()) == []  # neither out nor a temporary directory
    experiment.write_artifacts(out, {"result.json": b'{"old": true}'})
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        experiment.write_artifacts(out, _FailsAfterFirst(files))
    assert _snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_write_artifacts_keeps_the_old_out_when_the_swap_fails(tmp_path, monkeypatch):
    out = tmp_path / "run"
    experiment.write_artifacts(out, {"result.json": b'{"old": true}'})
    before = _snapshot(tmp_path)
    real_rename = Path.rename

    def failing_rename(self, target):
        if self.name.startswith(".run.tmp-"):
            raise OSError("rename failed (simulated)")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        experiment.write_artifacts(out, {"result.json": b'{"new": true}'})
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_write_artifacts_refuses_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match="not a directory"):
        experiment.write_artifacts(target, {"a": b"1"})
    assert target.read_text() == "not a directory"
