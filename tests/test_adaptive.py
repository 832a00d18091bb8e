"""Attackers who know the defense: noised-channel detection, what each matcher reads, and recovery."""

from __future__ import annotations

import math

import pytest
import torch

from tipcore import attacks
from tipcore.pipeline import experiment, update_stats
from tipcore.signals import spectral
from tipcore.attacks.engine import distance_and_seed
from tipcore.attacks.fitted import Fitted, fit_matcher
from tipcore.attacks.problem import MatchingProblem
from tipcore.federation.fl import RoundConfig

FEDSGD = RoundConfig(clip=5.0)
FEDAVG = RoundConfig(mode="fedavg", local_steps=4, lr=1e-3, clip=5.0)


def prepared(model: str, round_cfg: RoundConfig, defense: str, image: str = "cifar10-00", **options):
    cfg = experiment.RunSpec(seed=0, model=model, image_ids=(image,), round=round_cfg, defense=defense,
                                      defense_cfg=options, attack="idlg", device="cpu")
    return experiment.prepare(cfg)


def fitted(p, mode: str, **options) -> tuple[MatchingProblem, Fitted]:
    problem = MatchingProblem(p.view, p.defended)
    return problem, fit_matcher(mode, attacks.MATCHERS[mode].config_cls(**options), problem.received())


# ------------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("model, round_cfg, ratio", [
    ("lenet", FEDSGD, 0.1), ("lenet", FEDSGD, 0.6), ("resnet18", FEDAVG, 0.1), ("resnet18", FEDSGD, 0.6),
])
def test_drop_finds_tips_noised_channels_far_better_than_chance(model, round_cfg, ratio):
    p = prepared(model, round_cfg, "tip", ratio=ratio)
    _, matcher = fitted(p, "drop")
    found = update_stats.detection(matcher.flagged, p.diagnostics)
    # Chance (flagging at random as many channels as TIP noised) has precision ≈ p.
    assert found["noised"] > 0 and found["precision"] >= 0.95 and found["recall"] >= 0.95, found
    assert found["precision"] > ratio + 0.3


@pytest.mark.parametrize("model, round_cfg, defense", [
    ("lenet", FEDSGD, "none"), ("lenet", FEDSGD, "dp_paper"), ("resnet18", FEDAVG, "none"),
])
def test_drop_flags_nothing_where_no_channel_stands_out(model, round_cfg, defense):
    _, matcher = fitted(prepared(model, round_cfg, defense), "drop")
    assert sum(len(v) for v in matcher.flagged.values()) == 0, matcher.flagged


def test_detection_truth_counts_only_channels_that_received_noise():
    """TIP selects channels of the 1x1 shortcut convs too, but their mask has no bins at r = 0.5."""
    p = prepared("resnet18", FEDSGD, "tip")
    truth = update_stats.true_selection(p.diagnostics)
    assert "layer2.0.shortcut.0" not in truth and "conv1" in truth
    assert sum(len(v) for v in truth.values()) == update_stats.noise_to_signal(
        dict(p.clean.tensors), dict(p.defended.tensors))["perturbed_slices"]


# ------------------------------------------------------------------------------------------------ lowpass

