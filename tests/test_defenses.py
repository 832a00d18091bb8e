"""Every registered defense end to end, and the baselines' own properties: DP, paper DP, pruning, Soteria."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from tipcore import defenses
from tipcore.federation import fl, models
from tipcore.defenses import calibration as privacy
from tipcore.defenses import dp as dp_mod
from tipcore.defenses import prune as prune_mod
from tipcore.defenses import soteria as soteria_mod
from tipcore.defenses.base import DefenseDiagnostics
from tipcore.common.seeding import generator

from conftest import make_round, module_fingerprint, rand_images, tensors_digest

S = lambda delta: math.sqrt(2 * math.log(1.25 / delta))  # noqa: E731  (docs/METHOD.md §3.5)


def protect(name, update, ctx, seed=0, **options):
    return defenses.create(name, options).protect(update, replace(ctx, generator=generator(seed, "defense")))


# ----------------------------------------------------------------------------- every defense, end to end

@pytest.mark.parametrize("mode", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("model_name", ["lenet", "convnet"])
@pytest.mark.parametrize("name", sorted(defenses.DEFENSES))
def test_every_defense_runs_end_to_end_without_side_effects(name, model_name, mode):
    _, update, ctx = make_round(model_name, mode, 2, labels=(1, 7), local_steps=2, lr=0.01, clip=5.0)
    clean_digest = tensors_digest(update.tensors)
    model_fp, global_fp = module_fingerprint(ctx.model), module_fingerprint(ctx.global_model)
    x_before, y_before = ctx.x.clone(), ctx.y.clone()

    defense = defenses.create(name)
    defended, diag = defense.protect(update, ctx)

    assert list(defended.tensors) == list(update.tensors)
    for n, t in update.tensors.items():
        d = defended.tensors[n]
        assert isinstance(d, torch.Tensor) and d.shape == t.shape and d.dtype == t.dtype, n
        assert torch.isfinite(d).all(), n
    assert (defended.mode, defended.num_examples, defended.local_steps, defended.lr, defended.labels) == (
        update.mode, update.num_examples, update.local_steps, update.lr, update.labels)
    assert tensors_digest(update.tensors) == clean_digest, "the clean update was mutated"
    assert module_fingerprint(ctx.model) == model_fp and module_fingerprint(ctx.global_model) == global_fp
    assert torch.equal(ctx.x, x_before) and torch.equal(ctx.y, y_before)
    assert isinstance(diag, DefenseDiagnostics) and diag.defense == name
    json.dumps(diag.as_dict(), default=float)  # defense.json must serialise
    assert isinstance(defense.describe(), str) and len(defense.describe()) > 40
    if name == "none":
        assert all(torch.equal(defended.tensors[n], t) for n, t in update.tensors.items())
    else:
        assert any(not torch.equal(defended.tensors[n], t) for n, t in update.tensors.items()), \
            f"{name} left the update unchanged at its default settings"


def test_registry_has_the_project_defenses():
    assert {"none", "dp", "dp_paper", "prune", "soteria", "tip", "tip_random", "tip_fullband"} <= set(defenses.DEFENSES)
    with pytest.raises(ValueError, match="unknown defense 'nope'.*tip"):
        defenses.create("nope")
    with pytest.raises(ValueError, match="ratoi"):
        defenses.create("prune", {"ratoi": 0.1})


# ------------------------------------------------------------------------------------------------ DP

def _loop_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    names = fl.trainable_names(model)
    params = [p for n, p in model.named_parameters() if n in names]
    out = []
    for b in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[b: b + 1]), y[b: b + 1])
        out.append(dict(zip(names, torch.autograd.grad(loss, params))))
    return out


def _clip(g: dict[str, torch.Tensor], c: float) -> dict[str, torch.Tensor]:
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g.values()))
    f = min(1.0, c / (norm + 1e-6))
    return {n: t * f for n, t in g.items()}


@pytest.mark.parametrize("model_name", ["lenet", "convnet"])
def test_per_example_gradients_match_a_loop_and_clipping_bounds_each(model_name):
    model = models.build(model_name, seed=1).eval()
    x, y = rand_images(4, seed=2), torch.tensor([0, 3, 3, 9])
    per = dp_mod.per_example_gradients(model, x, y)
    loop = _loop_grads(model, x, y)
    assert set(per) == set(fl.trainable_names(model))
    for b in range(4):
        for n, g in loop[b].items():
            assert per[n].shape == (4, *g.shape)
            assert torch.allclose(per[n][b], g, rtol=1e-4, atol=1e-6), (b, n)
    norms = torch.stack([torch.sqrt(sum((g[b] ** 2).sum() for g in per.values())) for b in range(4)])
    clip = float(norms.min()) / 2  # every example is clipped
    _, reported = dp_mod.clipped_sum(per, clip)
    assert torch.allclose(reported, norms, rtol=1e-5)
    for b in range(4):
        one, _ = dp_mod.clipped_sum({n: g[b: b + 1] for n, g in per.items()}, clip)
        norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in one.values()))
        assert norm <= clip + 1e-5
        assert norm == pytest.approx(clip, rel=1e-4)  # clipped, not zeroed
    big = float(norms.max()) * 10  # nothing is clipped: the plain sum
    summed, _ = dp_mod.clipped_sum(per, big)
    for n in per:
        assert torch.allclose(summed[n], per[n].sum(0), rtol=1e-5, atol=1e-7)


def test_dp_without_noise_is_the_mean_of_clipped_per_example_gradients():
    _, update, ctx = make_round("lenet", "fedsgd", 3, labels=(2, 2, 5), clip=None)
    clip = 0.5
    defended, diag = protect("dp", update, ctx, clip=clip, noise_multiplier=0.0)
    clipped = [_clip(g, clip) for g in _loop_grads(ctx.global_model, ctx.x, ctx.y)]
    norms = [math.sqrt(sum(float((t ** 2).sum()) for t in g.values())) for g in _loop_grads(ctx.global_model, ctx.x, ctx.y)]
    assert min(norms) > clip  # the clipping is exercised
    for n, t in defended.tensors.items():
        expected = sum(g[n] for g in clipped) / 3
        assert torch.allclose(t, expected, rtol=1e-4, atol=1e-7), n
    assert diag.summary["noise_multiplier"] == 0.0


def test_dp_fedavg_without_noise_is_local_dp_sgd():
    _, update, ctx = make_round("lenet", "fedavg", 2, labels=(0, 4), local_steps=3, lr=0.1, clip=None)
    clip = 1.0
    defended, _ = protect("dp", update, ctx, clip=clip, noise_multiplier=0.0)
    model = copy.deepcopy(ctx.global_model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        clipped = [_clip(g, clip) for g in _loop_grads(model, ctx.x, ctx.y)]
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.sub_(sum(g[n] for g in clipped) / 2, alpha=0.1)
    for n, t in defended.tensors.items():
        assert torch.allclose(t, start[n] - dict(model.named_parameters())[n], rtol=1e-4, atol=1e-6), n


def test_dp_noise_has_std_z_c_over_b():
    _, update, ctx = make_round("convnet", "fedsgd", 2, labels=(1, 2), clip=None)
    z, clip = 1.3, 0.7
    quiet, _ = protect("dp", update, ctx, clip=clip, noise_multiplier=0.0)
    noisy, diag = protect("dp", update, ctx, clip=clip, noise_multiplier=z)
    noise = torch.cat([(noisy.tensors[n] - quiet.tensors[n]).flatten() for n in update.tensors]).double()
    assert noise.numel() > 50_000
    assert float(noise.std()) == pytest.approx(z * clip / 2, rel=0.03)
    assert abs(float(noise.mean())) < 0.05 * z * clip / 2
    assert diag.summary["sigma_per_step"] == pytest.approx(z * clip / 2, rel=1e-12)


@pytest.mark.parametrize("batch, epsilon, delta", [(1, 5.0, 1e-5), (2, 1.0, 1e-5), (4, 8.0, 1e-3)])
def test_dp_and_tip_use_the_same_sigma_in_fedsgd(batch, epsilon, delta):
    labels = tuple(range(batch))
    _, update, ctx = make_round("lenet", "fedsgd", batch, labels=labels, clip=5.0)
    _, dp_diag = protect("dp", update, ctx, clip=5.0, epsilon=epsilon, delta=delta)
    _, tip_diag = protect("tip", update, ctx, clip=5.0, epsilon=epsilon, delta=delta)
    dp_sigma = dp_diag.summary["noise_multiplier"] * dp_diag.summary["clip"] / batch
    assert dp_sigma == pytest.approx(tip_diag.summary["sigma"], rel=1e-12)
    assert dp_diag.summary["sigma_per_step"] == pytest.approx(dp_sigma, rel=1e-12)
    assert tip_diag.summary["sigma"] == pytest.approx(5.0 / batch * S(delta) / epsilon, rel=1e-12)


@pytest.mark.parametrize("epsilon, delta, steps", [(5.0, 1e-5, 1), (1.0, 1e-5, 4), (0.5, 1e-6, 16), (8.0, 1e-3, 100)])
def test_rdp_accountant_meets_the_budget_and_is_tight(epsilon, delta, steps):
    z = privacy.rdp_noise_multiplier(epsilon, delta, steps)
    assert z > 0
    assert privacy.rdp_epsilon(z, steps, delta) <= epsilon * (1 + 1e-9)
    assert privacy.rdp_epsilon(z * 0.98, steps, delta) > epsilon  # the smallest such z, up to bisection
    assert privacy.rdp_noise_multiplier(epsilon, delta, steps * 4) > z  # more steps need more noise
    assert privacy.rdp_noise_multiplier(epsilon / 2, delta, steps) > z  # a smaller ε needs more noise


def test_rdp_epsilon_decreases_with_noise_and_grows_with_steps():
    zs = [0.3, 0.5, 1.0, 2.0, 4.0, 8.0]
    eps = [privacy.rdp_epsilon(z, 10, 1e-5) for z in zs]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert privacy.rdp_epsilon(0.0, 10, 1e-5) == math.inf
    assert privacy.rdp_epsilon(1.0, 20, 1e-5) > privacy.rdp_epsilon(1.0, 10, 1e-5)


def test_classic_multiplier_and_gaussian_factor():
    assert privacy.gaussian_factor(1e-5) == pytest.approx(4.8448, abs=1e-4)  # docs/METHOD.md §3.5
    assert privacy.classic_noise_multiplier(5.0, 1e-5, 4) == pytest.approx(math.sqrt(4) * S(1e-5) / 5.0)


def test_dp_rdp_accountant_option_sets_z():
    _, update, ctx = make_round("lenet", "fedavg", 1, local_steps=3, clip=5.0)
    _, diag = protect("dp", update, ctx, accountant="rdp", epsilon=2.0, delta=1e-5)
    assert diag.summary["noise_multiplier"] == pytest.approx(privacy.rdp_noise_multiplier(2.0, 1e-5, 3))


@pytest.mark.parametrize("options, pattern", [
    ({"clip": 0.0}, r"clip.*> 0"), ({"noise_multiplier": -1.0}, r"noise_multiplier.*>= 0"),
    ({"epsilon": 0.0}, r"epsilon.*> 0"), ({"delta": 1.0}, r"delta.*\(0, 1\)"), ({"accountant": "moments"}, "accountant"),
])
def test_dp_bad_options(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        defenses.create("dp", options)


def test_privacy_rejects_bad_budgets():
    with pytest.raises(ValueError, match="epsilon"):
        privacy.rdp_noise_multiplier(0.0, 1e-5, 1)
    with pytest.raises(ValueError, match="delta"):
        privacy.classic_noise_multiplier(1.0, 0.0, 1)
    with pytest.raises(ValueError, match="clip"):
        privacy.update_sigma(fl.RoundConfig(), 1.0, 1e-5, 0.0)


# ----------------------------------------------------------------------------------------- paper DP

def test_dp_paper_noises_every_tensor_at_sigma_on_resnet18(resnet18_global):
    _, update, ctx = make_round("resnet18", "fedavg", 1, labels=(4,), local_steps=4, lr=1e-3, clip=5.0,
                                model=resnet18_global)
    defended, diag = protect("dp_paper", update, ctx, epsilon=5.0, delta=1e-5, clip=5.0)
    sigma = 4 * 1e-3 * 5.0 * S(1e-5) / 5.0  # the paper's attack study, docs/METHOD.md §3.5 and §8: ≈ 0.0194
    assert diag.summary["sigma"] == pytest.approx(sigma, rel=1e-12)
    noises = []
    for n, t in update.tensors.items():
        d = (defended.tensors[n].double() - t.double()).flatten()
        assert bool((d != 0).all()), f"{n}: some entries got no noise"
        noises.append(d)
    assert any("bn" in n for n in update.tensors) and any(n.startswith("fc.") for n in update.tensors)
    noise = torch.cat(noises)
    assert noise.numel() > 11_000_000
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * sigma


def test_dp_paper_direct_sigma():
    _, update, ctx = make_round("convnet", "fedsgd", 1, clip=None)
    defended, diag = protect("dp_paper", update, ctx, sigma=0.25)
    noise = torch.cat([(defended.tensors[n] - t).flatten() for n, t in update.tensors.items()]).double()
    assert float(noise.std()) == pytest.approx(0.25, rel=0.03)
    assert "without clipping" in diag.notes
    zero, _ = protect("dp_paper", update, ctx, sigma=0.0)
    assert all(torch.equal(zero.tensors[n], t) for n, t in update.tensors.items())


# --------------------------------------------------------------------------------------------- prune

@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.7, 0.99, 1.0])
def test_prune_zeroes_the_smallest_fraction_of_every_tensor(ratio):
    _, update, ctx = make_round("convnet", "fedsgd", 2, labels=(3, 8), clip=None)
    gen = generator(1, "prune-test")  # continuous random values: no ties, no zeros to begin with
    update = update.with_tensors({n: torch.randn(t.shape, generator=gen) for n, t in update.tensors.items()})
    defended, diag = protect("prune", update, ctx, ratio=ratio)
    for n, t in update.tensors.items():
        d = defended.tensors[n]
        zero = d == 0
        assert int(zero.sum()) == round(ratio * t.numel()), n
        kept = ~zero
        assert torch.equal(d[kept], t[kept]), f"{n}: kept entries changed"
        if 0 < int(zero.sum()) < t.numel():
            assert float(t[kept].abs().min()) >= float(t[zero].abs().max()), f"{n}: dropped a larger entry"
    total = sum(t.numel() for t in update.tensors.values())
    assert diag.summary["zero_fraction"] == pytest.approx(
        sum(round(ratio * t.numel()) for t in update.tensors.values()) / total)


def test_prune_tensor_on_a_real_gradient():
    _, update, ctx = make_round("lenet", "fedsgd", 1)
    defended, _ = protect("prune", update, ctx, ratio=0.7)
    for n, t in update.tensors.items():
        zeros = int((defended.tensors[n] == 0).sum())
        assert zeros >= round(0.7 * t.numel())
        assert abs(zeros / t.numel() - 0.7) <= 0.5 / t.numel() + float((t == 0).float().mean())
    with pytest.raises(ValueError, match=r"ratio.*\[0, 1\]"):
        defenses.create("prune", {"ratio": 1.2})
    assert torch.equal(prune_mod.prune_tensor(torch.tensor([3.0, -1.0, 2.0, -4.0]), 0.5),
                       torch.tensor([3.0, 0.0, 0.0, -4.0]))


# ------------------------------------------------------------------------------------------- Soteria

@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_soteria_prunes_only_fc_weight_columns(ratio):
    _, update, ctx = make_round("lenet", "fedsgd", 2, labels=(5, 1), clip=None)
    defended, diag = protect("soteria", update, ctx, ratio=ratio)
    fc = "fc.weight"
    for n, t in update.tensors.items():
        if n != fc:
            assert torch.equal(defended.tensors[n], t), n
    before, after = update.tensors[fc], defended.tensors[fc]
    features = before.shape[1]
    zero_cols = (after == 0).all(dim=0)
    nonzero_before = (before != 0).any(dim=0)
    pruned = zero_cols & nonzero_before
    assert torch.equal(after[:, ~zero_cols], before[:, ~zero_cols]), "kept columns must be unchanged"
    assert abs(int(pruned.sum()) - ratio * features) <= 1
    assert diag.summary["pruned_features"] == int(zero_cols.sum()) and diag.summary["features"] == features
    # The pruned columns are the features with the lowest Soteria score.
    scores = soteria_mod.feature_scores(ctx.model, ctx.x, 64)
    assert float(scores[pruned].max()) <= float(scores[~zero_cols].min())


def test_soteria_ratio_bounds():
    _, update, ctx = make_round("lenet", "fedsgd", 1, clip=None)
    none, _ = protect("soteria", update, ctx, ratio=0.0)
    assert all(torch.equal(none.tensors[n], t) for n, t in update.tensors.items())
    everything, _ = protect("soteria", update, ctx, ratio=1.0)
    assert torch.count_nonzero(everything.tensors["fc.weight"]) == 0
    with pytest.raises(ValueError, match=r"ratio.*\[0, 1\]"):
        defenses.create("soteria", {"ratio": -0.2})
