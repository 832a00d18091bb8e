"""The command line: end-to-end runs with small budgets, and one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tipcore import cli
from tipcore.cli import main

REPO = Path(__file__).resolve().parent.parent


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
    assert result["defense"] == "tip" and result["spec"]["defense_cfg"]["beta"] == 0.1


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


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cli.main`` in this process (the engine is imported once for the whole file, not once per case)."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory): what a failed command must not change."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _result(spec: dict) -> dict:
    return {"schema_version": 1, "spec": spec}


def _spec(**changes) -> dict:
    """A valid RunSpec as a result.json holds it (one attack step, should a bad case slip through), changed."""
    from tipcore.pipeline.runspec import RunSpec

    spec = RunSpec(attack_cfg={"iterations": 1}).to_dict()
    for key, value in changes.items():
        if key.startswith("round_"):
            spec["round"][key[len("round_"):]] = value
        else:
            spec[key] = value
    return spec


# result.json files that were handed edited, damaged or made up: name -> the file's text (or JSON data).
BAD_RESULTS = {
    "spec-int": _result(5),
    "spec-list": _result([1, 2]),
    "round-string": _result(_spec(round="fast")),
    "lr-string": _result(_spec(round_lr="abc")),
    "lr-absurd": _result(_spec(round_mode="fedavg", round_local_steps=4, round_lr=1e300)),
    "clip-infinity": json.dumps(_result(_spec(round_clip=5.0))).replace("5.0", "Infinity"),
    "clip-overflow": json.dumps(_result(_spec(round_clip=5.0))).replace("5.0", "1e400"),
    "report-every-string": _result(_spec(report_every="10")),
    "image-ids-int": _result(_spec(image_ids=5)),
    "image-ids-text": _result(_spec(image_ids="cifar10-00")),
    "labels-known-text": _result(_spec(labels_known="yes")),
    "device-int": _result(_spec(device=0)),
    "model-list": _result(_spec(model=["lenet"])),
    "attack-cfg-text": _result(_spec(attack_cfg={"iterations": "1"})),
    "num-classes-0": _result(_spec(num_classes=0)),
    "num-classes-huge": _result(_spec(num_classes=10**9)),
    "deeply-nested": '{"schema_version": 1, "spec": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "schema-text": {"schema_version": "1", "spec": _spec()},
}


def _write_json(path: Path, content) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Files a new user might hand the CLI by mistake, or that someone edited."""
    from tipcore.pipeline.runspec import pixel_digest

    root = tmp_path_factory.mktemp("bad-files")
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes((REPO / "assets" / "samples" / "photo_chelsea.png").read_bytes()[:100])
    (root / "text.png").write_text("not an image\n")
    (root / "folder.png").mkdir()
    Image.new("RGB", (1, 1)).save(root / "tiny.png")
    Image.new("RGB", (40, 40)).save(root / "ok.png")
    (root / "update-empty").mkdir()
    os.mkfifo(root / "fifo.png")  # its open would wait for a writer: forever (see special_files_guard)
    for name, content in BAD_RESULTS.items():
        (root / "results" / name).mkdir(parents=True)
        _write_json(root / "results" / name / "result.json", content)
    (root / "results" / "huge").mkdir()
    (root / "results" / "huge" / "result.json").write_text(json.dumps({**_result(_spec()), "pad": "x" * 17_000_000}))
    (root / "results" / "fifo").mkdir()
    os.mkfifo(root / "results" / "fifo" / "result.json")
    # An upload's result, tampered with: its pixels a FIFO, a class count no model can have, the digest a number.
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    upload = _spec(image_ids=[], labels=[1], upload_sha256=pixel_digest(pixels))
    for name, spec, npy in [("upload-npy-fifo", upload, None), ("upload-classes", {**upload, "num_classes": 10**7}, pixels),
                            ("upload-digest-int", {**upload, "upload_sha256": 5}, pixels)]:
        (root / "results" / name).mkdir()
        _write_json(root / "results" / name / "result.json", _result(spec))
        if npy is None:
            os.mkfifo(root / "results" / name / "images.npy")
        else:
            np.save(root / "results" / name / "images.npy", npy)
    # Recorded updates with a damaged defense.json (the tensors are a real update's).
    real = root / "update-real"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["update", "--out", str(real)]) == 0
    record = json.loads((real / "defense.json").read_text())
    for name, content in {
        "record-list": [record],
        "examples-list": {**record, "num_examples": [1]},
        "examples-text": {**record, "num_examples": "1"},
        "classes-0": {**record, "num_classes": 0},
        "classes-list": {**record, "num_classes": [10]},
        "lr-text": {**record, "lr": "fast"},
        "lr-absurd": {**record, "mode": "fedavg", "local_steps": 4, "lr": 1e300},
        "lr-infinity": json.dumps({**record, "lr": 0.5}).replace("0.5", "Infinity"),
        "clip-text": {**record, "clip": "5"},
        "model-list": {**record, "model": ["lenet"]},
        "deeply-nested": "[" * 100_000 + "]" * 100_000,
    }.items():
        shutil.copytree(real, root / "updates" / name)
        _write_json(root / "updates" / name / "defense.json", content)
    return root


