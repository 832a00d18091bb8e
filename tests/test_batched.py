"""Batched comparison: N defended updates attacked as one optimisation give what N separate attacks give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipcore.pipeline import experiment
from tipcore.federation import models
from tipcore.attacks.speed.replicate import Replicated
from tipcore.federation.fl import RoundConfig
from tipcore.common.progress import drive
from tipcore.common.seeding import generator

DEFENSES = (("none", {}), ("tip", {}), ("dp_paper", {"sigma": 1e-3}), ("prune", {"ratio": 0.7}))


def configs(attack: str, iterations: int, **round_args) -> list[experiment.RunSpec]:
    rc = RoundConfig(clip=5.0, **round_args)
    return [experiment.RunSpec(seed=0, model="lenet", image_ids=("cifar10-00",), round=rc, defense=d,
                                        defense_cfg=o, attack=attack, attack_cfg={"iterations": iterations},
                                        device="cpu") for d, o in DEFENSES]


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18"])
def test_replicated_model_gives_each_copy_its_own_gradient(name):
    """K copies with different parameters (as FedAvg's θ_g − U_k) and different inputs and labels."""
    torch.manual_seed(0)
    base = [models.build(name, seed=s).eval() for s in range(3)]
    points = [dict(m.named_parameters()) for m in base]
    replica = Replicated(base[0], points)
    x = torch.rand((3, 1, 3, 32, 32), generator=generator(0, "test-images"))
    y = torch.tensor([[1], [4], [7]])
    logits = replica.forward(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    grads = torch.autograd.grad(loss, replica.params)
    for k, model in enumerate(base):
        single = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[k]), y[k]), list(model.parameters()))
        got = [replica.per_problem(n, g)[k] for n, g in zip(replica.names, grads)]
        # Norm-relative errors: grouped and plain float32 convolutions round differently, and in a deep ReLU
        # network a pre-activation that rounds to the other side of 0 switches a unit's gradient path on or
        # off. Measured: 5e-7 (LeNet, ConvNet) and 2.5e-4 (ResNet-18) over the whole gradient, up to 2.3e-3 on
        # one ResNet-18 tensor, where the single model agrees with a float64 reference to 6e-7. A copy
        # that computed another copy's gradient (or a mixed-up parameter) is off by O(1).
        whole = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(got, single)) / sum((b * b).sum() for b in single))
        assert whole < 1e-3, (name, k, float(whole))
        for n, a, b in zip(replica.names, got, single):
            assert (a - b).norm() <= 1e-2 * b.norm() + 1e-12, (name, k, n, float((a - b).norm() / b.norm()))


def test_batched_inverting_gradients_equals_separate_runs():
    cfgs = configs("ig", 12)
    assert experiment.comparable(cfgs)
    separate = [experiment.run(c) for c in cfgs]
    batched = drive(experiment.stream_comparison(cfgs))
    for a, b in zip(separate, batched):
        assert np.abs(a.result.images - b.result.images).max() < 1e-4
        assert a.result.labels == b.result.labels and a.prepared.config == b.prepared.config


@pytest.mark.parametrize("attack", ["idlg", "idlg_drop"])
def test_batched_lbfgs_follows_the_separate_runs(attack):
    """L-BFGS in lockstep: each problem keeps its own optimiser; only float rounding of the batched kernels
    differs, which a few steps do not amplify."""
    cfgs = configs(attack, 4)
    separate = [experiment.run(c) for c in cfgs]
    batched = drive(experiment.stream_comparison(cfgs))
    for a, b in zip(separate, batched):
        assert abs(a.scores.psnr - b.scores.psnr) < 0.5, (a.config.defense, a.scores.psnr, b.scores.psnr)
        assert a.result.flagged == b.result.flagged and a.result.iterations == b.result.iterations


def test_runs_that_differ_in_more_than_the_defense_are_not_batched():
    cfgs = configs("idlg", 2)
    assert not experiment.comparable([cfgs[0], experiment.variant(cfgs[1], seed=1)])
    assert not experiment.comparable(configs("dlg", 2))  # a soft label per problem: run one after another
    records = drive(experiment.stream_comparison(configs("dlg", 2)[:2]))
    assert [r.config.defense for r in records] == ["none", "tip"]


