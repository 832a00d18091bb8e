"""tipcore.common.progress: one event type, one stop token and one driver for every long loop.

Each loop (client round and defense, attack, training, FL simulation) is stopped by the token and reports
monotone progress; the CLI's bar renders on a (fake) terminal and prints plain lines elsewhere; the app's
job maps the same events onto its progress widget.
"""

from __future__ import annotations

import io
import math
import types

import pytest
import torch

from tipcore import cli, defenses
from tipcore.pipeline import experiment
from tipcore.studies import flsim
from tipcore.federation import models, training
from tipcore.pipeline.runspec import RunSpec
from tipcore.federation.fl import RoundConfig, client_update
from tipcore.common.progress import Event, StopToken, Stopped, TerminalProgress, drive, never_stop, within
from tipcore.common.seeding import generator


def small_config(**changes) -> RunSpec:
    base = dict(seed=0, model="lenet", image_ids=("cifar10-00",), round=RoundConfig(clip=5.0), defense="tip",
                defense_cfg={"ratio": 0.3, "noise": "direct", "beta": 0.01}, attack="idlg",
                attack_cfg={"iterations": 6}, report_every=1, device="cpu")
    base.update(changes)
    return RunSpec(**base)


def assert_monotone(events: list[Event]) -> None:
    """Within each stage, done never goes back and never passes total."""
    last: dict[str, int] = {}
    for e in events:
        assert e.done >= last.get(e.stage, 0), (e.stage, last.get(e.stage), e.done)
        assert e.total is None or e.done <= e.total, e
        last[e.stage] = e.done


def stop_after(events: list, predicate) -> StopToken:
    """A token that stops once an event matching ``predicate`` has been seen."""
    return StopToken(lambda: any(predicate(e) for e in events))


# ------------------------------------------------------------------------------------------ the parts

def test_stop_token_is_set_once_and_never_stop_cannot_be():
    token = StopToken()
    assert not token() and not token.stopped
    token.stop()
    assert token() and token.stopped
    flag = {"now": False}
    checked = StopToken(lambda: flag["now"])
    assert not checked()
    flag["now"] = True
    assert checked()
    flag["now"] = False
    assert checked()  # once stopped, stays stopped
    assert not never_stop()
    with pytest.raises(TypeError, match="shared"):
        never_stop.stop()
    assert not never_stop()


def test_event_fraction_line_and_validation():
    e = Event("attack", 40, 300, "step", "loss 0.12", 12.0, 78.0)
    assert e.fraction == pytest.approx(40 / 300)
    assert e.line() == "attack 40/300 step  loss 0.12  12.0s  eta 78.0s"
    assert Event("attack", 300, 300, "step", "", 150.0, 0.0).line() == "attack 300/300 step  2.5 min"
    assert Event("sweep", 3, None).fraction is None and "eta" not in Event("sweep", 3, None).line()
    with pytest.raises(ValueError, match="non-negative"):
        Event("x", -1, 3)


def test_drive_returns_the_result_and_within_prefixes_the_stage():
    def inner():
        yield Event("attack", 1, 2)
        yield Event("attack", 2, 2)
        return "result"

    seen: list[Event] = []
    assert drive(within(inner(), "punchline 1/4"), seen.append) == "result"
    assert [e.stage for e in seen] == ["punchline 1/4 · attack"] * 2 and [e.done for e in seen] == [1, 2]


# ------------------------------------------------------------------------------------------ the loops

def test_prepare_reports_its_stages_and_gives_what_protect_gives():
    cfg = small_config()
    seen: list[Event] = []
    prepared = experiment.prepare(cfg, on_event=seen.append)
    assert [(e.stage, e.done, e.total) for e in seen] == [
        ("client round", 0, 1), ("client round", 1, 1), ("Grad-CAM", 0, 1), ("Grad-CAM", 1, 1),
        ("defense", 0, 1), ("defense", 1, 1)]
    assert [e.minor for e in seen] == [True, False] * 3  # a log keeps one line per stage, at its end
    assert_monotone(seen)
    # Splitting TIP's Grad-CAM pass from its noise changes no number: the same as protect() in one go.
    model = models.build("lenet", num_classes=prepared.num_classes, seed=cfg.seed).eval()
    x = torch.from_numpy(prepared.images).permute(0, 3, 1, 2).contiguous()
    clean, ctx = client_update(model, x, torch.tensor(prepared.labels), cfg.round, generator=generator(cfg.seed, "defense"))
    defended, _ = defenses.create(cfg.defense, cfg.defense_options()).protect(clean, ctx)
    for name, tensor in defended.tensors.items():
        assert torch.equal(tensor, prepared.defended.tensors[name]), name


