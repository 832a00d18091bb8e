"""Output directories (tipcore.pipeline.outputs): checked before compute, written whole, nothing left on an error."""

from __future__ import annotations

import os
import stat

import pytest

from tipcore.pipeline.outputs import OutputError, StagedOutput, job_directory
from tipcore.studies.resumable import claim_directory


def test_an_error_during_compute_leaves_nothing_behind_not_even_new_parents(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError, match="attack failed"):
        with StagedOutput(out, "attack") as staged:
            assert staged.tmp is not None and staged.tmp.parent == out.parent  # reserved up front
            raise RuntimeError("attack failed")
    assert list(tmp_path.iterdir()) == []


def test_commit_replaces_an_earlier_result_and_keeps_umask_permissions(tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        StagedOutput(out, "fl").commit({"fl.csv": b"old"})
        StagedOutput(out, "fl").commit({"fl.json": b"{}"})
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["fl.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("prepare, message", [
    (lambda out: out.write_text("x"), "exists and is not a directory"),
    (lambda out: (out.mkdir(), (out / "mine.txt").write_text("x")), r"not an earlier `utility` result \(mine.txt\)"),
    (lambda out: (out.mkdir(), (out / "utility.json").mkdir()), "not an earlier `utility` result"),
])
def test_refusals_touch_nothing(tmp_path, prepare, message):
    out = tmp_path / "out"
    prepare(out)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputError, match=message):
        StagedOutput(out, "utility")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_overwrite_replaces_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    StagedOutput(out, "utility", overwrite=True).commit({"utility.json": b"[]"})
    assert [p.name for p in out.iterdir()] == ["utility.json"]


def test_the_current_directory_and_its_parents_are_refused(tmp_path, monkeypatch):
    inner = tmp_path / "here"
    inner.mkdir()
    monkeypatch.chdir(inner)
    for target in (".", "..", str(inner), "./"):
        with pytest.raises(OutputError, match="is the current directory or holds it"):
            StagedOutput(target, "attack", overwrite=True)
        with pytest.raises(OutputError, match="is the current directory or holds it"):
            job_directory(target)
    assert StagedOutput("run", "attack").commit({"result.json": b"{}"}) == inner / "run"


def test_a_job_directory_holding_other_files_is_not_claimed(tmp_path):
    out = job_directory(tmp_path / "job")
    claim_directory(out, {"a": 1})  # a fresh directory: claimed
    claim_directory(out, {"a": 1})  # the same job: resumed
    with pytest.raises(ValueError, match="other settings"):
        claim_directory(out, {"a": 2})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no job.json"):
        claim_directory(other, {"a": 1})
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