def test_batched_unrolled_fedavg_equals_separate_runs():
    """FedAvg with 3 local steps: each copy replays the client's steps from θ_g, batched as alone."""
    cfgs = configs("ig", 3, mode="fedavg", local_steps=3, lr=0.1)[:3]
    assert experiment.comparable(cfgs)
    separate = [experiment.run(c) for c in cfgs]
    batched = drive(experiment.stream_comparison(cfgs))
    for a, b in zip(separate, batched):
        assert np.abs(a.result.images - b.result.images).max() < 1e-3, a.config.defense
        assert a.result.final_loss == pytest.approx(b.result.final_loss, rel=1e-3, abs=1e-6)


def test_batched_unrolled_gradients_are_each_problems_own():
    from tipcore import attacks
    from tipcore.attacks.speed.batched import _batched_gradients
    from tipcore.attacks.template import Attacked

    prepared = [experiment.prepare(c) for c in configs("idlg", 1, mode="fedavg", local_steps=3, lr=0.1)[:3]]
    recipe = attacks.create("idlg").recipe()
    problems = [Attacked(recipe, p.view, p.defended, generator(0, "attack")) for p in prepared]
    assert {p.problem.objective for p in problems} == {"unrolled"}
    x = torch.rand((3, 1, 3, 32, 32), generator=generator(0, "test-images"))
    batched = [g.detach() for g in _batched_gradients(problems)(x)[0]]
    for k, p in enumerate(problems):
        alone = [g.detach() for g in p.problem.gradients(x[k], p.labels, soft=False)]
        for name, got, want in zip(p.problem.names, batched, alone):
            assert torch.allclose(got[k], want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-9), (k, name)


def test_per_problem_clip_is_each_problems_own_clip():
    """The batched attack clips N stacked problems with the client's one clip function, each by its own norm."""
    from tipcore.federation.fl import clip_by_global_norm

    gen = generator(0, "test-clip")
    scales = torch.tensor([0.1, 3.0, 40.0])  # below, around and far above the clip norm
    grads = [torch.randn((3, *shape), generator=gen) * scales.view(-1, *([1] * len(shape)))
             for shape in ((12, 3, 5, 5), (12,), (10, 768))]
    stacked = clip_by_global_norm(grads, 5.0, per_problem=True)
    for k in range(3):
        alone = clip_by_global_norm([g[k] for g in grads], 5.0)
        for a, b in zip(stacked, alone):
            assert torch.allclose(a[k], b, rtol=1e-6, atol=0)
    norms = torch.sqrt(sum((g * g).flatten(1).sum(1) for g in stacked))
    assert norms[0] < 5.0 and torch.allclose(norms[1:], torch.tensor([5.0, 5.0]), rtol=1e-5)