def test_lowpass_never_reads_a_masked_bin():
    p = prepared("lenet", FEDSGD, "none")
    problem, matcher = fitted(p, "lowpass")
    gen = torch.Generator().manual_seed(1)
    perturbed = []
    for name, t in zip(problem.names, problem.targets):
        if t.ndim == 4 and t.shape[-1] > 1:
            mask = spectral.highfreq_mask(*t.shape[-2:], 0.5)
            # The reference FFT form of TIP's noise (not the projection matrix the matcher itself uses).
            t = t + spectral.highpass_noise_fft(torch.randn(t.shape, generator=gen), mask, 100.0 * float(t.abs().max()))
        perturbed.append(t)
    assert any(not torch.equal(a, b) for a, b in zip(problem.targets, perturbed))
    dummy = [torch.randn(t.shape, generator=gen) * t.abs().max() for t in problem.targets]
    d = [matcher.apply(n, g) for n, g in zip(problem.names, dummy)]
    clean_t = [matcher.apply(n, t) for n, t in zip(problem.names, problem.targets)]
    noisy_t = [matcher.apply(n, t) for n, t in zip(problem.names, perturbed)]
    norm = torch.sqrt(sum((t * t).sum() for t in clean_t))
    for kind in ("l2", "cosine"):
        clean_loss = float(distance_and_seed(kind, d, clean_t, norm)[0])
        noisy_loss = float(distance_and_seed(kind, d, noisy_t, norm)[0])
        assert math.isclose(clean_loss, noisy_loss, rel_tol=1e-5), (kind, clean_loss, noisy_loss)
    # ... while the naive attacker's loss does change
    naive = float(distance_and_seed("l2", dummy, perturbed, norm)[0])
    assert not math.isclose(naive, float(distance_and_seed("l2", dummy, list(problem.targets), norm)[0]), rel_tol=1e-3)


# -------------------------------------------------------------------------------------------- noise-aware

def test_noise_aware_weights_tips_channels_down_and_dp_barely():
    p = prepared("lenet", FEDSGD, "tip")
    _, matcher = fitted(p, "noise_aware")
    truth = update_stats.true_selection(p.diagnostics)
    for layer, weights in matcher.weights.items():
        noised = [w for c, w in enumerate(weights) if c in truth.get(layer, set())]
        clean = sorted(w for c, w in enumerate(weights) if c not in truth.get(layer, set()))
        # A naturally rough clean channel is discounted too (roughness is all it sees), but noised ones
        # sit orders of magnitude below every clean one.
        assert noised and max(noised) < 1e-3 and min(clean) > 10 * max(noised), (layer, weights)
        assert clean[len(clean) // 2] > 0.5
    _, under_dp = fitted(prepared("lenet", FEDSGD, "dp_paper"), "noise_aware")
    all_weights = [w for ws in under_dp.weights.values() for w in ws]
    assert min(all_weights) > 0.5  # DP noises every bin of every channel alike: nothing to single out


# ------------------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_drop_recovers_a_lenet_image_from_a_tip_update():
    def run(attack: str) -> experiment.RunRecord:
        return experiment.run(experiment.RunSpec(
            seed=0, model="lenet", image_ids=("cifar10-00",), round=FEDSGD, defense="tip", attack=attack,
            attack_cfg={"iterations": 300}, device="cpu"))

    naive, adaptive = run("idlg"), run("idlg_drop")
    assert naive.scores.psnr < 10.0  # TIP stops the attacker that ignores it ...
    assert adaptive.scores.psnr > 30.0 and adaptive.scores.psnr > naive.scores.psnr + 20.0  # ... not this one
    assert adaptive.analysis["detection"]["precision"] == 1.0 and adaptive.analysis["detection"]["recall"] == 1.0
    assert adaptive.result.match == "drop" and naive.analysis["match"] == "all"


def test_adaptive_variants_are_registered_for_every_base():
    for base in ("dlg", "idlg", "ig"):
        for mode in attacks.MATCHERS:
            if mode == "all":
                continue
            name = f"{base}_{mode}"
            assert attacks.base_attack(name) == base and attacks.is_adaptive(name) and not attacks.is_adaptive(base)
            assert attacks.create(name).recipe().matcher == mode
            assert name in attacks.adaptive_variants(base)
    assert attacks.create("idlg_drop", {"match": "lowpass"}).recipe().matcher == "lowpass"
    with pytest.raises(ValueError, match="match must be one of"):
        attacks.create("idlg", {"match": "guess"})
    with pytest.raises(ValueError, match="assumed_cutoff"):
        attacks.create("ig_drop", {"assumed_cutoff": 0.0})
