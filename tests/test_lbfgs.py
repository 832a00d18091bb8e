"""FlatLBFGS must take exactly the steps torch.optim.LBFGS(line_search_fn=None) takes."""

from __future__ import annotations

import pytest
import torch

from tipcore.attacks.speed.lbfgs import FlatLBFGS
from tipcore.common.seeding import generator

DIM = 400


def _problem(seed: int = 0):
    """A smooth, well-conditioned, non-quadratic objective in float64 and its starting point."""
    gen = generator(seed, "lbfgs-test")
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen, dtype=torch.float64))
    eig = torch.linspace(1.0, 100.0, DIM, dtype=torch.float64)  # condition number 100
    a = (q * eig) @ q.T
    b = torch.randn(DIM, generator=gen, dtype=torch.float64)
    c = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64) / DIM**0.5
    z0 = torch.randn(DIM, generator=gen, dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * z @ a @ z - b @ z + torch.log(torch.cosh(c @ z)).sum() + 0.05 * (z**4).sum()

    return f, z0


def _torch_run(f, z0, steps, **opts):
    param = z0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([param], line_search_fn=None, **opts)
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = f(param)
        loss.backward()
        return loss

    iterates, losses, evals = [], [], []
    for _ in range(steps):
        before = calls[0]
        losses.append(float(opt.step(closure).detach()))
        evals.append(calls[0] - before)
        iterates.append(param.detach().clone())
    return iterates, losses, evals


def _flat_run(f, z0, steps, **opts):
    z = z0.clone()
    opt = FlatLBFGS(z, **opts)

    def loss_and_grad(v: torch.Tensor):
        v = v.detach().requires_grad_(True)
        loss = f(v)
        (g,) = torch.autograd.grad(loss, v)
        return loss.detach(), g

    iterates, losses, evals = [], [], []
    for _ in range(steps):
        loss, used = opt.step(loss_and_grad)
        losses.append(loss)
        evals.append(used)
        iterates.append(z.clone())
    return iterates, losses, evals


@pytest.mark.parametrize("history_size", [1, 3, 10, 100])
@pytest.mark.parametrize("max_iter, lr", [(20, 1.0), (4, 1.0), (7, 0.5), (1, 1.0)])
def test_flat_lbfgs_matches_torch_lbfgs(history_size, max_iter, lr):
    f, z0 = _problem(history_size)
    opts = dict(lr=lr, max_iter=max_iter, history_size=history_size)
    ref_z, ref_loss, ref_evals = _torch_run(f, z0, 15, **opts)
    got_z, got_loss, got_evals = _flat_run(f, z0, 15, **opts)
    for step, (a, b) in enumerate(zip(ref_z, got_z)):
        rel = float((a - b).norm() / a.norm().clamp_min(1e-300))
        assert rel <= 1e-8, f"step {step}: iterates differ by {rel:.2e} (relative)"
    for a, b in zip(ref_loss, got_loss):
        assert b == pytest.approx(a, rel=1e-8, abs=1e-12)
    assert got_evals == ref_evals
    assert ref_loss[-1] < ref_loss[0]  # the run actually optimised


def test_flat_lbfgs_keeps_a_window_of_history_pairs():
    """history_size small enough that the pair buffer slides several times within the run."""
    f, z0 = _problem(7)
    opts = dict(lr=1.0, max_iter=20, history_size=2)
    ref_z, _, _ = _torch_run(f, z0, 10, **opts)
    got_z, _, _ = _flat_run(f, z0, 10, **opts)
    assert float((ref_z[-1] - got_z[-1]).norm() / ref_z[-1].norm()) <= 1e-8


def test_flat_lbfgs_stops_at_a_stationary_point():
    f, _ = _problem(0)
    z = torch.zeros(DIM, dtype=torch.float64)

    def zero_grad(v):
        return torch.tensor(0.0, dtype=torch.float64), torch.zeros_like(v)

    opt = FlatLBFGS(z)
    loss, used = opt.step(zero_grad)
    assert used == 1 and loss == 0.0 and torch.count_nonzero(z) == 0
