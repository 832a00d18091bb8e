"""tipcore.federation.models: the architectures, seeded init, fresh modules, the bundled digits checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tipcore.pipeline import experiment
from tipcore.federation import models

from conftest import rand_images, tensors_digest


def _convs(model):
    return [m for _, m in models.conv_layers(model)]


def test_resnet18_has_20_convs_three_of_them_1x1(resnet18_global):
    convs = _convs(resnet18_global)
    assert len(convs) == 20
    assert sum(c.kernel_size == (1, 1) for c in convs) == 3
    assert all(c.kernel_size in ((1, 1), (3, 3)) for c in convs)
    assert resnet18_global.conv1.kernel_size == (3, 3) and resnet18_global.conv1.stride == (1, 1)  # CIFAR stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet18_global.modules())
    assert sorted({c.out_channels for c in convs}) == [64, 128, 256, 512]
    assert abs(models.param_count(resnet18_global) - 11.17e6) < 0.05e6  # docs/METHOD.md §8: 11.2M


def test_lenet_is_the_dlg_lenet():
    model = models.build("lenet")
    convs = _convs(model)
    assert len(convs) == 3
    assert all(c.kernel_size == (5, 5) and c.out_channels == 12 for c in convs)
    assert any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert model.fc.in_features == 768


def test_lenet_init_is_uniform_half():
    model = models.build("lenet", seed=11)
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float(values.min()) >= -0.5 and float(values.max()) <= 0.5
    assert float(values.min()) < -0.45 and float(values.max()) > 0.45  # spread over the whole interval
    assert abs(float(values.mean())) < 0.02


def test_convnet_shape():
    convs = _convs(models.build("convnet"))
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) for c in convs)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_forward_and_features_shapes(name, resnet18_global):
    model = resnet18_global if name == "resnet18" else models.build(name).eval()
    x = rand_images(2)
    with torch.no_grad():
        feats, logits = model.features(x), model(x)
    assert feats.shape == (2, model.fc.in_features) and logits.shape == (2, 10)
    assert torch.allclose(model.fc(feats), logits, atol=1e-5)
    assert bool((feats >= 0).all()), "iDLG's label rule needs non-negative features"
    assert models.build(name, num_classes=100).fc.out_features == 100


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18"])
def test_seeded_init_is_reproducible(name):
    a, b, c = models.build(name, seed=1), models.build(name, seed=1), models.build(name, seed=2)
    assert tensors_digest(a.state_dict()) == tensors_digest(b.state_dict())
    da, dc = tensors_digest(a.state_dict()), tensors_digest(c.state_dict())
    weights = [f"{n}.weight" for n, m in a.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weights) >= 4
    assert all(da[n] != dc[n] for n in weights), "a different seed must change every weight tensor"


def test_init_does_not_depend_on_the_global_rng():
    a = models.build("convnet", seed=3)
    with torch.random.fork_rng():
        torch.rand(12345)  # move the global RNG on (restored when the block ends)
        b = models.build("convnet", seed=3)
    assert tensors_digest(a.state_dict()) == tensors_digest(b.state_dict())


def test_build_returns_a_fresh_module_every_call():
    a, b = models.build("lenet"), models.build("lenet")
    assert a is not b
    with torch.no_grad():
        a.fc.weight.add_(1.0)
    assert not torch.equal(a.fc.weight, b.fc.weight)
    assert torch.equal(models.build("lenet").fc.weight, b.fc.weight)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*lenet.*convnet.*resnet18"):
        models.build("vgg")
    with pytest.raises(ValueError, match="weights"):
        models.build("lenet", weights="imagenet")
    with pytest.raises(ValueError, match="num_classes"):
        models.build("lenet", num_classes=1)


def test_conv_layers_follow_named_modules_order(resnet18_global):
    names = [n for n, _ in models.conv_layers(resnet18_global)]
    order = [n for n, m in resnet18_global.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == order and names[0] == "conv1" and "layer2.0.shortcut.0" in names


# ----------------------------------------------------------------------------------- digits weights

def _require_checkpoint(name: str) -> None:
    if not models.has_checkpoint(name):
        pytest.skip(f"no bundled digits checkpoint at {models.checkpoint_path(name)}")


@pytest.mark.parametrize("name", list(models.MODELS))
def test_digits_checkpoint_loads_safely_and_matches(name):
    _require_checkpoint(name)
    raw = torch.load(models.checkpoint_path(name), map_location="cpu", weights_only=True)
    model = models.build(name, weights="digits")
    state = model.state_dict()
    assert set(raw) == set(state)
    for k, v in raw.items():
        assert torch.equal(state[k], v.float() if v.is_floating_point() else v), k
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    with pytest.raises(ValueError, match="10 classes"):
        models.build(name, weights="digits", num_classes=100)


def test_checkpoints_are_loaded_with_weights_only(monkeypatch):
    name = next((n for n in models.MODELS if models.has_checkpoint(n)), None)
    if name is None:
        pytest.skip("no bundled digits checkpoint")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(models, "_CHECKPOINT_CACHE", {})
    monkeypatch.setattr(torch, "load", spy)
    models.build(name, weights="digits")
    models.build(name, weights="digits")
    assert len(calls) == 1, "the checkpoint should be read once and cached"
    assert calls[0].get("weights_only") is True


@pytest.mark.parametrize("name", list(models.MODELS))
def test_digits_modules_are_fresh_and_never_alias_the_cache(name):
    _require_checkpoint(name)
    cached = tensors_digest(models.load_checkpoint(name))
    a = models.build(name, weights="digits")
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(-2.0)
    b = models.build(name, weights="digits")
    assert tensors_digest(models.load_checkpoint(name)) == cached
    assert tensors_digest(b.state_dict()) != tensors_digest(a.state_dict())


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_a_digits_run_does_not_mutate_the_cached_checkpoint(name):
    _require_checkpoint(name)
    cached = tensors_digest(models.load_checkpoint(name))
    cfg = experiment.RunSpec(model=name, weights="digits", image_ids=("mnist-03",), defense="tip",
                                      defense_cfg={"noise": "direct", "beta": 0.1}, attack="idlg",
                                      attack_cfg={"iterations": 2}, device="cpu",
                                      round=experiment.RoundConfig(mode="fedavg", local_steps=2, lr=0.1, clip=5.0))
    record = experiment.run(cfg)
    assert record.result.iterations >= 1
    assert tensors_digest(models.load_checkpoint(name)) == cached
    assert tensors_digest(models.build(name, weights="digits").state_dict()) == cached


def test_missing_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr(models, "_CHECKPOINT_CACHE", {})
    with pytest.raises(ValueError, match="no digits checkpoint.*train"):
        models.build("lenet", weights="digits")
