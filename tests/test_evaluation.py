"""The studies' cells: one noise level per setting on both axes, utility from scratch, the best attacker per image,
and defenses that are discovered, typed and torch-free at import."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tipcore import defenses
from tipcore.studies import cells as evaluation
from tipcore.defenses import calibration as privacy
from tipcore.studies.cells import ATTACK_ROUND, DefenseSetting, UtilityProtocol
from tipcore.federation.fl import RoundConfig

ROOT = Path(__file__).resolve().parent.parent
ONE_ROUND = UtilityProtocol(rounds=1, seeds=(0,))  # 10 clients, one FedAvg round: the protocol's own T and B


@pytest.mark.parametrize("unit, value", [("update", 0.7), ("multiplier", 3.0)])
def test_relative_noise_is_the_inverse_of_the_knob_value_in_every_round(unit, value):
    for round_cfg in (ATTACK_ROUND, ONE_ROUND.round_config(),
                      RoundConfig(mode="fedavg", batch_size=4, local_steps=3, lr=0.1, clip=2.0)):
        z = privacy.relative_noise(unit, value, round_cfg)
        assert privacy.noise_value(unit, z, round_cfg) == pytest.approx(value)
    fedavg = ONE_ROUND.round_config()
    assert fedavg.local_steps == 13  # 400 digits per client, batch 32
    # The same z is the same noise relative to the clipped update's bound (C, or T·η·C for T steps).
    assert privacy.noise_value("update", 0.1, ATTACK_ROUND) == pytest.approx(0.1 * 5.0)
    assert privacy.noise_value("update", 0.1, fedavg) == pytest.approx(0.1 * 13 * fedavg.lr * 5.0)
    # DP-SGD's per-step noise accumulates over T steps as sqrt(T): its multiplier grows with B·sqrt(T).
    assert privacy.noise_value("multiplier", 0.1, fedavg) == pytest.approx(0.1 * 32 * math.sqrt(13))


@pytest.mark.slow
@pytest.mark.parametrize("defense, knob", [("tip", "beta"), ("dp_paper", "sigma"), ("dp", "noise_multiplier")])
def test_attack_and_utility_cells_run_at_the_same_relative_noise(defense, knob):
    """What each cell reads back from the defense's own record is the setting's z, on both axes."""
    from tipcore.pipeline.experiment import prepare

    setting = DefenseSetting(defense, knob, 0.05)
    spec = defenses.DEFENSES[defense]
    assert spec.noise_knob()[0] == knob and setting.relative_noise() == 0.05
    prepared = prepare(evaluation.attack_config("cifar10-00", setting, "idlg", iterations=1, seed=0))
    attack_z = spec.relative_noise(prepared.diagnostics, ATTACK_ROUND)
    row = evaluation.utility_cell(setting, ONE_ROUND, seed=0)
    assert attack_z == pytest.approx(0.05) and row["noise_rel"] == pytest.approx(0.05)
    assert row["noise_to_signal"] > 0 and 0 <= row["accuracy"] <= 1 and len(row["curve"].split()) == 1


def test_every_noise_defense_reports_the_value_it_ran_with_under_its_knobs_name():
    """The contract ``DefenseSpec.relative_noise`` rests on, for every registered defense with a noise knob."""
    from tipcore.pipeline.experiment import prepare

    noisy = [name for name, spec in defenses.DEFENSES.items() if spec.noise_knob() is not None]
    assert {"tip", "tip_random", "tip_fullband", "dp", "dp_paper"} <= set(noisy)
    for name in noisy:
        options = {"epsilon": 5.0} if defenses.DEFENSES[name].uses_budget else {}
        prepared = prepare(evaluation.attack_config("cifar10-00", DefenseSetting(name), "idlg", iterations=1,
                                                    seed=0, defense_options=options))
        knob = defenses.DEFENSES[name].noise_knob()[0]
        assert knob in prepared.diagnostics.summary, name


def test_a_setting_keeps_its_knobs_type_and_refuses_an_unknown_knob():
    assert DefenseSetting("prune", "ratio", "0.7").value == 0.7
    assert DefenseSetting("soteria", "chunk", 8.0).value == 8 and isinstance(DefenseSetting("soteria", "chunk", 8.0).value, int)
    with pytest.raises(ValueError, match="integer"):
        DefenseSetting("soteria", "chunk", 8.5)
    with pytest.raises(ValueError, match="no option 'volume'"):
        DefenseSetting("tip", "volume", 1.0)
    # A noise knob's value is a relative strength: converted per round, with its implied options.
    tip = DefenseSetting("tip", "beta", 0.2, {"ratio": 0.3})
    assert tip.options(ATTACK_ROUND) == {"ratio": 0.3, "beta": pytest.approx(1.0), "noise": "direct"}
    assert tip.options(ONE_ROUND.round_config())["beta"] == pytest.approx(0.2 * 13 * 0.5 * 5.0)
    assert DefenseSetting("prune", "ratio", 0.7).options(ONE_ROUND.round_config()) == {"ratio": 0.7}


def test_best_per_image_takes_the_strongest_attacker_of_each_image():
    rows = [{"image": "a", "seed": "0", "attack": "x", "psnr": "10"}, {"image": "a", "seed": "0", "attack": "y", "psnr": "30"},
            {"image": "b", "seed": "0", "attack": "x", "psnr": "25"}, {"image": "b", "seed": "0", "attack": "y", "psnr": "5"},
            {"image": "b", "seed": "0", "attack": "z", "psnr": "99"}]
    best = evaluation.best_per_image(rows, ("x", "y"))
    assert {k: v["attack"] for k, v in best.items()} == {("a", "0"): "y", ("b", "0"): "x"}


def test_converged_round_is_where_accuracy_stays_within_tolerance_of_its_end():
    assert evaluation.converged_round([0.1, 0.5, 0.9, 0.905, 0.91]) == 3
    assert evaluation.converged_round([0.1, 0.91, 0.5, 0.91]) == 4
    assert evaluation.converged_round([]) is None


def test_a_defense_module_is_discovered_without_an_import_line_and_the_registries_need_no_torch(tmp_path):
    """Drop one file into a copy of the defenses package: it is registered, after the baseline, and importing
    the registry loads neither torch nor Grad-CAM."""
    copy = tmp_path / "tipcore"
    shutil.copytree(ROOT / "tipcore", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "defenses" / "zz_toy.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        from tipcore.defenses.base import DefenseDiagnostics, register
        from tipcore.common.knobs import check, knob


        @dataclass(frozen=True)
        class ZzConfig:
            level: int = knob(1, "Level", "how much", low=0, high=3, role="strength", grid=(0, 3))

            def __post_init__(self) -> None:
                check(self)


        @register("zz_toy", ZzConfig, "toy: a defense in one dropped-in file", label="Toy")
        class Zz:
            def __init__(self, config=None):
                self.config = config or ZzConfig()

            def protect(self, update, ctx):
                return update, DefenseDiagnostics("zz_toy")

            def describe(self):
                return "A toy."
        '''))
    code = ("import sys, tipcore.defenses as d, tipcore.common.knobs; print(','.join(d.DEFENSES)); "
            "print(sorted(m for m in ('torch', 'torchvision', 'pytorch_grad_cam') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    names, heavy = out.stdout.splitlines()
    assert names.split(",")[0] == defenses.BASELINE and "zz_toy" in names.split(",")
    assert set(names.split(",")) - {"zz_toy"} == set(defenses.DEFENSES)
    assert heavy == "[]"