@contextlib.contextmanager
def special_files_guard(root: Path):
    """Keeps a case that wrongly reads a FIFO or a device from hanging or eating the machine's memory: a
    thread opens every FIFO under ``root`` for writing as soon as a reader waits on it (then closes it, so
    the reader sees an empty file), and the address space may grow by 4 GB at most (an endless read of
    /dev/zero then ends in MemoryError). The fixed code never waits on a FIFO nor reads a device."""
    import resource
    import threading

    fifos = [p for p in root.rglob("*") if stat.S_ISFIFO(p.lstat().st_mode)]
    done = threading.Event()

    def unblock() -> None:
        while not done.wait(0.05):
            for fifo in fifos:
                try:  # ENXIO while no reader has the FIFO open
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        in_use = int(f.read().split()[0]) * resource.getpagesize()
    cap = in_use + 4 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _keep_notes(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("mine")


def _a_file(out: Path) -> None:
    out.write_text("a file where --out should be")


# (argv with {files} for the bad files and {out} for the output directory, expected fragment, setup of {out}).
# `attack` cases get `--iters 1` first, so a case that wrongly slips through costs little.
BAD_INPUTS = [
    # files: missing, empty, truncated, not an image, a directory, degenerate, wrong count
    (["attack", "--image", "/no/such/file.png"], "not found", None),
    (["attack", "--image", "{files}/empty.png"], "image is empty", None),
    (["attack", "--image", "{files}/truncated.png"], "not a decodable image", None),
    (["attack", "--image", "{files}/text.png"], "not a decodable image", None),
    (["attack", "--image", "/etc/passwd"], "not a decodable image", None),
    (["attack", "--image", "{files}/folder.png"], "directory", None),
    (["attack", "--image", "{files}/tiny.png"], "", None),
    (["attack", "--image", "{files}/ok.png", "--image-id", "cifar10-00"], "not both", None),
    (["attack", "--image", "{files}/ok.png", "--label", "1", "--label", "2"], "got 1 --image but 2 --label", None),
    # out-of-range and malformed flag values
    (["attack", "--model", "nope"], "invalid choice", None),
    (["attack", "--iters", "abc"], "expected an integer >= 1, got 'abc'", None),
    (["attack", "--iters", "-1"], "expected an integer >= 1", None),
    (["attack", "--iters", "1.5"], "expected an integer >= 1", None),
    (["attack", "--seed", "-1"], "--seed: expected an integer >= 0", None),
    (["attack", "--lr", "nan"], "--lr: expected a finite number", None),
    (["attack", "--local-steps", "0"], "--local-steps: expected an integer >= 1", None),
    (["attack", "--report-every", "0"], "--report-every: expected an integer >= 1", None),
    (["attack", "--defense", "dp_paper", "--clip", "0"], "--clip must be > 0", None),
    (["attack", "--defense", "tip", "--beta", "inf"], "--beta: beta expects a finite number or none, got 'inf'", None),
    (["attack", "--defense", "tip", "--beta", "-1"], "beta must be >= 0", None),
    (["attack", "--defense", "tip", "--ratio", "-0.1"], "ratio must be in [0, 1]", None),
    (["attack", "--defense", "tip", "--cutoff", "1.5"], "cutoff must be in [0, 1]", None),
    (["attack", "--defense", "dp", "--epsilon", "0"], "epsilon must be > 0", None),
    (["attack", "--defense", "tip", "--layers", "body.9"], "is not a conv layer", None),
    (["attack", "--label", "-1"], "labels must be in [0, 9]", None),
    (["attack", "--label", "10"], "labels must be in [0, 9]", None),
    (["attack", "--label", "5000000"], "labels must be in [0, 9]", None),
    (["attack", "--image", "{files}/ok.png", "--label", "10"], "labels must be in [0, 9]", None),
    (["attack", "--image-id", "cifar100-00", "--label", "100"], "labels must be in [0, 99]", None),
    (["attack", "--image-id", "cifar100-00", "--weights", "digits"], "out of range", None),
    # typed --defense-opt / --attack-opt
    (["attack", "--defense", "tip", "--defense-opt", "ratio=abc"], "--defense-opt ratio expects a finite number", None),
    (["attack", "--defense", "tip", "--defense-opt", "signed=maybe"], "signed expects true or false", None),
    (["attack", "--defense", "tip", "--defense-opt", "beta=nan"], "beta expects a finite number or none", None),
    (["attack", "--defense", "tip", "--defense-opt", "ratio"], "expects KEY=VALUE", None),
    (["attack", "--defense", "tip", "--clip", "5", "--defense-opt", "clip=2"], "differs from the round's clip 5.0", None),
    (["attack", "--attack-opt", "iterations=1.5"], "--attack-opt iterations expects an integer", None),
    (["attack", "--attack-opt", "warp=9"], "unknown option", None),
    (["attack", "--attack", "idlg", "--attack-opt", "match=guess"], "match must be one of", None),
    # unknown names
    (["attack", "--image-id", "nope"], "unknown image id", None),
    (["attack", "--defense", "nope"], "invalid choice", None),
    (["attack", "--attack", "nope"], "invalid choice", None),
    (["attack", "--attack", "ig_drop", "--attack-preset", "nope"], "has no preset 'nope'", None),
    (["attack", "--defense", "dp", "--ratio", "0.3"], "does not apply", None),
    (["showcase", "nope"], "invalid choice", None),
    # list-valued options: every name checked before the first run
    (["fl", "--defenses", "none,nonsense"], "unknown defense 'nonsense' in --defenses", None),
    (["fl", "--rounds", "0"], "rounds must be in [1, 10000]", None),
    (["fl", "--clients", "-1"], "clients must be in [1, 400]", None),
    (["utility", "--defenses", "none,bogus"], "unknown defense 'bogus' in --defenses", None),
    (["utility", "--batch", "-1"], "--batch: expected an integer >= 1", None),
    (["sweep", "--defenses", "none,nonsense"], "no strength axis for nonsense", None),
    (["sweep", "--seeds", "a,b"], "--seeds must be comma-separated integers", None),
    (["sweep", "--adaptive", "idlg_guess"], "unknown attack 'idlg_guess'", None),
    (["sweep", "--images", "-1"], "images must be in [1, 20]", None),
    (["sweep", "--images", "0"], "images must be in [1, 20]", None),
    (["reproduce", "--images", "21"], "images must be in [1, 20]", None),
    (["reproduce", "--lenet-attacks", "dlg,nope"], "unknown attack 'nope'", None),
    (["reproduce", "--ig-attacks", "ig,nope"], "unknown attack 'nope'", None),
    (["fl", "--defenses", " , "], "--defenses needs at least one name", None),
    (["attack", "--image-id", "cifar10-00", "--image-id", "nope"], "unknown image id 'nope'", None),
    (["reproduce", "--ig-images", "-1"], "--ig-images: expected an integer >= 1", None),
    (["reproduce", "--ig-preset", "fast"], "has no preset 'fast'", None),
    (["reproduce", "--device", "tpu"], "device must be auto, cpu or cuda", None),
    # output paths: unwritable, the current directory, a file, someone else's directory
    (["attack", "--out", "/proc/tipcore-out/run"], "cannot be written", None),
    (["update", "--out", "/proc/tipcore-out"], "cannot be written", None),
    (["sweep", "--out", "/proc/tipcore-sweep"], "cannot be written", None),
    (["attack", "--out", "."], "is the current directory", None),
    (["attack", "--out", "/sys/tipcore-out"], "cannot be written", None),
    (["sweep", "--out", "."], "is the current directory", None),
    (["attack"], "exists and is not a directory", _a_file),
    (["attack"], "not an earlier `attack` result (notes.txt)", _keep_notes),
    (["fl"], "not an earlier `fl` result (notes.txt)", _keep_notes),
    (["sweep"], "holds files but no job.json", _keep_notes),
    # a recorded update that is not one
    (["attack", "--update-dir", "{files}/nope"], "is not a directory", None),
    (["attack", "--update-dir", "{files}/update-empty"], "lacks global_weights.pt, update_defended.pt, defense.json", None),
    (["attack", "--update-dir", "{files}/update-empty", "--image-id", "cifar10-00"], "drop --image-id", None),
    # ... or whose defense.json has values of the wrong type or out of range (the flags' typed parser reads it)
    (["attack", "--update-dir", "{files}/updates/record-list"], "not an object", None),
    (["attack", "--update-dir", "{files}/updates/examples-list"], "defense.json.num_examples must be an integer, got a list", None),
    (["attack", "--update-dir", "{files}/updates/examples-text"], "defense.json.num_examples must be an integer, got '1'", None),
    (["attack", "--update-dir", "{files}/updates/classes-0"], "declares 0 classes", None),
    (["attack", "--update-dir", "{files}/updates/classes-list"], "defense.json.num_classes must be an integer", None),
    (["attack", "--update-dir", "{files}/updates/lr-text"], "defense.json.lr must be a finite number", None),
    (["attack", "--update-dir", "{files}/updates/lr-absurd"], "lr must be > 0 and <= 100", None),
    (["attack", "--update-dir", "{files}/updates/lr-infinity"], "holds Infinity", None),
    (["attack", "--update-dir", "{files}/updates/clip-text"], "defense.json.clip must be a finite number", None),
    (["attack", "--update-dir", "{files}/updates/model-list"], "defense.json.model must be text", None),
    (["attack", "--update-dir", "{files}/updates/deeply-nested"], "nests deeper than", None),
    # a result.json to rerun that was edited or damaged: the same typed parser, the path of the bad value named
    (["rerun", "{files}/results/spec-int"], "spec must be an object", None),
    (["rerun", "{files}/results/spec-list"], "spec must be an object", None),
    (["rerun", "{files}/results/round-string"], "spec.round must be an object", None),
    (["rerun", "{files}/results/lr-string"], "spec.round.lr must be a finite number, got 'abc'", None),
    (["rerun", "{files}/results/lr-absurd"], "lr must be > 0 and <= 100", None),
    (["rerun", "{files}/results/clip-infinity"], "holds Infinity", None),
    (["rerun", "{files}/results/clip-overflow"], "holds a number that is not finite (inf)", None),
    (["rerun", "{files}/results/report-every-string"], "spec.report_every must be an integer, got '10'", None),
    (["rerun", "{files}/results/image-ids-int"], "spec.image_ids must be a list of text, got 5", None),
    (["rerun", "{files}/results/image-ids-text"], "spec.image_ids must be a list of text", None),
    (["rerun", "{files}/results/labels-known-text"], "spec.labels_known must be true or false", None),
    (["rerun", "{files}/results/device-int"], "spec.device must be text", None),
    (["rerun", "{files}/results/model-list"], "spec.model must be text", None),
    (["rerun", "{files}/results/attack-cfg-text"], "attack_cfg.iterations must be an integer, got '1'", None),
    (["rerun", "{files}/results/num-classes-0"], "num_classes must be in [2, 1000]", None),
    (["rerun", "{files}/results/num-classes-huge"], "num_classes must be in [2, 1000]", None),
    (["rerun", "{files}/results/deeply-nested"], "nests deeper than", None),
    (["rerun", "{files}/results/schema-text"], "schema version '1'", None),
    (["rerun", "{files}/results/huge"], "too large", None),
    (["rerun", "{files}/results/fifo"], "is not a regular file but a FIFO", None),
    (["rerun", "{files}/results/upload-npy-fifo"], "is not a regular file but a FIFO", None),
    (["rerun", "{files}/results/upload-classes"], "num_classes must be in [2, 1000]", None),
    (["rerun", "{files}/results/upload-digest-int"], "spec.upload_sha256 must be text", None),
    # only regular files are read, and only so much of them
    (["attack", "--image", "/dev/zero"], "is not a regular file but a character device", None),
    (["attack", "--image", "{files}/fifo.png"], "is not a regular file but a FIFO", None),
    # absurd values refused before compute (`update` shows its progress: a round that ran is a second line)
    (["attack", "--mode", "fedavg", "--lr", "1e300"], "lr must be > 0 and <= 100", None),
    (["update", "--mode", "fedavg", "--lr", "1e300"], "lr must be > 0 and <= 100", None),
    (["update", "--defense", "tip", "--layers", "nosuchlayer"], "'nosuchlayer' is not a conv layer of LeNet", None),
    (["sweep", "--seeds", "0,0"], "--seeds must not repeat a seed", None),
]


def test_bad_input_matrix_gives_one_line_errors_and_writes_nothing(tmp_path, capsys, monkeypatch, bad_files):
    """Every case in one process through ``cli.main``: exit code 2, one line ``error: ...`` naming the
    problem, no traceback, and the output directory (and everything around it) exactly as before."""
    assert len(BAD_INPUTS) >= 40
    monkeypatch.chdir(tmp_path)
    failures = []
    with special_files_guard(bad_files):
        _run_bad_inputs(tmp_path, capsys, bad_files, failures)
    assert not failures, "\n".join(failures)


def _run_bad_inputs(tmp_path: Path, capsys, bad_files: Path, failures: list[str]) -> None:
    for number, (argv, fragment, setup) in enumerate(BAD_INPUTS):
        work = tmp_path / f"case{number}"
        work.mkdir()
        out = work / "out"
        if setup:
            setup(out)
        argv = [a.replace("{files}", str(bad_files)) for a in argv]
        if argv[0] == "attack":
            argv = ["attack", "--iters", "1", "--quiet", *argv[1:]]
        if argv[0] != "showcase" and "--out" not in argv:
            argv += ["--out", str(out)]
        before = tree(tmp_path)
        try:
            code, _, err = run_main(argv, capsys)
        except Exception as exc:  # noqa: BLE001 - a traceback is this case's failure, the others still run
            failures.append(f"{' '.join(argv)}: raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            capsys.readouterr()
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        problems = []
        if code != 2:
            problems.append(f"exit code {code}")
        if len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in err:
            problems.append(f"stderr {err!r}")
        elif fragment not in lines[0]:
            problems.append(f"{fragment!r} not in {lines[0]!r}")
        if tree(tmp_path) != before:
            problems.append("files changed: " + ", ".join(sorted(set(tree(tmp_path)) ^ set(before))))
        if problems:
            failures.append(f"{' '.join(argv)}: {'; '.join(problems)}")


def test_a_huge_image_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "img.png"
    Image.new("L", (20000, 20000)).save(path)
    code, _, err = run_main(["attack", "--image", str(path), "--iters", "1", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_other_image_modes_are_converted(tmp_path, mode):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    Image.new(mode, (48, 48)).save(path)
    assert main(["attack", "--image", str(path), "--iters", "2", "--out", str(tmp_path / "out"), "--quiet"]) == 0


def test_an_earlier_result_is_replaced_and_other_files_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "a" / "run"
    assert main(["attack", "--iters", "1", "--out", str(out), "--quiet"]) == 0
    first = (out / "result.json").read_bytes()
    assert main(["attack", "--iters", "1", "--seed", "1", "--out", str(out), "--quiet"]) == 0  # same kind: replaced
    assert (out / "result.json").read_bytes() != first
    (out / "stale.txt").write_text("old")
    assert main(["attack", "--iters", "1", "--out", str(out), "--quiet"]) == 2
    assert "not an earlier `attack` result (stale.txt)" in capsys.readouterr().err
    assert main(["attack", "--iters", "1", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "result.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["run"]  # no temporary or old directory left


@pytest.mark.parametrize("command, target, error, code", [
    (["attack"], "tipcore.pipeline.experiment.run", KeyboardInterrupt, 130),
    (["attack"], "tipcore.pipeline.experiment.run", ValueError("diverged (simulated)"), 2),
    (["update"], "tipcore.pipeline.experiment.prepare", OSError(28, "No space left on device"), 2),
])
def test_a_failure_during_compute_leaves_no_directory_behind(tmp_path, capsys, monkeypatch, command, target, error, code):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, fail)
    out = tmp_path / "new" / "run"
    assert main([*command, "--out", str(out)]) == code
    assert capsys.readouterr().err.startswith("error: ")
    assert list(tmp_path.iterdir()) == []  # neither the staged directory nor the parent made for it


def test_results_get_the_umask_permissions_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["attack", "--iters", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_help_explains_every_subcommand(capsys):
    for sub in ("attack", "update", "train", "fl", "utility", "showcase", "sweep", "reproduce"):
        code, out, _ = run_main([sub, "--help"], capsys)
        assert code == 0 and "usage:" in out and f"python -m tipcore {sub}" in out


def test_top_level_help_lists_the_commands_without_importing_the_engine():
    """`python -m tipcore --help` builds no command's flags, so torch and friends stay unloaded."""
    probe = ("import runpy, sys\nsys.argv = ['tipcore', '--help']\ntry:\n"
             "    runpy.run_module('tipcore', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "heavy = ('torch', 'torchvision', 'pytorch_grad_cam', 'cv2', 'sklearn', 'numpy', 'PIL')\n"
             "print('LOADED', code, [m for m in heavy if m in sys.modules])\n")
    env = dict(os.environ, TIPCORE_FULL_EXIT="1")  # runpy's SystemExit, not the CLI's fast exit
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert "LOADED 0 []" in proc.stdout, proc.stdout + proc.stderr
    for sub in ("attack", "update", "train", "fl", "utility", "showcase", "sweep", "reproduce"):
        assert sub in proc.stdout


HELP_PROBE = """
import os, runpy, sys
from tipcore import cli

def heavy():
    names = ('torch', 'torchvision', 'pytorch_grad_cam', 'torchmetrics', 'sklearn', 'cv2')
    return [m for m in names if m in sys.modules]

sys.argv = ['tipcore', 'attack', '--help']  # python -m tipcore attack --help, literally
try:
    runpy.run_module('tipcore', run_name='__main__')
except SystemExit as e:
    print('ATTACK', e.code, heavy(), os.environ.get('OMP_WAIT_POLICY'))
for argv in ([*sys.argv[1:], '--preset', 'paper'], *([c, '--help'] for c in cli.COMMANDS)):
    assert cli.main(['attack', '--preset', 'paper', '--help'] if argv[0] == 'attack' else argv) == 0, argv
print('EVERY', heavy())
"""


def test_every_help_loads_neither_torch_nor_grad_cam():
    """`python -m tipcore attack --help` and every other command's help are built from torch-free
    declarations (the registries, knobs, presets, the models' and the round's specs)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["TIPCORE_FULL_EXIT"] = "1"  # runpy's SystemExit, not the CLI's fast exit
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert "ATTACK 0 [] ACTIVE" in proc.stdout, proc.stdout + proc.stderr
    assert "EVERY []" in proc.stdout, proc.stdout + proc.stderr
    assert "--defense {none," in proc.stdout and "--model {lenet,convnet,resnet18}" in proc.stdout


POLICY_PROBE = """
import importlib.abc, os, sys

class WhenTorchLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' and 'torch' not in sys.modules:
            print('POLICY WHEN TORCH LOADS', os.environ.get('OMP_WAIT_POLICY'), flush=True)
        return None

sys.meta_path.insert(0, WhenTorchLoads())
import atexit
from tipcore.cli import console_main  # what the console script runs: main(), then the CLI's exit
atexit.register(lambda: print('LOADED', [m for m in ('torchvision', 'pytorch_grad_cam', 'torchmetrics', 'sklearn')
                                         if m in sys.modules], flush=True))
sys.argv = ['tipcore', *sys.argv[1:]]
console_main()
"""


def test_the_console_script_sets_the_openmp_policy_before_torch_loads_and_a_tip_run_skips_the_libraries(tmp_path):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the policy must be in the environment by then.
    And a CLI attack through TIP computes Grad-CAM's α and SSIM itself: neither pytorch-grad-cam, nor
    torchmetrics, nor the torchvision both pull in is imported (seconds of start-up on 2 cores)."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'tipcore = "tipcore.cli:console_main"' in pyproject
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", POLICY_PROBE, "attack", "--defense", "tip", "--iters", "1", "--quiet",
                           "--out", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert "POLICY WHEN TORCH LOADS ACTIVE" in proc.stdout, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout and proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["defense"] == "tip"


@pytest.mark.slow
def test_fl_command_runs_small(tmp_path):
    assert main(["fl", "--defenses", "none,tip", "--rounds", "1", "--clients", "4", "--out", str(tmp_path / "fl")]) == 0
    rows = (tmp_path / "fl" / "fl.csv").read_text().splitlines()
    assert rows[0] == "round,none,tip" and len(rows) == 2


# ------------------------------------------------- budgeted defenses, adaptive attacks, sweep and reproduce

def test_budgeted_defense_takes_the_round_clip_and_the_adaptive_attack_reports_detection(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", "--defense", "tip", "--attack", "idlg_drop", "--iters", "2", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["spec"]["round"]["clip"] == 5.0  # the default C for a calibrated defense
    assert result["update"]["detection"]["precision"] == 1.0 and result["update"]["noise_to_signal"] > 10
    printed = capsys.readouterr().out
    assert "idlg_drop flagged 3 conv channels as noised" in printed and "precision 1.00, recall 1.00" in printed


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


def test_truth_without_an_update_dir_and_a_truth_that_is_no_audit_are_one_line(tmp_path, capsys):
    assert main(["attack", "--truth", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "--truth scores an attack on a recorded update: give --update-dir too" in capsys.readouterr().err
    rec = tmp_path / "update"
    assert main(["update", "--model", "lenet", "--out", str(rec)]) == 0
    capsys.readouterr()
    assert main(["attack", "--update-dir", str(rec), "--truth", str(rec), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lacks private_batch.pt" in err and not (tmp_path / "b").exists()


def test_a_command_started_as_a_process_spins_openmp_and_in_process_calls_leave_the_environment(monkeypatch, capsys):
    # Batch commands own their machine (ACTIVE); a call from a library or a test changes no environment.
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["attack", "--image-id", "no-such-image"]) == 2
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(sys, "argv", ["tipcore", "attack", "--image-id", "no-such-image"])
    assert cli.main() == 2
    assert os.environ["OMP_WAIT_POLICY"] == cli.BATCH_OPENMP_POLICY == "ACTIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the user's choice wins
    assert cli.main() == 2 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_a_bad_reproduce_shard_is_one_line(text, capsys):
    assert main(["reproduce", "--shard", text, "--out", "runs/never"]) == 2
    assert "shard" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ signals

def _command(argv: list[str], *python_flags: str) -> subprocess.Popen:
    """``python -m tipcore ...`` as a process of its own (signals are a process's business), stderr piped."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, *python_flags, "-m", "tipcore", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_at_default)


def _sigint_at_default() -> None:
    """In the child before exec: Ctrl-C at its default, as in a terminal's foreground command. A suite started
    in the background by a script (``cmd &`` without job control) has SIGINT ignored, which every process it
    starts inherits across exec, and Python then leaves it ignored: the interrupt tests would see no interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum, code, line", [(signal.SIGTERM, 143, "error: terminated"),
                                                (signal.SIGINT, 130, "error: interrupted")])
def test_a_signal_mid_attack_ends_the_run_cleanly(tmp_path, signum, code, line):
    """SIGTERM (a service manager, `kill`) or Ctrl-C while the attack runs: one line, the conventional exit
    code, and nothing beside --out (no hidden .run.tmp-* directory). The signal is sent once the attack's
    first step is reported, so it lands in the optimisation, whatever the machine's speed."""
    out = tmp_path / "runs" / "run"
    proc = _command(["attack", "--iters", "5000", "--report-every", "1", "--out", str(out)])
    try:
        seen = []
        for text in proc.stderr:  # progress lines (stderr is not a terminal): "attack 1/5000 step ..."
            seen.append(text)
            if text.startswith("attack "):
                break
        assert seen and seen[-1].startswith("attack "), "".join(seen)
        proc.send_signal(signum)
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == code, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [t for t in rest.splitlines() if t.strip() and not t.startswith("attack ")]
    assert lines == [line], rest
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_ctrl_c_while_the_cli_starts_up_is_one_line(tmp_path):
    """Ctrl-C while the engine is still being imported (the command's flags name its registries) is the same
    one line as later. ``-X importtime`` reports each import as it completes: the interrupt is sent once
    torch's first module has loaded, inside the import that takes most of the start-up."""
    proc = _command(["attack", "--iters", "5000", "--out", str(tmp_path / "run")], "-X", "importtime")
    try:
        seen = []
        for text in proc.stderr:
            seen.append(text)
            if text.startswith("import time:") and "torch" in text:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == 130, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [t for t in rest.splitlines() if t.strip() and not t.startswith("import time:")]
    assert lines == ["error: interrupted"], rest
    assert list(tmp_path.iterdir()) == []


EXIT_PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print('ATEXIT RAN', flush=True))
sys.argv = ['tipcore', *sys.argv[1:]]
try:
    runpy.run_module('tipcore', run_name='__main__')
except SystemExit as e:
    print('SYSTEMEXIT', e.code)
"""


@pytest.mark.parametrize("full_exit", ["", "1"])
def test_the_cli_exits_with_its_code_after_the_exit_handlers(tmp_path: Path, full_exit: str) -> None:
    """`python -m tipcore` answers, runs the exit handlers and leaves without the interpreter's teardown (no
    SystemExit reaches the caller), with the command's exit code; TIPCORE_FULL_EXIT=1 is the plain sys.exit."""
    env = dict(os.environ, TIPCORE_FULL_EXIT=full_exit)
    for argv, code in ((["attack", "--iters", "1", "--quiet", "--out", str(tmp_path / f"r{full_exit}")], 0),
                       (["attack", "--no-such-flag"], 2)):
        proc = subprocess.run([sys.executable, "-c", EXIT_PROBE, *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env=env)
        assert "ATEXIT RAN" in proc.stdout, proc.stdout + proc.stderr
        if full_exit:  # the probe caught SystemExit with the code, and exited normally after it
            assert f"SYSTEMEXIT {code}" in proc.stdout and proc.returncode == 0, proc.stdout
        else:  # nothing reached the probe's except: the process left with the code
            assert "SYSTEMEXIT" not in proc.stdout and proc.returncode == code, proc.stdout + proc.stderr
    assert (tmp_path / f"r{full_exit}" / "result.json").is_file()
