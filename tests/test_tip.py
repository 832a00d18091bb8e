"""TIP (docs/METHOD.md §3): Grad-CAM α, top-k output channels, high-frequency kernel noise, calibration, ablations."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from tipcore import defenses
from tipcore.federation import fl, models
from tipcore.signals import saliency, spectral
from tipcore.defenses import tip as tip_mod
from tipcore.defenses.tip import TipConfig, compute_alphas
from tipcore.common.seeding import generator

from conftest import make_round, module_fingerprint, rand_images

S_DELTA_1E5 = math.sqrt(2 * math.log(1.25 / 1e-5))  # docs/METHOD.md §3.5: s = sqrt(2 ln(1.25/δ))


# ------------------------------------------------------------------------------------------ helpers

class _Rounds:
    """Clean FedSGD rounds (B = 1) and their α, computed once per module."""

    def __init__(self, resnet: nn.Module) -> None:
        self._cache: dict[str, tuple] = {}
        self._resnet = resnet

    def __call__(self, name: str):
        if name not in self._cache:
            model = self._resnet if name == "resnet18" else None
            _, update, ctx = make_round(name, "fedsgd", 1, labels=(3,), model=model)
            self._cache[name] = (update, ctx, compute_alphas(ctx.model, ctx.x, ctx.y))
        return self._cache[name]


@pytest.fixture(scope="module")
def rounds(resnet18_global):
    return _Rounds(resnet18_global)


def run_tip(update, ctx, alphas=None, *, seed=0, name="tip", **options):
    """Defended update and diagnostics: the full ``protect`` or, with precomputed α, the cheap ``apply``."""
    defense = defenses.create(name, options)
    gen = generator(seed, "defense")
    if alphas is None:
        return defense.protect(update, replace(ctx, generator=gen))
    return defense.apply(update, ctx.round, alphas, gen)


def layer_of(param_name: str) -> str | None:
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else None


def selected_union(layer_diag) -> list[int]:
    return sorted(set().union(*(set(s) for s in layer_diag.selected)))


def tolerance(*tensors: torch.Tensor) -> float:
    """1e-6, scaled up for float32 values above 1 (rounding of W + ΔW is relative)."""
    scale = max(float(t.abs().max()) for t in tensors if t.numel())
    return 1e-6 * max(1.0, scale)


def expected_k(p: float, c_out: int) -> int:
    return max(1, math.floor(Fraction(repr(p)) * c_out))


# ------------------------------------------------------------------------------- what changes, what not

@pytest.mark.parametrize("model_name", ["lenet", "convnet", "resnet18"])
def test_only_selected_output_channels_of_conv_weights_change(rounds, model_name):
    update, ctx, alphas = rounds(model_name)
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.05, ratio=0.3)
    convs = dict(models.conv_layers(ctx.model))
    by_layer = {layer.name: layer for layer in diag.layers}
    assert set(by_layer) == set(convs)
    assert list(defended.tensors) == list(update.tensors)
    changed_layers = 0
    for name, clean in update.tensors.items():
        new = defended.tensors[name]
        assert new.shape == clean.shape and new.dtype == clean.dtype
        layer = layer_of(name)
        if layer not in by_layer:  # biases, BN affine, fc: bit-identical
            assert torch.equal(new, clean), f"{name} is not a conv weight but changed"
            continue
        sel = selected_union(by_layer[layer])
        unsel = [c for c in range(clean.shape[0]) if c not in sel]
        assert torch.equal(new[unsel], clean[unsel]), f"unselected channels of {name} changed"
        if convs[layer].kernel_size == (1, 1):  # no high-frequency bin at r = 0.5
            assert torch.equal(new, clean), f"1x1 conv {name} got noise at r = 0.5"
        else:
            for c in sel:
                assert not torch.equal(new[c], clean[c]), f"selected channel {c} of {name} got no noise"
            changed_layers += 1
    assert changed_layers >= 3


@pytest.mark.parametrize("model_name, cutoff", [("convnet", 0.5), ("lenet", 0.5), ("lenet", 0.75), ("lenet", 1.0),
                                                ("resnet18", 0.5)])
def test_low_frequency_bins_including_dc_are_unchanged(rounds, model_name, cutoff):
    update, ctx, alphas = rounds(model_name)
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.05, ratio=0.5, cutoff=cutoff)
    checked_high = 0
    for layer in diag.layers:
        name = f"{layer.name}.weight"
        sel = selected_union(layer)
        before, after = update.tensors[name][sel], defended.tensors[name][sel]
        spec_before = spectral.centred_spectrum(before.double())
        spec_after = spectral.centred_spectrum(after.double())
        mask = spectral.highfreq_mask(*layer.kernel_size, cutoff).bool()
        assert np.array_equal(layer.mask.astype(bool), mask.numpy())
        kh, kw = layer.kernel_size
        assert not mask[kh // 2, kw // 2], "DC must be outside the mask"
        low_diff = (spec_after - spec_before)[..., ~mask].abs()
        assert float(low_diff.max()) <= tolerance(before, after), f"{name}: a low bin moved"
        if mask.any():
            assert float((spec_after - spec_before)[..., mask].abs().max()) > 1e-3, f"{name}: no high bin moved"
            checked_high += 1
    assert checked_high >= 1


@pytest.mark.parametrize("model_name", ["convnet", "resnet18"])
def test_cutoff_one_gives_3x3_and_1x1_kernels_no_noise(rounds, model_name):
    update, ctx, alphas = rounds(model_name)
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=1.0, ratio=1.0, cutoff=1.0)
    for name, clean in update.tensors.items():
        assert torch.equal(defended.tensors[name], clean), name
    assert all(layer.noise_energy == 0 and layer.effective_std == 0 for layer in diag.layers)


def test_cutoff_one_still_noises_the_corners_of_5x5_kernels(rounds):
    update, ctx, alphas = rounds("lenet")
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.1, ratio=1.0, cutoff=1.0)
    for layer in diag.layers:
        name = f"{layer.name}.weight"
        assert int(layer.mask.sum()) == 4
        assert not torch.equal(defended.tensors[name], update.tensors[name])
        assert layer.effective_std == pytest.approx(0.1 * math.sqrt(4 / 25))


def test_resnet18_shortcut_1x1_convs_get_no_noise_at_half_cutoff(rounds):
    update, ctx, alphas = rounds("resnet18")
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=1.0, ratio=1.0)
    shortcuts = [n for n, m in models.conv_layers(ctx.model) if m.kernel_size == (1, 1)]
    assert len(shortcuts) == 3
    by_layer = {layer.name: layer for layer in diag.layers}
    for layer in shortcuts:
        assert torch.equal(defended.tensors[f"{layer}.weight"], update.tensors[f"{layer}.weight"])
        assert by_layer[layer].effective_std == 0.0 and by_layer[layer].noise_energy == 0.0
        assert int(by_layer[layer].mask.sum()) == 0


@pytest.mark.parametrize("model_name", ["convnet", "resnet18"])
def test_3x3_kernels_keep_their_mean_at_half_cutoff(rounds, model_name):
    update, ctx, alphas = rounds(model_name)
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.1, ratio=0.5)
    n = 0
    for layer in diag.layers:
        if layer.kernel_size != (3, 3):
            continue
        name = f"{layer.name}.weight"
        sel = selected_union(layer)
        before, after = update.tensors[name][sel].double(), defended.tensors[name][sel].double()
        mean_shift = (after - before).mean(dim=(-2, -1)).abs().max()
        assert float(mean_shift) <= tolerance(before, after)
        assert float((after - before).abs().max()) > 1e-2  # the noise itself is there
        n += 1
    assert n >= 4


# ------------------------------------------------------------------------------------- noise scale

def test_empirical_noise_std_matches_formula_on_resnet18_layer4(rounds):
    update, ctx, alphas = rounds("resnet18")
    beta = 0.01
    layer = "layer4.1.conv2"
    sub = compute_alphas(ctx.model, ctx.x, ctx.y, layer)
    defended, diag = run_tip(update, ctx, sub, noise="direct", beta=beta, ratio=1.0, layers=layer)
    (ld,) = diag.layers
    assert len(ld.selected[0]) == 512
    delta_w = defended.tensors[f"{layer}.weight"].double() - update.tensors[f"{layer}.weight"].double()
    assert delta_w.numel() == 512 * 512 * 9
    expected = beta * math.sqrt(8 / 9)
    assert ld.effective_std == pytest.approx(expected, rel=1e-9)
    assert float(delta_w.std()) == pytest.approx(expected, rel=0.05)
    assert ld.noise_energy == pytest.approx(float((delta_w**2).sum()), rel=1e-3)


def test_empirical_noise_std_matches_formula_for_5x5_kernels(rounds):
    update, ctx, alphas = rounds("lenet")
    beta = 0.2
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=beta, ratio=1.0)
    deltas = [(defended.tensors[f"{l.name}.weight"].double() - update.tensors[f"{l.name}.weight"].double()).flatten()
              for l in diag.layers]
    assert float(torch.cat(deltas).std()) == pytest.approx(beta * math.sqrt(20 / 25), rel=0.05)
    for layer in diag.layers:
        assert layer.effective_std == pytest.approx(beta * math.sqrt(20 / 25), rel=1e-9)


def test_beta_zero_is_the_identity(rounds):
    for model_name in ("lenet", "resnet18"):
        update, ctx, alphas = rounds(model_name)
        defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.0, ratio=1.0, cutoff=0.0)
        for name, clean in update.tensors.items():
            assert torch.equal(defended.tensors[name], clean), name
        assert diag.summary["noise_energy"] == 0.0


def test_noise_reproduces_from_the_generator_in_spec_order():
    """docs/METHOD.md §3.6 RNG order: samples, then layers in named_modules order, one Z [k, C_in, kH, kW] each."""
    _, update, ctx = make_round("lenet", "fedsgd", 3, labels=(4, 4, 1))
    beta, cfg = 0.05, dict(noise="direct", beta=0.05, ratio=0.25)
    alphas = compute_alphas(ctx.model, ctx.x, ctx.y)
    defended, diag = run_tip(update, ctx, alphas, seed=7, **cfg)
    gen = generator(7, "defense")
    expected = {n: t.clone() for n, t in update.tensors.items()}
    by_layer = {layer.name: layer for layer in diag.layers}
    for sample in range(2):
        for name, conv in models.conv_layers(ctx.model):
            sel = list(by_layer[name].selected[sample])
            z = torch.randn((len(sel), conv.in_channels, *conv.kernel_size), generator=gen)
            mask = spectral.highfreq_mask(*conv.kernel_size, 0.5)
            expected[f"{name}.weight"][sel] += spectral.highpass_noise(z, mask, beta)
    for name in update.tensors:
        assert torch.allclose(defended.tensors[name], expected[name], rtol=0, atol=1e-7), name


# ------------------------------------------------------------------------------------- determinism

def test_same_seed_is_bit_identical_and_different_seed_differs():
    _, update, ctx = make_round("convnet", "fedavg", 2, labels=(1, 6), lr=0.05)
    a, da = run_tip(update, ctx, seed=3)
    b, db = run_tip(update, ctx, seed=3)
    c, dc = run_tip(update, ctx, seed=4)
    for name in update.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert da.summary == db.summary and da.notes == db.notes
    for la, lb, lc in zip(da.layers, db.layers, dc.layers):
        assert np.array_equal(la.alpha, lb.alpha) and la.selected == lb.selected
        assert la.noise_energy == lb.noise_energy and np.array_equal(la.mask, lb.mask)
        assert la.selected == lc.selected, "the selection depends on α, not on the seed"
    differs = [n for n in update.tensors if not torch.equal(a.tensors[n], c.tensors[n])]
    assert differs and all(layer_of(n) in {l.name for l in da.layers} for n in differs)


# ------------------------------------------------------------------------------------- selection

def test_channel_count_formula():
    for p in (0.0, 0.01, 0.1, 0.25, 0.29, 0.3, 0.5, 0.6, 0.7, 0.99, 1.0):
        for c_out in (1, 3, 12, 64, 100, 128, 256, 512):
            assert TipConfig(ratio=p).channels(c_out) == expected_k(p, c_out), (p, c_out)


RESNET_K = {  # docs/METHOD.md §3.2
    0.1: {64: 6, 128: 12, 256: 25, 512: 51},
    0.3: {64: 19, 128: 38, 256: 76, 512: 153},
    0.6: {64: 38, 128: 76, 256: 153, 512: 307},
}


@pytest.mark.parametrize("p", sorted(RESNET_K))
def test_resnet18_selects_spec_channel_counts(rounds, p):
    update, ctx, alphas = rounds("resnet18")
    _, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.0, ratio=p)
    assert len(diag.layers) == 20
    convs = dict(models.conv_layers(ctx.model))
    for layer in diag.layers:
        c_out = convs[layer.name].out_channels
        assert len(layer.selected[0]) == RESNET_K[p][c_out] == expected_k(p, c_out)


def test_lenet_selects_spec_channel_counts(rounds):
    update, ctx, alphas = rounds("lenet")
    for p, k in ((0.1, 1), (0.3, 3), (0.6, 7)):
        _, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.0, ratio=p)
        assert [len(layer.selected[0]) for layer in diag.layers] == [k, k, k]


def test_absolute_k_overrides_ratio_and_is_capped(rounds):
    update, ctx, alphas = rounds("resnet18")
    _, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.0, ratio=0.6, k=5)
    assert all(len(layer.selected[0]) == 5 for layer in diag.layers)
    update, ctx, alphas = rounds("lenet")
    _, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.0, k=100)
    assert all(layer.selected[0] == tuple(range(12)) for layer in diag.layers)


def test_ratio_zero_still_selects_the_single_top_channel(rounds):
    update, ctx, alphas = rounds("convnet")
    defended, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.1, ratio=0.0)
    for layer in diag.layers:
        assert layer.selected[0] == (int(np.argmax(layer.alpha[0])),)
    assert any(not torch.equal(defended.tensors[n], update.tensors[n]) for n in update.tensors)


@pytest.mark.parametrize("model_name", ["lenet", "convnet", "resnet18"])
def test_selection_is_topk_of_signed_or_absolute_alpha(rounds, model_name):
    update, ctx, alphas = rounds(model_name)
    differ = 0
    for signed in (True, False):
        _, diag = run_tip(update, ctx, alphas, noise="direct", beta=0.0, ratio=0.3, signed=signed)
        for layer in diag.layers:
            alpha = torch.from_numpy(layer.alpha[0])
            assert torch.equal(alpha, alphas.alphas[0][layer.name].float().cpu())
            score = alpha if signed else alpha.abs()
            k = expected_k(0.3, alpha.numel())
            top = tuple(sorted(torch.topk(score, k).indices.tolist()))
            assert layer.selected[0] == top
            assert list(layer.selected[0]) == sorted(layer.selected[0])
            if not signed:
                signed_top = tuple(sorted(torch.topk(alpha, k).indices.tolist()))
                differ += signed_top != top
    if model_name == "resnet18":
        assert differ > 0, "signed and |α| ranking should disagree somewhere on ResNet-18"


# ----------------------------------------------------------------------------------- calibration

def test_calibrated_beta_fedavg_paper_setting():
    """T = 4, η = 1e-3, C = 5, B = 1, ε = 5: σ = T·η·(C/B)·s/ε, β = σ / n_cam / L (docs/METHOD.md §3.5)."""
    _, update, ctx = make_round("lenet", "fedavg", 1, labels=(2,), local_steps=4, lr=1e-3, clip=5.0)
    defended, diag = run_tip(update, ctx, epsilon=5.0, delta=1e-5, clip=5.0)
    sigma = 4 * 1e-3 * (5.0 / 1) * S_DELTA_1E5 / 5.0
    assert diag.summary["sigma"] == pytest.approx(sigma, rel=1e-9)
    assert diag.summary["n_cam"] == 1 and diag.summary["layers"] == 3
    assert diag.summary["beta"] == pytest.approx(sigma / 1 / 3, rel=1e-9)
    for layer in diag.layers:
        assert layer.beta == pytest.approx(sigma / 3, rel=1e-9)
        assert layer.effective_std == pytest.approx(sigma / 3 * math.sqrt(20 / 25), rel=1e-9)


def test_calibrated_beta_resnet18_splits_over_20_layers(rounds):
    update, ctx, alphas = rounds("resnet18")
    round_cfg = fl.RoundConfig(mode="fedavg", batch_size=1, local_steps=4, lr=1e-3, clip=5.0)
    beta, sigma = tip_mod.calibrated_beta(TipConfig(), round_cfg, n_cam=1, n_layers=len(alphas.layers))
    assert len(alphas.layers) == 20
    assert sigma == pytest.approx(4 * 1e-3 * 5.0 * S_DELTA_1E5 / 5.0, rel=1e-9)
    assert beta == pytest.approx(sigma / 20, rel=1e-9)
    _, diag = run_tip(update, ctx, alphas)  # the FedSGD round: gradient units
    assert diag.summary["sigma"] == pytest.approx(5.0 / 1 * S_DELTA_1E5 / 5.0, rel=1e-9)
    assert diag.summary["beta"] == pytest.approx(diag.summary["sigma"] / 20, rel=1e-9)


@pytest.mark.parametrize("labels, n_cam", [((2, 2, 7, 7), 2), ((1, 2, 3, 1), 3), ((5, 5, 5, 5), 1)])
def test_n_cam_is_the_number_of_distinct_labels(labels, n_cam):
    _, update, ctx = make_round("lenet", "fedsgd", 4, labels=labels, clip=5.0)
    defended, diag = run_tip(update, ctx, epsilon=2.0, delta=1e-6, clip=5.0)
    sigma = 5.0 / 4 * math.sqrt(2 * math.log(1.25 / 1e-6)) / 2.0
    assert diag.summary["n_cam"] == n_cam
    assert diag.summary["sigma"] == pytest.approx(sigma, rel=1e-9)
    assert diag.summary["beta"] == pytest.approx(sigma / n_cam / 3, rel=1e-9)
    first = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    for layer in diag.layers:
        assert layer.alpha.shape == (n_cam, 12) and len(layer.selected) == n_cam
        for row, idx in enumerate(first.values()):  # one Grad-CAM sample per label, in batch order
            ref = saliency.channel_alpha(ctx.model, ctx.x[idx: idx + 1], labels[idx], [layer.name])[layer.name]
            assert np.allclose(layer.alpha[row], ref.numpy(), rtol=1e-5, atol=1e-8)


def test_layers_last_uses_one_layer_and_full_sigma():
    _, update, ctx = make_round("convnet", "fedsgd", 1, clip=5.0)
    defended, diag = run_tip(update, ctx, layers="last")
    assert [layer.name for layer in diag.layers] == [models.conv_layers(ctx.model)[-1][0]]
    assert diag.summary["layers"] == 1
    assert diag.summary["beta"] == pytest.approx(diag.summary["sigma"], rel=1e-12)
    last = f"{diag.layers[0].name}.weight"
    for name, clean in update.tensors.items():
        if name != last:
            assert torch.equal(defended.tensors[name], clean), name
    assert not torch.equal(defended.tensors[last], update.tensors[last])


def test_fedavg_alpha_is_computed_on_the_local_model():
    """docs/METHOD.md §3.6: in FedAvg, α is taken on θ (after local training), not on θ_g."""
    _, update, ctx = make_round("lenet", "fedavg", 1, labels=(6,), local_steps=3, lr=0.5, clip=None)
    _, diag = run_tip(update, ctx, noise="direct", beta=0.0)
    names = [layer.name for layer in diag.layers]
    local = saliency.channel_alpha(ctx.model, ctx.x, 6, names)
    glob = saliency.channel_alpha(ctx.global_model, ctx.x, 6, names)
    for layer in diag.layers:
        assert np.allclose(layer.alpha[0], local[layer.name].numpy(), rtol=1e-5, atol=1e-8)
    assert any(not torch.allclose(local[n], glob[n], rtol=1e-3) for n in names)


# ------------------------------------------------------------------------------ Grad-CAM equivalence

def _gradcam_reference(model: nn.Module, x: torch.Tensor, label: int, layer_name: str) -> np.ndarray:
    """pytorch-grad-cam's own GradCAM.get_cam_weights for ClassifierOutputTarget(label), on a copy."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    work = copy.deepcopy(model)
    layer = dict(work.named_modules())[layer_name]
    cam = GradCAM(model=work, target_layers=[layer])
    try:
        targets = [ClassifierOutputTarget(label)]
        outputs = cam.activations_and_grads(x.clone())
        work.zero_grad()
        loss = sum(t(o) for t, o in zip(targets, outputs))
        loss.backward(retain_graph=True)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        weights = cam.get_cam_weights(x, layer, targets, activations, grads)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(weights)[0]


