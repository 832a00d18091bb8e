"""A matcher is one file: its config declares its knobs, its class its label, summary, whether it flags
channels, and ``fit``; the attacks ``{base}_{matcher}``, the CLI, result.json's detection record, the
batched comparison and the app's attacker picker follow. The toy matcher below is that one file; nothing
else in the repository knows it."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from tipcore import attacks
from tipcore.attacks.registry import register_matcher, unregister_matcher
from tipcore.common import knobs
from tipcore.common.knobs import check, knob

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the toy matcher: one file

@dataclass(frozen=True)
class ToyMatchConfig:
    toy_top: int = knob(1, "Flagged per layer", "flag this many channels per conv layer, most energetic first",
                        low=1, high=64)
    toy_weight: float = knob(0.0, "Weight kept", "what the flagged channels still weigh in the distance",
                             low=0.0, high=1.0, symbol="w")

    def __post_init__(self) -> None:
        check(self)


def make_toy() -> None:
    @register_matcher("toy", ToyMatchConfig, label="toy: flags the most energetic channels", short="toy",
                      summary="adaptive: flags the most energetic channels of every conv layer (a toy)",
                      flags_channels=True)
    class ToyMatcher:
        def __init__(self, config: ToyMatchConfig) -> None:
            self.config = config

        def fit(self, received):
            import torch

            from tipcore.attacks.channels import spatial_convs
            from tipcore.attacks.fitted import Fitted, TensorMap, channel_scale

            fitted = Fitted()
            for layer, _ in spatial_convs(received.model):
                w = received.targets[f"{layer}.weight"]
                energy = (w * w).flatten(1).sum(1)
                top = tuple(sorted(int(i) for i in torch.topk(energy, self.config.toy_top).indices.tolist()))
                keep = torch.ones(energy.numel())
                keep[list(top)] = self.config.toy_weight
                fitted.maps[f"{layer}.weight"] = TensorMap(scale=channel_scale(keep, w))
                fitted.flagged[layer] = top
            return fitted


@pytest.fixture
def toy():
    make_toy()
    yield "toy"
    unregister_matcher("toy")


# ----------------------------------------------------------------------------- where it shows up

def test_toy_matcher_makes_an_attack_per_base_and_unregisters(toy) -> None:
    for base in ("dlg", "idlg", "ig"):
        name = f"{base}_toy"
        spec = attacks.ATTACKS[name]
        assert spec.base == base and spec.matcher == "toy" and attacks.is_adaptive(name)
        assert name in attacks.adaptive_variants(base) and spec.label.endswith(" + toy")
        recipe = attacks.create(name, {"toy_top": 2, "toy_weight": 0.5}).recipe()
        assert recipe.matcher == "toy" and recipe.matcher_config == ToyMatchConfig(2, 0.5)
        # The matcher's knob declarations (the symbol a chart writes for one included) travel with the variant.
        rows = {r["name"]: r for r in knobs.table(spec.config_cls)}
        assert rows["toy_weight"]["symbol"] == "w" and rows["toy_top"]["symbol"] == "toy_top"
    with pytest.raises(ValueError, match="toy_top must be an integer"):
        attacks.create("idlg_toy", {"toy_top": 1.5})
    with pytest.raises(ValueError, match=r"toy_weight must be in \[0, 1\]"):
        attacks.create("idlg_toy", {"toy_weight": 2.0})
    with pytest.raises(ValueError, match="unknown option"):
        attacks.create("idlg", {"toy_top": 2})  # the naive attack does not take the toy's knobs
    unregister_matcher("toy")
    assert not any(n.endswith("_toy") for n in attacks.ATTACKS) and "toy" not in attacks.MATCHERS
    make_toy()  # the fixture unregisters it again


def test_toy_matcher_appears_in_attack_help_runs_and_records_its_detection(toy, tmp_path) -> None:
    from tipcore.cli import build_parser, main

    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as done:
        build_parser("attack").parse_args(["attack", "--help"])
    assert done.value.code == 0
    text = " ".join(buf.getvalue().split())
    assert "idlg_toy: iDLG + toy: flags the most energetic channels" in text and "ig_toy" in text and "dlg_toy" in text
    out = tmp_path / "run"
    assert main(["attack", "--defense", "tip", "--attack", "idlg_toy", "--attack-opt", "toy_top=2",
                 "--attack-opt", "toy_weight=0.25", "--iters", "1", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["spec"]["attack_cfg"] == {"toy_top": 2, "toy_weight": 0.25, "iterations": 1}
    assert result["resolved"]["attack"]["toy_top"] == 2 and result["resolved"]["attack"]["match"] == "toy"
    update = result["update"]
    assert update["match"] == "toy" and len(update["flagged"]) == 3  # LeNet's three conv layers
    assert all(len(v) == 2 for v in update["flagged"].values())
    detection = update["detection"]
    assert detection["flagged"] == 6 and detection["noised"] == 3  # TIP noises one channel per LeNet layer
    assert 0 <= detection["true_positives"] <= 3 and detection["precision"] == detection["true_positives"] / 6
    # Its declared types and ranges are enforced at the edge, with a one-line error and nothing written.
    assert main(["attack", "--attack", "idlg_toy", "--attack-opt", "toy_top=1.5", "--out", str(tmp_path / "x")]) == 2
    assert main(["attack", "--attack", "idlg_toy", "--attack-opt", "toy_weight=2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_toy_matcher_runs_in_the_batched_comparison(toy) -> None:
    from tipcore.pipeline import experiment
    from tipcore.federation.fl import RoundConfig
    from tipcore.common.progress import drive

    cfgs = [experiment.RunSpec(seed=0, model="lenet", image_ids=("cifar10-00",), round=RoundConfig(clip=5.0),
                                        defense=d, attack="idlg_toy", attack_cfg={"iterations": 2}, device="cpu")
            for d in ("none", "tip")]
    assert experiment.comparable(cfgs)
    batched = drive(experiment.stream_comparison(cfgs))
    alone = experiment.run(cfgs[1])
    assert [r.analysis["detection"]["flagged"] for r in batched] == [3, 3]
    assert batched[1].result.flagged == alone.result.flagged
    assert batched[1].analysis["detection"] == alone.analysis["detection"]


def test_toy_matcher_is_offered_by_the_apps_attacker_picker(toy) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
    at.switch_page("views/live.py").run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="w_adaptive")
    assert "toy: flags the most energetic channels" in picker.options
    picker.set_value("toy").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params["adaptive"] in (["toy"], "toy")
    assert any("iDLG + toy (knows the defense)" in md.value for md in at.markdown)