def test_prepare_without_grad_cam_has_two_stages():
    seen: list[Event] = []
    experiment.prepare(small_config(defense="none", defense_cfg={}), on_event=seen.append)
    assert [e.stage for e in seen] == ["client round"] * 2 + ["defense"] * 2


@pytest.mark.parametrize("after, stages", [
    ("client round", ["client round", "client round"]),
    ("Grad-CAM", ["client round", "client round", "Grad-CAM", "Grad-CAM"]),
])
def test_prepare_stops_between_its_stages(after, stages):
    seen: list[Event] = []
    token = stop_after(seen, lambda e: e.stage == after and e.done == 1)
    with pytest.raises(Stopped, match="stopped before"):
        drive(experiment.stream(small_config(), should_stop=token), seen.append)
    assert [e.stage for e in seen] == stages


def test_attack_in_the_stream_stops_on_the_token_and_keeps_what_it_reached():
    seen: list[Event] = []
    token = stop_after(seen, lambda e: e.stage == "attack" and e.done >= 3)
    record = drive(experiment.stream(small_config(), should_stop=token), seen.append)
    attack_events = [e for e in seen if e.stage == "attack"]
    assert record.result.stopped and record.result.iterations == 3
    assert [e.done for e in attack_events] == [1, 2, 3] and all(e.total == 6 for e in attack_events)
    assert [e.payload for e in attack_events] == list(record.result.history)
    assert_monotone(seen)


def test_run_on_snapshot_sees_only_the_snapshots():
    snaps, events = [], []
    record = experiment.run(small_config(attack_cfg={"iterations": 2}), on_event=events.append, on_snapshot=snaps.append)
    assert snaps == list(record.result.history) and len(events) == 6 + len(snaps)


def test_training_stops_on_the_token_and_returns_what_was_trained():
    seen: list[Event] = []
    token = stop_after(seen, lambda e: e.done >= 3)
    trained = drive(training.train("lenet", 1, seed=0, should_stop=token), seen.append)
    assert trained.stopped and trained.steps == 3 and trained.epochs_completed == 0 and trained.history == ()
    assert [e.done for e in seen] == [1, 2, 3] and all(e.minor and e.unit == "step" for e in seen)
    assert seen[0].total == math.ceil(4000 / 64)
    assert_monotone(seen)
    untouched = models.build("lenet", seed=0)
    assert not trained.model.training
    assert any(not torch.equal(a, b) for a, b in zip(trained.model.state_dict().values(),
                                                     untouched.state_dict().values()))  # three Adam steps taken


def test_fl_simulation_stops_within_a_round_and_reports_monotone_progress():
    cfg = flsim.FLConfig(model="lenet", clients=10, rounds=2, seed=0)
    seen: list[Event] = []
    token = stop_after(seen, lambda e: e.done >= 3)
    result = drive(flsim.simulate(cfg, should_stop=token), seen.append)
    assert result.stopped and result.rounds == ()  # the half-done first round is not applied
    assert [e.done for e in seen] == [1, 2, 3] and all(e.total == 20 and e.minor for e in seen)


def test_fl_simulation_round_events_carry_the_round():
    cfg = flsim.FLConfig(model="lenet", clients=4, rounds=1, seed=0)
    seen: list[Event] = []
    result = drive(flsim.simulate(cfg), seen.append)
    assert not result.stopped and len(result.rounds) == 1
    assert [e.done for e in seen] == [1, 2, 3, 4, 4] and [e.minor for e in seen] == [True] * 4 + [False]
    assert seen[-1].payload == result.rounds[0]
    assert_monotone(seen)