@pytest.mark.parametrize("model_name, layer", [
    ("lenet", "body.0"), ("lenet", "body.4"), ("convnet", "body.2"), ("convnet", "body.6"),
    ("resnet18", "layer2.0.conv2"), ("resnet18", "layer3.1.conv1"), ("resnet18", "layer2.0.shortcut.0"),
])
def test_alpha_equals_pytorch_grad_cam_weights(rounds, model_name, layer):
    update, ctx, alphas = rounds(model_name)
    model, x, label = ctx.model, ctx.x, int(ctx.y[0])
    reference = _gradcam_reference(model, x, label, layer)
    alone = saliency.channel_alpha(model, x, label, [layer])[layer].numpy()
    together = alphas.alphas[0][layer].numpy()  # computed for every conv layer in one pass
    scale = float(np.abs(reference).max())
    assert scale > 0
    assert reference.shape == alone.shape == together.shape == (dict(model.named_modules())[layer].out_channels,)
    assert np.allclose(alone, reference, rtol=1e-4, atol=1e-6 * scale)
    assert np.allclose(together, reference, rtol=1e-4, atol=1e-6 * scale)


def test_computing_alpha_leaves_the_model_untouched(resnet18_global):
    model = copy.deepcopy(resnet18_global).train()
    gen = generator(0, "grad-fill")
    model.fc.weight.grad = torch.randn(model.fc.weight.shape, generator=gen)
    model.conv1.weight.grad = torch.randn(model.conv1.weight.shape, generator=gen)
    before = module_fingerprint(model)
    x, y = rand_images(2, seed=5), torch.tensor([1, 8])
    alphas = compute_alphas(model, x, y)
    assert len(alphas.alphas) == 2 and len(alphas.layers) == 20
    assert module_fingerprint(model) == before  # weights, BN running stats, .grad, train() flags, hooks
    assert model.training and model.layer3[1].bn2.training
    model.eval()
    before = module_fingerprint(model)
    saliency.channel_alpha(model, x[:1], 1, ["layer4.1.conv2"])
    saliency.gradcam_map(model, x[:1], 1)
    assert module_fingerprint(model) == before


