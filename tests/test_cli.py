"""The command line: end-to-end runs with small budgets, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tipcore.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tipcore", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_attack_writes_result_json_and_pngs(tmp_path):
    out = tmp_path / "run"
    assert main(["attack", "--model", "lenet", "--image-id", "cifar10-00", "--attack", "idlg", "--defense", "none",
                 "--iters", "20", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    for key in ("psnr", "ssim", "mse", "label_true", "label_pred", "iterations", "restarts", "seconds", "model",
                "attack", "defense", "seed", "versions", "device"):
        assert key in result, key
    assert result["iterations"] == 20 and result["label_true"] == [3]
    for name in ("original.png", "reconstruction.png", "progress.png", "metrics.csv", "defense.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "reconstruction.png").size[0] >= 32


def test_attack_on_an_image_file_with_a_defense(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(path)
    out = tmp_path / "run"
    assert main(["attack", "--image", str(path), "--label", "1", "--defense", "tip", "--ratio", "0.3", "--beta", "0.1",
                 "--iters", "5", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["defense"] == "tip" and result["config"]["defense_cfg"]["beta"] == 0.1


def test_update_exports_loadable_tensors_and_defense_json(tmp_path):
    out = tmp_path / "upd"
    assert main(["update", "--model", "lenet", "--defense", "tip", "--ratio", "0.3", "--clip", "5", "--out", str(out)]) == 0
    clean = torch.load(out / "update_clean.pt", weights_only=True)
    defended = torch.load(out / "update_defended.pt", weights_only=True)
    assert clean.keys() == defended.keys()
    diag = json.loads((out / "defense.json").read_text())
    names = [layer["name"] for layer in diag["layers"]]
    assert names == ["body.0", "body.2", "body.4"]
    for layer in diag["layers"]:
        assert {"name", "kernel_size", "alpha", "selected", "cutoff", "beta"} <= layer.keys()
        assert len(layer["selected"][0]) == 3  # floor(0.3 * 12)
        changed = [c for c in range(12) if not torch.equal(clean[f"{layer['name']}.weight"][c], defended[f"{layer['name']}.weight"][c])]
        assert changed == layer["selected"][0]


@pytest.mark.parametrize("args, fragment", [
    (["attack", "--model", "nope"], "invalid choice"),
    (["attack", "--iters", "abc"], "invalid int"),
    (["attack", "--image", "/no/such/file.png"], "not found"),
    (["attack", "--image", "/etc/passwd"], "not a decodable image"),
    (["attack", "--image-id", "nope"], "unknown image id"),
    (["attack", "--defense", "dp", "--ratio", "0.3"], "does not apply"),
    (["attack", "--defense", "tip", "--cutoff", "1.5"], "cutoff must be in [0, 1]"),
    (["attack", "--defense", "tip", "--ratio", "-0.1"], "ratio must be in [0, 1]"),
    (["attack", "--defense", "tip", "--beta", "-1"], "beta must be >= 0"),
    (["attack", "--defense", "dp", "--epsilon", "0"], "epsilon must be > 0"),
    (["attack", "--defense", "tip", "--layers", "body.9"], "is not a conv layer"),
    (["attack", "--attack-opt", "warp=9"], "unknown option"),
    (["attack", "--image-id", "cifar100-00", "--weights", "digits"], "out of range"),
])
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, args, fragment):
    out = tmp_path / "out"
    proc = run_cli(*args, "--iters" if "--iters" not in args else "--seed", "2" if "--iters" not in args else "0",
                   "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("size, mode", [((1, 1), "RGB"), ((20000, 20000), "L")])
def test_degenerate_image_sizes_are_rejected(tmp_path, size, mode):
    path = tmp_path / "img.png"
    Image.new(mode, size).save(path)
    proc = run_cli("attack", "--image", str(path), "--iters", "2", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_other_image_modes_are_converted(tmp_path, mode):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    Image.new(mode, (48, 48)).save(path)
    assert main(["attack", "--image", str(path), "--iters", "2", "--out", str(tmp_path / "out"), "--quiet"]) == 0


def test_existing_out_dir_is_replaced_whole(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["attack", "--iters", "3", "--out", str(out), "--quiet"]) == 0
    assert not (out / "stale.txt").exists() and (out / "result.json").is_file()


def test_help_explains_every_subcommand():
    for sub in ("attack", "update", "train", "fl", "utility", "showcase", "sweep", "reproduce"):
        proc = run_cli(sub, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout


@pytest.mark.slow
def test_fl_command_runs_small(tmp_path):
    assert main(["fl", "--defenses", "none,tip", "--rounds", "1", "--clients", "4", "--out", str(tmp_path / "fl")]) == 0
    rows = (tmp_path / "fl" / "fl.csv").read_text().splitlines()
    assert rows[0] == "round,none,tip" and len(rows) == 2


# ------------------------------------------------- budgeted defenses, adaptive attacks, sweep and reproduce

@pytest.mark.parametrize("args, fragment", [
    (["attack", "--defense", "tip", "--clip", "5", "--defense-opt", "clip=2"], "differs from the round's clip 5.0"),
    (["attack", "--defense", "dp_paper", "--clip", "0"], "--clip must be > 0"),
    (["attack", "--attack", "ig_drop", "--attack-preset", "nope"], "has no preset 'nope'"),
    (["attack", "--attack", "idlg", "--attack-opt", "match=guess"], "match must be one of"),
    (["sweep", "--defenses", "none,nonsense"], "no strength axis for nonsense"),
    (["sweep", "--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["sweep", "--adaptive", "idlg_guess"], "unknown attack 'idlg_guess'"),
    (["sweep", "--images", "0"], "images must be in [1, 20]"),
    (["reproduce", "--images", "21"], "images must be in [1, 20]"),
    (["reproduce", "--lenet-attacks", "dlg,nope"], "unknown attack 'nope'"),
    (["reproduce", "--ig-preset", "fast"], "has no preset 'fast'"),
    (["reproduce", "--device", "tpu"], "device must be auto, cpu or cuda"),
])
def test_bad_values_for_new_flags_give_one_line_errors(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_is_refused_before_any_compute(capsys):
    assert main(["sweep", "--out", "/proc/tipcore-sweep"]) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_budgeted_defense_takes_the_round_clip_and_the_adaptive_attack_reports_detection(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", "--defense", "tip", "--attack", "idlg_drop", "--iters", "2", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["round"]["clip"] == 5.0  # the default C for a calibrated defense
    assert result["update"]["detection"]["precision"] == 1.0 and result["update"]["noise_to_signal"] > 10
    printed = capsys.readouterr().out
    assert "idlg_drop left out 3 conv channels" in printed and "precision 1.00, recall 1.00" in printed


def test_attack_reads_an_update_recorded_elsewhere(tmp_path, capsys):
    """`tipcore update` (and a Flower run, same files) -> `attack --update-dir`: the server's view only."""
    rec = tmp_path / "update"
    assert main(["update", "--model", "lenet", "--defense", "tip", "--out", str(rec)]) == 0
    assert {p.name for p in rec.iterdir()} >= {"global_weights.pt", "update_defended.pt", "defense.json"}
    out = tmp_path / "attack"
    assert main(["attack", "--update-dir", str(rec), "--attack", "idlg_drop", "--iters", "2", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["label_pred"] == [3] and result["model"] == "lenet" and result["mode"] == "fedsgd"
    assert sum(len(v) for v in result["flagged"].values()) == 3  # TIP's channels, found from the update alone
    assert (out / "reconstruction.png").is_file() and "psnr" not in result
    # A Flower round directory: FedAvg, no mode in its record, the protocol's fields only.
    flower = tmp_path / "round-001"
    flower.mkdir()
    for name in ("global_weights.pt", "update_defended.pt"):
        (flower / name).write_bytes((rec / name).read_bytes())
    (flower / "defense.json").write_text(json.dumps({"defense": "tip", "model": "lenet", "num_examples": 1,
                                                     "local_steps": 4, "lr": 0.001, "clip": 5.0}))
    assert main(["attack", "--update-dir", str(flower), "--attack", "ig", "--iters", "2", "--out",
                 str(tmp_path / "a2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "a2" / "result.json").read_text())["mode"] == "fedavg"


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: None, "is not a directory"),
    (lambda d: d.mkdir(), "lacks global_weights.pt, update_defended.pt, defense.json"),
])
def test_bad_update_dir_gives_one_line_error(tmp_path, capsys, setup, fragment):
    target = tmp_path / "rec"
    setup(target)
    assert main(["attack", "--update-dir", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and not (tmp_path / "out").exists()
