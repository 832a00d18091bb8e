"""tipcore.federation.fl: the client's round (FedSGD / FedAvg), the shared message, the server's step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tipcore.federation import fl, models
from tipcore.common.seeding import generator

from conftest import make_round, module_fingerprint, rand_images, tensors_digest


def _autograd_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).eval()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # mean over the batch
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _global_norm(tensors) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


@pytest.mark.parametrize("mode", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("model_name", ["lenet", "convnet", "resnet18"])
def test_shared_update_has_exactly_the_trainable_parameters(model_name, mode, resnet18_global):
    model = resnet18_global if model_name == "resnet18" else models.build(model_name).eval()
    _, update, ctx = make_round(model_name, mode, 1, model=model, local_steps=1)
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(update.tensors) == expected
    params = dict(model.named_parameters())
    buffers = {n for n, _ in model.named_buffers()}
    for n, t in update.tensors.items():
        assert t.shape == params[n].shape and t.dtype == params[n].dtype and not t.requires_grad
        assert n not in buffers
    assert update.mode == mode and update.num_examples == 1 and update.labels is None


def test_frozen_parameters_are_not_shared():
    model = models.build("convnet")
    model.body[0].bias.requires_grad_(False)
    _, update, _ = make_round("convnet", "fedsgd", 1, model=model)
    assert "body.0.bias" not in update.tensors
    assert list(update.tensors) == fl.trainable_names(model)


@pytest.mark.parametrize("model_name", ["lenet", "convnet"])
def test_fedsgd_update_is_the_gradient_of_mean_cross_entropy(model_name):
    model = models.build(model_name, seed=3).eval()
    _, update, ctx = make_round(model_name, "fedsgd", 3, labels=(0, 0, 9), model=model, clip=None)
    expected = _autograd_grads(model, ctx.x, ctx.y)
    for n, t in update.tensors.items():
        assert torch.allclose(t, expected[n], rtol=1e-5, atol=1e-7), n
    assert ctx.model is ctx.global_model  # FedSGD: the update refers to θ_global


def _manual_fedavg(model: nn.Module, x, y, steps: int, lr: float, clip: float | None):
    local = copy.deepcopy(model).eval()
    norms = []
    for _ in range(steps):
        local.zero_grad()
        nn.functional.cross_entropy(local(x), y).backward()
        grads = [p.grad for p in local.parameters()]
        norm = _global_norm(grads)
        norms.append(norm)
        factor = 1.0 if clip is None else min(1.0, clip / (norm + 1e-6))
        with torch.no_grad():
            for p in local.parameters():
                p.sub_(p.grad * factor, alpha=lr)
    before = dict(model.named_parameters())
    return {n: (before[n] - p).detach() for n, p in local.named_parameters()}, norms, local


@pytest.mark.parametrize("clip", [None, 0.5])
def test_fedavg_update_is_theta_global_minus_theta_after_t_clipped_sgd_steps(clip):
    model = models.build("lenet", seed=4).eval()
    _, update, ctx = make_round("lenet", "fedavg", 2, labels=(1, 2), model=model, local_steps=5, lr=0.05, clip=clip)
    expected, norms, local = _manual_fedavg(model, ctx.x, ctx.y, 5, 0.05, clip)
    if clip is not None:
        assert max(norms) > clip, "the test must exercise clipping"
    for n, t in update.tensors.items():
        assert torch.allclose(t, expected[n], rtol=1e-4, atol=1e-7), n
    for (n, p), (_, q) in zip(ctx.model.named_parameters(), local.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-7), n
    assert update.local_steps == 5 and update.lr == 0.05 and update.clip == clip


def test_clip_bound_holds_in_both_modes():
    model = models.build("lenet", seed=5).eval()
    clip = 0.2
    _, raw, ctx = make_round("lenet", "fedsgd", 2, model=model, clip=None)
    assert _global_norm(raw.tensors.values()) > clip
    _, clipped, _ = make_round("lenet", "fedsgd", 2, model=model, clip=clip)
    assert _global_norm(clipped.tensors.values()) <= clip + 1e-5
    scale = _global_norm(clipped.tensors.values()) / _global_norm(raw.tensors.values())
    for n in raw.tensors:  # a rescaling, not a change of direction
        assert torch.allclose(clipped.tensors[n], raw.tensors[n] * scale, rtol=1e-4, atol=1e-8)
    _, loose, _ = make_round("lenet", "fedsgd", 2, model=model, clip=1e6)
    assert all(torch.allclose(loose.tensors[n], raw.tensors[n], rtol=1e-6) for n in raw.tensors)
    steps, lr = 4, 0.1
    _, avg, _ = make_round("lenet", "fedavg", 2, model=model, local_steps=steps, lr=lr, clip=clip)
    assert _global_norm(avg.tensors.values()) <= steps * lr * clip + 1e-5  # triangle inequality over steps


def test_clip_by_global_norm_math():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm 5
    out = fl.clip_by_global_norm(grads, 1.0)
    assert _global_norm(out) == pytest.approx(1.0 * 5 / (5 + 1e-6), rel=1e-6)
    assert torch.allclose(out[0], grads[0] / (5 + 1e-6))
    assert fl.clip_by_global_norm(grads, None) is grads
    same = fl.clip_by_global_norm(grads, 10.0)
    assert all(torch.equal(a, b) for a, b in zip(same, grads))


def test_round_does_not_mutate_the_callers_model_nor_bn_buffers(resnet18_global):
    model = copy.deepcopy(resnet18_global).train()  # even a train()-mode caller: the round runs in eval()
    before = module_fingerprint(model)
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}
    _, update, ctx = make_round("resnet18", "fedavg", 2, labels=(3, 5), model=model, local_steps=2, lr=0.1)
    assert module_fingerprint(model) == before
    for name, ref in buffers_before.items():
        assert torch.equal(dict(ctx.model.named_buffers())[name], ref), f"{name} changed in the local model"
        assert torch.equal(dict(ctx.global_model.named_buffers())[name], ref)
    assert not ctx.model.training and not ctx.global_model.training
    assert ctx.model is not model and ctx.global_model is not model
    assert not any(n.endswith(("running_mean", "running_var", "num_batches_tracked")) for n in update.tensors)


def test_client_update_rejects_bad_shapes():
    model = models.build("lenet")
    gen = generator(0, "defense")
    with pytest.raises(ValueError, match="B, 3, H, W"):
        fl.client_update(model, torch.rand(3, 32, 32), torch.tensor([1]), fl.RoundConfig(), generator=gen)
    with pytest.raises(ValueError, match="labels"):
        fl.client_update(model, rand_images(2), torch.tensor([1]), fl.RoundConfig(batch_size=2), generator=gen)


def test_labels_are_shared_only_when_asked():
    _, hidden, _ = make_round("lenet", "fedsgd", 2, labels=(4, 1))
    _, shown, _ = make_round("lenet", "fedsgd", 2, labels=(4, 1), share_labels=True)
    assert hidden.labels is None and shown.labels == (4, 1)


def test_as_gradient_scales_fedavg_by_steps_times_lr():
    _, avg, _ = make_round("lenet", "fedavg", 1, local_steps=4, lr=0.01)
    g = avg.as_gradient()
    for n, t in avg.tensors.items():
        assert torch.allclose(g[n], t / (4 * 0.01))
    _, sgd, _ = make_round("lenet", "fedsgd", 1)
    assert all(torch.equal(sgd.as_gradient()[n], t) for n, t in sgd.tensors.items())


def test_with_tensors_returns_a_new_message():
    _, update, _ = make_round("lenet", "fedsgd", 1)
    other = update.with_tensors({n: torch.zeros_like(t) for n, t in update.tensors.items()})
    assert other is not update and other.mode == update.mode and other.lr == update.lr
    assert any(torch.count_nonzero(t) for t in update.tensors.values())


@pytest.mark.parametrize("mode", ["fedsgd", "fedavg"])
def test_apply_update_math(mode):
    model = models.build("convnet", seed=6).eval()
    _, update, ctx = make_round("convnet", mode, 1, model=model, local_steps=2, lr=0.05, clip=None)
    digest = tensors_digest(model.state_dict())
    new = fl.apply_update(model, update)
    assert new is not model and tensors_digest(model.state_dict()) == digest
    scale = 1.0 if mode == "fedavg" else 0.05
    old = dict(model.named_parameters())
    for n, p in new.named_parameters():
        assert torch.allclose(p, old[n] - scale * update.tensors[n], rtol=1e-6, atol=1e-8), n
    if mode == "fedavg":  # the server lands exactly on the client's local model
        for (n, p), (_, q) in zip(new.named_parameters(), ctx.model.named_parameters()):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), n
    else:
        custom = fl.apply_update(model, update, server_lr=2.0)
        for n, p in custom.named_parameters():
            assert torch.allclose(p, old[n] - 2.0 * update.tensors[n], rtol=1e-6, atol=1e-8), n
    for (n, b), (_, c) in zip(new.named_buffers(), model.named_buffers()):
        assert torch.equal(b, c)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"mode": "fedprox"}, r"mode.*fedsgd.*fedavg"),
    ({"batch_size": 0}, r"batch_size.*\[1, 64\]"),
    ({"batch_size": 65}, r"batch_size.*\[1, 64\]"),
    ({"mode": "fedavg", "local_steps": 0}, r"local_steps.*\[1, 1000\]"),
    ({"mode": "fedavg", "local_steps": 1001}, r"local_steps"),
    ({"mode": "fedsgd", "local_steps": 2}, r"local_steps.*fedsgd"),
    ({"lr": 0.0}, r"lr.*> 0"),
    ({"lr": -1e-3}, r"lr"),
    ({"clip": 0.0}, r"clip.*> 0"),
    ({"clip": -5.0}, r"clip"),
])
def test_round_config_validation_names_the_parameter(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fl.RoundConfig(**kwargs)


def test_round_config_steps():
    assert fl.RoundConfig().steps == 1
    assert fl.RoundConfig(mode="fedavg", local_steps=7).steps == 7


def test_server_view_builds_the_global_model_in_eval_mode():
    model = models.build("convnet", seed=9)
    view = fl.ServerView("convnet", 10, {k: v.clone() for k, v in model.state_dict().items()})
    a, b = view.build_model(), view.build_model()
    assert a is not b and not a.training
    assert tensors_digest(a.state_dict()) == tensors_digest(model.state_dict())
    assert view.capabilities.labels_known is False