# ---------------------------------------------------------------------------------------- ablations

def test_tip_random_selects_random_channels_not_topk(rounds):
    update, ctx, alphas = rounds("resnet18")
    _, top = run_tip(update, ctx, alphas, noise="direct", beta=0.01)
    defended, rnd = run_tip(update, ctx, alphas, name="tip_random", noise="direct", beta=0.01)
    _, rnd2 = run_tip(update, ctx, alphas, seed=1, name="tip_random", noise="direct", beta=0.01)
    convs = dict(models.conv_layers(ctx.model))
    for lt, lr_, lr2 in zip(top.layers, rnd.layers, rnd2.layers):
        assert len(lr_.selected[0]) == len(lt.selected[0])
        assert list(lr_.selected[0]) == sorted(set(lr_.selected[0]))
        if convs[lt.name].out_channels >= 256:
            assert lr_.selected != lt.selected, f"{lt.name}: random selection equals top-k"
            assert lr_.selected != lr2.selected, f"{lt.name}: random selection ignores the seed"
    # Same band as TIP: DC of every noised 3x3 kernel is unchanged.
    for layer in rnd.layers:
        name, sel = f"{layer.name}.weight", list(layer.selected[0])
        diff = spectral.centred_spectrum(defended.tensors[name][sel].double()) - spectral.centred_spectrum(
            update.tensors[name][sel].double())
        kh, kw = layer.kernel_size
        assert float(diff[..., kh // 2, kw // 2].abs().max()) <= tolerance(update.tensors[name])
    assert "random" in rnd.notes


def test_tip_fullband_changes_dc_on_the_same_channels(rounds):
    update, ctx, alphas = rounds("resnet18")
    _, top = run_tip(update, ctx, alphas, noise="direct", beta=0.05)
    defended, full = run_tip(update, ctx, alphas, name="tip_fullband", noise="direct", beta=0.05)
    dc_sq = []
    for lt, lf in zip(top.layers, full.layers):
        assert lf.selected == lt.selected
        assert lf.cutoff == 0.0 and lf.mask.all()
        name, sel = f"{lf.name}.weight", list(lf.selected[0])
        before, after = update.tensors[name][sel].double(), defended.tensors[name][sel].double()
        kh, kw = lf.kernel_size
        dc_shift = (spectral.centred_spectrum(after) - spectral.centred_spectrum(before))[..., kh // 2, kw // 2].abs()
        # DC of ΔW is β·ΣZ over the kernel: N(0, β²·kH·kW), nonzero for (almost) every kernel.
        assert float((dc_shift > tolerance(before, after)).double().mean()) > 0.95, name
        dc_sq.append((dc_shift**2).flatten() / (kh * kw))
        assert lf.effective_std == pytest.approx(0.05)
    assert float(torch.cat(dc_sq).mean().sqrt()) == pytest.approx(0.05, rel=0.05)
    shortcut = "layer2.0.shortcut.0.weight"  # 1x1 kernels get noise over the whole band
    assert not torch.equal(defended.tensors[shortcut], update.tensors[shortcut])


# ----------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("options, pattern", [
    ({"ratio": 1.5}, r"ratio.*\[0, 1\].*1\.5"),
    ({"ratio": -0.1}, r"ratio.*\[0, 1\]"),
    ({"cutoff": -0.1}, r"cutoff.*\[0, 1\].*-0\.1"),
    ({"cutoff": 1.01}, r"cutoff.*\[0, 1\]"),
    ({"noise": "direct", "beta": -0.5}, r"beta.*>= 0"),
    ({"noise": "direct"}, r"beta"),
    ({"beta": 0.1}, r"beta"),
    ({"noise": "loud"}, r"noise"),
    ({"epsilon": 0}, r"epsilon.*> 0"),
    ({"epsilon": -1.0}, r"epsilon"),
    ({"delta": 1}, r"delta.*\(0, 1\)"),
    ({"delta": 0.0}, r"delta.*\(0, 1\)"),
    ({"k": 0}, r"\bk\b.*>= 1"),
    ({"clip": 0.0}, r"clip.*> 0"),
    ({"layers": ""}, r"layers"),
    ({"ratoi": 0.2}, r"ratoi"),
])
def test_bad_options_name_the_parameter(options, pattern):
    for name in ("tip", "tip_random", "tip_fullband"):
        with pytest.raises(ValueError, match=pattern):
            defenses.create(name, options)


class _NoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def test_model_without_conv_layers_is_rejected():
    model = _NoConv()
    with pytest.raises(ValueError, match="Conv2d"):
        saliency.resolve_layers(model)
    with pytest.raises(ValueError, match="Conv2d"):
        compute_alphas(model, rand_images(1), torch.tensor([0]))


def test_unknown_layer_name_is_rejected_with_valid_names():
    model = models.build("lenet")
    with pytest.raises(ValueError, match=r"body\.9.*body\.0"):
        saliency.resolve_layers(model, "body.9")
    with pytest.raises(ValueError, match=r"fc"):  # a real module, but not a conv layer
        compute_alphas(model, rand_images(1), torch.tensor([0]), layers="fc")
    _, update, ctx = make_round("lenet")
    with pytest.raises(ValueError, match="nope"):
        run_tip(update, ctx, layers="body.0,nope")
    assert [n for n, _ in saliency.resolve_layers(model, "body.4, body.0")] == ["body.0", "body.4"]