def test_lockstep_lbfgs_evaluates_only_the_problems_still_in_their_step():
    """A problem whose step ends early (here: zero gradient, converged at once) leaves the batch, a finished
    one is never evaluated, and the others take exactly the steps they take alone."""
    from tipcore import attacks
    from tipcore.attacks.engine import LockstepLBFGS
    from tipcore.attacks.speed.lbfgs import FlatLBFGS

    recipe = attacks.create("idlg", {"iterations": 2}).recipe()
    centre = torch.tensor([3.0, -1.0, 2.0])

    def loss_and_grad(k: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 1:  # flat: L-BFGS stops after its first evaluation
            return torch.tensor(0.0), torch.zeros_like(z)
        scale = torch.tensor([1.0, 4.0, 9.0]) * (k + 1)
        return (scale * (z - centre) ** 2).sum(), 2 * scale * (z - centre)

    calls: list[tuple[int, ...]] = []

    def closure(zs: torch.Tensor, rows: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(rows)
        out = [loss_and_grad(k, z) for k, z in zip(rows, zs)]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    z = torch.zeros((4, 3))
    group = LockstepLBFGS(recipe, closure, z)
    first = group.step([True, True, False, True])
    assert calls[0] == (0, 1, 3) and set(calls[1:]) <= {(0, 3), (0,), (3,)} and len(calls) > 2, calls
    assert first[1] == (0.0, 1) and np.isnan(first[2][0]) and first[2][1] == 0
    assert sum(len(r) for r in calls) == sum(used for _, used in first)  # no evaluation is thrown away
    made = len(calls)
    second = group.step([True, False, False, True])
    assert calls[made] == (0, 3) and all(1 not in rows and 2 not in rows for rows in calls[made:]), calls
    for k in (0, 3):  # the same two steps alone
        alone = FlatLBFGS(torch.zeros(3), lr=recipe.lr, max_iter=recipe.evals_per_step, history_size=recipe.history_size)
        assert [alone.step(lambda v: loss_and_grad(k, v)) for _ in range(2)] == [first[k], second[k]]
        assert torch.equal(alone.z, z[k])


def test_shared_adam_evaluates_only_active_slots_and_leaves_finished_ones_where_they_are():
    from tipcore import attacks
    from tipcore.attacks.engine import SharedAdam

    recipe = attacks.create("ig", {"iterations": 4}).recipe()
    calls: list[tuple[int, ...]] = []

    def closure(zs: torch.Tensor, rows: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(rows)
        return (zs ** 2).sum(1), 2 * zs

    z = torch.full((3, 5), 0.7)
    group = SharedAdam(recipe, closure, z)
    group.step([True, True, True])
    before = z.detach().clone()
    losses = group.step([True, False, True])
    assert calls == [(0, 1, 2), (0, 2)]
    assert torch.equal(z.detach()[1], before[1]) and not torch.equal(z.detach()[0], before[0])
    assert losses[1][1] == 0 and losses[0] == (pytest.approx(float((before[0] ** 2).sum())), 1)


class _EveryRowLockstep:
    """The lockstep of before issue #18: every closure call evaluated all N problems."""

    def __new__(cls, recipe, closure, z):
        from tipcore.attacks.engine import LockstepLBFGS

        everyone = tuple(range(z.shape[0]))

        def all_rows(zs: torch.Tensor, rows: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            loss, grad_z = closure(z.detach().clone(), everyone)
            return loss[list(rows)], grad_z[list(rows)]

        return LockstepLBFGS(recipe, all_rows, z)


def test_batched_lbfgs_evaluates_each_problem_as_often_as_it_asks_and_matches_the_old_lockstep(monkeypatch):
    """Against TIP, iDLG's L-BFGS steps end after fewer evaluations than against the other defenses: those
    evaluations are no longer made, and every problem's result is the old every-row lockstep's."""
    from tipcore import attacks
    from tipcore.attacks.speed import batched
    from tipcore.pipeline import metrics

    cfgs = configs("idlg", 4)
    prepared = [experiment.prepare(c) for c in cfgs]

    def run() -> tuple[list, batched.SubsetClosures]:
        comparison = batched.BatchedComparison(attacks.create("idlg", {"iterations": 4}))
        results = drive(comparison.reconstruct(prepared[0].view, [p.defended for p in prepared],
                                               generators=[generator(c.seed, "attack") for c in cfgs]))
        assert comparison.evaluated is not None
        return results, comparison.evaluated

    results, evaluated = run()
    assert evaluated.rows_evaluated == sum(r.evaluations for r in results)
    assert sum(c for rows, c in evaluated.calls_by_rows.items() if rows < len(cfgs)) > 0, evaluated.calls_by_rows
    monkeypatch.setattr(batched, "LockstepLBFGS", _EveryRowLockstep)
    old, old_evaluated = run()
    calls = sum(old_evaluated.calls_by_rows.values())
    assert old_evaluated.calls_by_rows == {len(cfgs): calls}
    assert evaluated.rows_evaluated < old_evaluated.rows_evaluated
    for p, new, was in zip(prepared, results, old):
        psnr_new = metrics.score(p.images, new.images, p.labels, new.labels).psnr
        psnr_old = metrics.score(p.images, was.images, p.labels, was.labels).psnr
        assert abs(psnr_new - psnr_old) < 0.5, (p.config.defense, psnr_new, psnr_old)
        assert new.iterations == was.iterations and new.labels == was.labels
