"""tipcore.studies.flsim: one client's round (mini-batches, train-mode BatchNorm, the defense's context) and the
server's aggregation of parameters and BatchNorm buffers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tipcore import defenses
from tipcore.federation import data, models
from tipcore.studies import flsim
from tipcore.common.seeding import generator


class TinyBN(nn.Module):
    """The smallest model with BatchNorm: one conv, its BN, a pooled linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def init_weights(self, gen: torch.Generator) -> None:
        models._default_init(self, gen)


@pytest.fixture
def tiny_bn(monkeypatch):
    monkeypatch.setitem(models.MODELS, "tinybn", models.ModelSpec("tinybn", TinyBN, "test model with BatchNorm", 1.0))
    return "tinybn"


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load_digits("train")
    return x[:n], y[:n]


def test_dp_in_the_simulator_adds_the_noise_it_reports():
    """A shard of 80 examples in batches of 32 (the last one short): DP-SGD must privatise those three
    steps, each with noise of std sigma_per_step (it once averaged over the whole shard: 2.5x too little)."""
    cfg = flsim.FLConfig(model="convnet", batch_size=32, lr=0.05, clip=5.0, defense="dp")
    model = models.build("convnet", seed=0).eval()
    xs, ys = _digits(80)
    batches = flsim.epoch_batches(80, cfg, generator(0, "fl-batches"))
    assert [len(b) for b in batches] == [32, 32, 16]
    runs = {z: flsim.client_round(model, xs, ys, batches, cfg,
                                  defenses.create("dp", {"noise_multiplier": z, "clip": 5.0}), generator(0, "defense"))
            for z in (0.0, 1.0)}
    clean, noisy = runs[0.0].update.tensors, runs[1.0].update.tensors
    added = torch.cat([(noisy[n] - clean[n]).flatten() for n in clean])  # the same draws, without and with noise
    measured_per_step = float(added.std()) / math.sqrt(len(batches))
    reported = runs[1.0].diagnostics.summary["sigma_per_step"]
    assert reported == pytest.approx(1.0 * 5.0 / 32 * 0.05)
    assert measured_per_step == pytest.approx(reported, rel=0.03)


def test_dp_refuses_a_schedule_that_does_not_match_the_step_count():
    cfg = flsim.FLConfig(model="lenet", batch_size=4, lr=0.05, clip=5.0, defense="dp")
    model = models.build("lenet", seed=0).eval()
    xs, ys = _digits(8)
    batches = flsim.epoch_batches(8, cfg, generator(0, "fl-batches"))
    defense = defenses.create("dp", {"noise_multiplier": 1.0})
    update = flsim.client_round(model, xs, ys, batches, cfg, defense, generator(0, "defense")).update
    assert update.local_steps == 2
    from tipcore.federation.fl import ClientContext, RoundConfig
    ctx = ClientContext(model, model, xs, ys, RoundConfig(mode="fedavg", batch_size=4, local_steps=3, lr=0.05),
                        generator(0, "defense"), batches=batches)
    with pytest.raises(ValueError, match="2 mini-batches for 3 local steps"):
        defense.protect(update, ctx)


def test_batchnorm_trains_in_train_mode_and_the_server_averages_its_buffers(tiny_bn):
    cfg = flsim.FLConfig(model=tiny_bn, batch_size=8, lr=0.1, clip=5.0, defense="none")
    global_model = models.build(tiny_bn, seed=0).eval()
    start = {n: b.clone() for n, b in global_model.named_buffers()}
    params = {n: p.detach().clone() for n, p in global_model.named_parameters()}
    x, y = _digits(40)
    shards = [(x[:16], y[:16]), (x[16:40], y[16:40])]  # 16 and 24 examples: unequal weights
    gen = generator(0, "fl-batches")
    clients = [flsim.client_round(global_model, xs, ys, flsim.epoch_batches(len(xs), cfg, gen), cfg,
                                  defenses.create("none"), generator(0, "defense")) for xs, ys in shards]
    for client in clients:  # each client's running statistics moved off the initial (0, 1)
        assert not torch.allclose(client.buffers["bn.running_mean"], start["bn.running_mean"])
        assert not torch.allclose(client.buffers["bn.running_var"], start["bn.running_var"])
    assert [int(c.buffers["bn.num_batches_tracked"]) for c in clients] == [2, 3]
    assert not global_model.training and all(torch.equal(b, start[n]) for n, b in global_model.named_buffers())

    with pytest.raises(ValueError, match="cover 16 examples, not the 40"):
        flsim.aggregate(copy.deepcopy(global_model), iter(clients[:1]), 40)
    flsim.aggregate(global_model, iter(clients), 40)
    buffers = dict(global_model.named_buffers())
    w = (16 / 40, 24 / 40)
    for name in ("bn.running_mean", "bn.running_var"):
        expected = w[0] * clients[0].buffers[name] + w[1] * clients[1].buffers[name]
        assert torch.allclose(buffers[name], expected, atol=1e-6), name
        assert not torch.allclose(buffers[name], start[name]), f"{name} never left its initial value"
    assert int(buffers["bn.num_batches_tracked"]) == round(w[0] * 2 + w[1] * 3)
    for n, p in global_model.named_parameters():
        expected = params[n] - (w[0] * clients[0].update.tensors[n] + w[1] * clients[1].update.tensors[n])
        assert torch.allclose(p, expected, atol=1e-6), n


def test_client_training_uses_batch_statistics(tiny_bn):
    """Train mode normalises each mini-batch with its own statistics: the update differs from an eval-mode
    client's (which would normalise with the global running statistics)."""
    cfg = flsim.FLConfig(model=tiny_bn, batch_size=8, lr=0.1, clip=5.0, defense="none")
    global_model = models.build(tiny_bn, seed=0).eval()
    xs, ys = _digits(8)
    batches = flsim.epoch_batches(8, cfg, generator(0, "fl-batches"))
    trained = flsim.client_round(global_model, xs, ys, batches, cfg, defenses.create("none"), generator(0, "defense"))
    local = models.build(tiny_bn, seed=0).eval()
    frozen_stats_grad = torch.autograd.grad(nn.functional.cross_entropy(local(xs), ys), list(local.parameters()))
    local.train()
    batch_stats_grad = torch.autograd.grad(nn.functional.cross_entropy(local(xs), ys), list(local.parameters()))
    names = [n for n, _ in local.named_parameters()]
    conv = names.index("conv.weight")
    sent = trained.update.tensors["conv.weight"] / cfg.lr  # one step, unclipped at this size: the gradient
    assert torch.allclose(sent, batch_stats_grad[conv], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(sent, frozen_stats_grad[conv], rtol=1e-2, atol=1e-4)