def test_showcase_punchline_stopped_writes_nothing(monkeypatch, tmp_path):
    from tipcore.explorer import showcase

    monkeypatch.setattr(showcase, "SHOWCASE_DIR", tmp_path / "showcase")
    seen: list[Event] = []
    token = stop_after(seen, lambda e: e.stage == "punchline")  # once the first entry is done
    adaptive = ("idlg_drop", "idlg_lowpass")  # the best-adaptive entry runs each: 3 naive entries + 2 runs
    with pytest.raises(Stopped, match="before the client round"):
        drive(showcase.punchline(5, adaptive=adaptive, should_stop=token), seen.append)
    assert seen[0].stage == "punchline 1/5 · client round" and seen[-1].stage == "punchline"
    assert (seen[-1].done, seen[-1].total) == (1, 5) and "psnr" in seen[-1].message
    assert not (tmp_path / "showcase").exists()  # three entries missing: nothing written


# ------------------------------------------------------------------------------------------ display

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_redraws_one_line_and_ends_it():
    out = FakeTerminal()
    with TerminalProgress(out, min_redraw_s=0.0, width=200) as show:
        assert show.tty
        show(Event("attack", 0, 4, "step"))
        show(Event("attack", 2, 4, "step", "loss 0.5", 1.0, 1.0))
        show(Event("attack", 4, 4, "step", "loss 0.1", 2.0, 0.0))
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    frames = [f.replace("\x1b[K", "").rstrip("\n") for f in text.split("\r")[1:]]
    assert frames[1].startswith("attack [" + "#" * 12 + "." * 12 + "] 2/4 step  loss 0.5")
    assert frames[2].startswith("attack [" + "#" * 24 + "] 4/4 step")


def test_terminal_bar_fits_the_width_and_plain_lines_skip_minor_events():
    out = FakeTerminal()
    bar = TerminalProgress(out, width=40)
    assert len(bar.render(Event("a long stage name", 1, 3, "client update", "x" * 80))) < 40
    plain = io.StringIO()
    with TerminalProgress(plain) as show:
        assert not show.tty
        show(Event("training", 1, 2, "step", minor=True))
        show(Event("training", 2, 2, "step", "epoch 1/1"))
    assert plain.getvalue() == "training 2/2 step  epoch 1/1  0.0s\n"
    quiet = FakeTerminal()
    with TerminalProgress(quiet, quiet=True) as show:
        show(Event("training", 2, 2))
    assert quiet.getvalue() == ""


def test_cli_attack_draws_the_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    code = cli.main(["attack", "--model", "lenet", "--image-id", "cifar10-00", "--defense", "tip", "--clip", "5",
                     "--iters", "3", "--report-every", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 0
    text = terminal.getvalue()
    frames = [f.replace("\x1b[K", "") for f in text.split("\r")[1:]]
    assert any(f.startswith("client round [") for f in frames) and any(f.startswith("Grad-CAM [") for f in frames)
    assert frames[-1].startswith("attack [" + "#" * 24 + "] 3/3 step") and text.endswith("\n")
    assert text.count("\n") == 1  # one line, redrawn
    assert "psnr" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the app

def test_app_job_maps_events_to_its_progress_widget():
    from app import jobs

    job = jobs.Job(plan=[("none", None), ("tip", None)], images=None, slots=None, iterations=10)
    job.records["none"], job.current = "a finished run", "tip"
    assert job.activity() == "preparing the client's round"
    job.on_event("tip", Event("Grad-CAM", 0, 1, "pass"))
    assert job.activity() == jobs.STAGE_TEXT["Grad-CAM"] and job.progress() == (0.5, None)  # speed not measured yet
    snap = types.SimpleNamespace(step=5, elapsed_s=3.0)  # the attack's snapshot: 5 steps in 3 s
    job.on_event("tip", Event("attack", 5, 10, "step", eta_s=99.0, payload=snap))
    assert job.activity() == "step 5/10" and job.latest["tip"] is snap
    frac, eta = job.progress()
    assert frac == pytest.approx(0.75) and eta == pytest.approx(3.0, abs=0.1)  # measured: 5 steps left at 0.6 s
