"""RunSpec: one typed description of a run; result.json holds it whole, and `tipcore rerun` repeats the run
bit for bit from it, for a gallery image and for an upload (whose pixels are stored next to the result)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tipcore.federation import data
from tipcore.cli import main
from tipcore.pipeline.runspec import SCHEMA_VERSION, RunSpec, pixel_digest, spec_from_result, validate_pixels


@pytest.mark.parametrize("pixels, message", [
    (np.full((32, 32, 3), 200.0), "divide by 255"),
    (np.zeros((64, 64, 3)), "shape"),
    (np.zeros((32, 32)), "shape"),
    (np.full((32, 32, 3), np.nan), "NaN"),
    ([["a"]], "numeric"),
])
def test_pixels_are_validated_once_with_a_clear_error(pixels, message) -> None:
    with pytest.raises(ValueError, match=message):
        validate_pixels(pixels)


def test_an_upload_is_named_by_its_pixels() -> None:
    image = data.sample_image("cifar10-01")
    spec = RunSpec(labels=(1,)).for_upload(image)
    assert spec.image_ids == () and spec.upload_sha256 == pixel_digest(image[None])
    assert pixel_digest(np.clip(image + 1e-3, 0, 1)) != spec.upload_sha256
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="labels are required"):
        RunSpec(image_ids=(), upload_sha256=spec.upload_sha256)
    with pytest.raises(ValueError, match="no gallery ids"):
        RunSpec(upload_sha256=spec.upload_sha256, labels=(1,))


def run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def test_rerun_repeats_a_gallery_run_bit_for_bit(tmp_path: Path) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    code, _ = run_cli(["attack", "--image-id", "cifar10-02", "--defense", "tip", "--ratio", "0.3", "--iters", "3",
                       "--seed", "5", "--device", "cpu", "--quiet", "--out", str(first)])
    assert code == 0
    result = json.loads((first / "result.json").read_text())
    assert result["schema_version"] == SCHEMA_VERSION
    assert result["spec"]["image_ids"] == ["cifar10-02"] and result["spec"]["upload_sha256"] is None
    assert result["resolved"]["defense"]["ratio"] == 0.3 and result["resolved"]["defense"]["cutoff"] == 0.5
    assert not (first / "images.npy").exists()
    code, text = run_cli(["rerun", str(first / "result.json"), "--quiet", "--out", str(again)])
    assert code == 0 and "identical" in text, text
    for name in ("reconstruction.png", "original.png", "defense.json", "progress.png"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    redone = json.loads((again / "result.json").read_text())
    assert redone["spec"] == result["spec"] and redone["per_image_psnr"] == result["per_image_psnr"]


def test_rerun_repeats_an_upload_bit_for_bit_and_refuses_other_pixels(tmp_path: Path) -> None:
    picture = tmp_path / "mine.png"
    Image.fromarray((data.sample_image("cifar10-04") * 255).astype(np.uint8)).save(picture)
    first, again = tmp_path / "first", tmp_path / "again"
    code, _ = run_cli(["attack", "--image", str(picture), "--label", "4", "--iters", "3", "--device", "cpu",
                       "--quiet", "--out", str(first)])
    assert code == 0
    spec = spec_from_result(json.loads((first / "result.json").read_text()))
    stored = np.load(first / "images.npy")
    assert spec.image_ids == () and spec.upload_sha256 == pixel_digest(stored) and spec.labels == (4,)
    code, text = run_cli(["rerun", str(first), "--quiet", "--out", str(again)])
    assert code == 0 and "identical" in text, text
    assert (again / "reconstruction.png").read_bytes() == (first / "reconstruction.png").read_bytes()
    assert np.array_equal(np.load(again / "images.npy"), stored)
    # Other pixels under the same name are refused, before any compute and without output.
    np.save(first / "images.npy", np.clip(stored + 0.01, 0, 1).astype(np.float32))
    assert main(["rerun", str(first), "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_rerun_refuses_a_result_without_a_runspec(tmp_path: Path, capsys) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "result.json").write_text(json.dumps({"psnr": 10.0, "config": {}}))
    assert main(["rerun", str(old), "--out", str(tmp_path / "x")]) == 2
    assert "holds no RunSpec" in capsys.readouterr().err
    (old / "result.json").write_text(json.dumps({"schema_version": 99, "spec": {}}))
    assert main(["rerun", str(old), "--out", str(tmp_path / "x")]) == 2
    assert "schema version 99" in capsys.readouterr().err


def test_the_cli_computes_with_the_fixed_thread_count_not_the_machines(tmp_path: Path, monkeypatch, capsys) -> None:
    """The thread count decides the bytes (tipcore.common.runtime): the CLI's is TIP_THREADS, else the fixed
    default, whatever the machine's core count or the process's current setting; a bad value is one line."""
    import os

    import torch

    from tipcore.common import runtime

    monkeypatch.delenv("TIP_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # a bigger machine than the default
    torch.set_num_threads(1)  # conftest's _pin_threads restores the tests' count
    out = tmp_path / "default"
    code, _ = run_cli(["attack", "--iters", "1", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0 and json.loads((out / "result.json").read_text())["threads"] == str(runtime.DEFAULT_THREADS)
    for bad, message in (("two", "TIP_THREADS expects an integer, got 'two'"), ("0", "TIP_THREADS must be in [1, 256]")):
        monkeypatch.setenv("TIP_THREADS", bad)
        assert main(["attack", "--iters", "1", "--quiet", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()


def test_rerun_computes_with_the_recorded_thread_count(tmp_path: Path, monkeypatch, capsys) -> None:
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    monkeypatch.setenv("TIP_THREADS", "3")
    code, _ = run_cli(["attack", "--defense", "tip", "--iters", "3", "--device", "cpu", "--quiet", "--out", str(first)])
    assert code == 0 and json.loads((first / "result.json").read_text())["threads"] == "3"
    monkeypatch.setenv("TIP_THREADS", "1")  # a rerun repeats the recorded count, not this one
    code, text = run_cli(["rerun", str(first), "--quiet", "--out", str(again)])
    assert code == 0 and "identical" in text, text
    assert json.loads((again / "result.json").read_text())["threads"] == "3"
    for name in ("reconstruction.png", "original.png", "defense.json", "progress.png"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    code, _ = run_cli(["rerun", str(first), "--threads", "2", "--quiet", "--out", str(other)])
    assert code == 0 and json.loads((other / "result.json").read_text())["threads"] == "2"
    assert main(["rerun", str(first), "--threads", "0", "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "N must be in [1, 256]" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # A tampered count is refused in one line, before any compute.
    result = json.loads((first / "result.json").read_text())
    result["threads"] = "many"
    (first / "result.json").write_text(json.dumps(result))
    assert main(["rerun", str(first), "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "threads expects an integer, got 'many'" in capsys.readouterr().err
