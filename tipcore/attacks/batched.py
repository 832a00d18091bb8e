"""Several attacks of one recipe, optimised together: the side-by-side comparison of N defended updates.

Each problem keeps its own target, matcher, labels, start, optimiser state, restarts and result, exactly
as if run alone (each gets its own generator with the same seed); only the expensive part is shared: one
batched closure computes every problem's dummy gradient at once on a K-fold replicated model (grouped
convolutions, ``tipcore.attacks.replicate``), and one vector-Jacobian product gives every image's gradient. L-BFGS problems advance in
lockstep through ``FlatLBFGS.step_requests``; Adam problems share one elementwise Adam (so the moments of
each image's block are its own). Problems that finish early are carried along without effect.

Numbers match separate runs up to float rounding of the batched kernels (which L-BFGS, a chaotic
optimiser, can amplify over hundreds of steps); ``bench/batched_comparison.py`` measures the speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Sequence

import numpy as np
import torch
from torch import nn

from tipcore.attacks import matching
from tipcore.attacks.base import AttackResult, Clock, DivergenceGuard, MatchingProblem, resolve_objective, to_images
from tipcore.attacks.lbfgs import FlatLBFGS
from tipcore.attacks.replicate import Replicated
from tipcore.attacks.template import GradientInversion, Recipe, SignedAdamOptimiser, choose_labels, total_variation
from tipcore.fl import ServerView, SharedUpdate
from tipcore.progress import Event, StopHook, never_stop


@dataclass(frozen=True)
class BatchSnapshot:
    step: int  # the furthest step any problem has reached
    losses: tuple[float, ...]
    images: np.ndarray  # (N, H, W, 3): each problem's current first image
    elapsed_s: float
    eta_s: float


class _Problem:
    """One defended update: its target, matcher, labels and optimisation state."""

    def __init__(self, recipe: Recipe, view: ServerView, update: SharedUpdate, generator: torch.Generator) -> None:
        self.problem = MatchingProblem(view, update, objective=resolve_objective(recipe.objective, update))
        self.generator = generator
        self.matcher = matching.fit(recipe.match, self.problem.model, dict(zip(self.problem.names, self.problem.targets)))
        self.targets = [self.matcher.apply(n, t) for n, t in zip(self.problem.names, self.problem.targets)]
        self.target_norm = torch.sqrt(sum((t * t).sum() for t in self.targets))
        self.labels = choose_labels(recipe.labels, self.problem, view, update)
        self.guard = DivergenceGuard(recipe.explode_factor)
        self.step, self.restarts, self.evaluations, self.loss = 0, 0, 0, float("nan")
        self.finished, self.diverged = False, False
        self.history: list = []


class BatchedComparison:
    """Run ``attack`` (a template configuration) against several updates of the same model and image shape."""

    def __init__(self, attack: GradientInversion) -> None:
        self.recipe = attack.recipe()
        if self.recipe.labels == "soft":
            raise ValueError("batched comparison needs a fixed label per problem (iDLG or IG), not DLG's soft label")
        if self.recipe.trials != 1:
            raise ValueError("batched comparison runs one trial per problem")

    def reconstruct(self, view: ServerView, updates: Sequence[SharedUpdate], *,
                    generators: Sequence[torch.Generator], should_stop: StopHook = never_stop,
                    report_every: int = 10) -> Generator[Event, None, list[AttackResult]]:
        recipe = self.recipe
        if len(updates) != len(generators) or not updates:
            raise ValueError("give one generator per update, and at least one update")
        problems = [_Problem(recipe, view, u, g) for u, g in zip(updates, generators)]
        first = problems[0].problem
        shape, device = first.shape, first.device
        if any(p.problem.shape != shape for p in problems):
            raise ValueError("every update of a batched comparison must come from the same batch size")
        protocol = [(p.problem.mode, p.problem.clip, p.problem.objective, p.problem.steps, p.problem.lr) for p in problems]
        if any(proto != protocol[0] for proto in protocol):
            raise ValueError("every update of a batched comparison must come from the same protocol "
                             "(mode, clip, steps, lr) and be attacked with the same objective")
        gradients = _batched_gradients(problems)
        n = len(problems)
        nx = int(np.prod(shape))
        z = torch.stack([self._start(p, nx) for p in problems])  # [N, nx]
        clock = Clock(recipe.iterations)
        optimisers = self._optimisers(z, n)
        stopped = False

        names = first.names
        # Matchers are linear: per tensor, a per-problem channel scale and/or the same low-pass for all.
        scales = {}
        for name in names:
            if any(name in p.matcher.channel_scales for p in problems):
                rows = [p.matcher.channel_scales.get(name) for p in problems]
                c_out = next(r for r in rows if r is not None).numel()
                scales[name] = torch.stack([torch.ones(c_out) if r is None else r for r in rows]).to(device)
        lowpass = problems[0].matcher.lowpass_cutoff

        def match(name: str, t: torch.Tensor) -> torch.Tensor:  # t: [N, *shape]
            if lowpass is not None and t.ndim == 5 and t.shape[-1] * t.shape[-2] > 1:
                t = t - matching.highpass(t, lowpass)
            if name in scales:
                t = t * scales[name].view(n, -1, *([1] * (t.ndim - 2)))
            return t

        targets = [torch.stack([p.targets[i] for p in problems]) for i in range(len(names))]  # matched, [N, ...]
        target_norms = torch.stack([p.target_norm for p in problems])

        def closure(zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            zs = zs.detach().requires_grad_(True)
            x = zs.view(n, *shape)
            # No backend switch here: the replicated model's grouped convolutions are fast in oneDNN and
            # several times slower in PyTorch's native kernels (the opposite of a small single model).
            dummy = [match(name, g) for name, g in zip(names, gradients(x))]
            loss, seeds = _distances(recipe.distance, dummy, targets, target_norms)
            (grad_z,) = torch.autograd.grad(dummy, [zs], grad_outputs=seeds)
            if recipe.tv > 0:
                tv = torch.stack([total_variation(x[k]) for k in range(n)])
                grad_z = grad_z + recipe.tv * torch.autograd.grad(tv.sum(), [zs])[0]
                loss = loss + recipe.tv * tv.detach()
            return loss.detach(), grad_z

        while not all(p.finished for p in problems):
            if should_stop():
                stopped = True
                break
            losses = optimisers.step(closure, [not p.finished for p in problems])
            for k, p in enumerate(problems):
                if p.finished:
                    continue
                p.loss, used = losses[k]
                p.evaluations += used
                p.step += 1
                if p.guard.diverged(p.loss) or not torch.isfinite(z[k]).all():
                    if p.restarts < recipe.max_restarts:
                        p.restarts += 1
                        p.step, p.loss = 0, float("nan")
                        p.guard.reset()
                        with torch.no_grad():
                            z[k] = self._start(p, nx)
                        optimisers.reset(k)
                        continue
                    p.diverged, p.finished = True, True
                    continue
                if p.step >= recipe.iterations:
                    p.finished = True
            step = max(p.step for p in problems)
            if step % report_every == 0 or all(p.finished for p in problems):
                images = to_images(z.detach().view(n, *shape)[:, 0])
                snap = BatchSnapshot(step, tuple(p.loss for p in problems), images, clock.elapsed(), clock.eta(step))
                yield Event("attack", step, recipe.iterations, "step", f"{n} updates at once",
                            snap.elapsed_s, snap.eta_s, payload=snap)

        results = []
        for k, p in enumerate(problems):
            x = torch.nan_to_num(z[k].detach().view(shape), nan=0.5)
            results.append(AttackResult(
                images=to_images(x), labels=tuple(int(v) for v in p.labels.tolist()), iterations=p.step,
                restarts=p.restarts, seconds=clock.elapsed(), stopped=stopped, final_loss=p.loss,
                diverged=p.diverged, evaluations=p.evaluations, match=recipe.match.match,
                flagged=dict(p.matcher.flagged)))
        return results

    def _start(self, p: _Problem, nx: int) -> torch.Tensor:
        x0 = torch.randn(p.problem.shape, generator=p.generator)
        if self.recipe.init == "centred":
            x0 = 0.5 + 0.25 * x0
        return x0.flatten().to(p.problem.device)

    def _optimisers(self, z: torch.Tensor, n: int) -> "_LockstepLBFGS | _SharedAdam":
        if self.recipe.optimiser == "lbfgs":
            return _LockstepLBFGS(z, self.recipe)
        return _SharedAdam(z, self.recipe)


class _LockstepLBFGS:
    """One FlatLBFGS per problem (each on its own row of z), advanced together through one closure."""

    def __init__(self, z: torch.Tensor, recipe: Recipe) -> None:
        self.z, self.recipe = z, recipe
        self.opts = [self._new(k) for k in range(z.shape[0])]

    def _new(self, k: int) -> FlatLBFGS:
        r = self.recipe
        return FlatLBFGS(self.z[k], lr=r.lr, max_iter=r.evals_per_step, history_size=r.history_size)

    def reset(self, k: int) -> None:
        self.opts[k] = self._new(k)

    def step(self, closure, active: list[bool]) -> list[tuple[float, int]]:
        runs = {k: self.opts[k].step_requests() for k in range(len(active)) if active[k]}
        for run in runs.values():
            next(run)
        out: dict[int, tuple[float, int]] = {}
        while runs:
            loss, grad_z = closure(self.z)
            for k in list(runs):
                try:
                    runs[k].send((loss[k], grad_z[k]))
                except StopIteration as done:
                    out[k] = done.value
                    del runs[k]
        return [out.get(k, (float("nan"), 0)) for k in range(len(active))]


class _SharedAdam(SignedAdamOptimiser):
    """Adam is elementwise: one Adam over all rows of z [N, image] is N independent Adams (rows never mix)."""

    def reset(self, k: int) -> None:
        """A restarted problem forgets its moments (the shared step count, and so Adam's bias correction
        and the learning-rate schedule, go on: a restart here is not bit-identical to a separate run's)."""
        state = self.opt.state.get(self.z)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key][k].zero_()
        self._box()

    def step(self, closure, active: list[bool]) -> list[tuple[float, int]]:  # type: ignore[override]
        loss, grad_z = closure(self.z)
        grad_z = grad_z.sign() if self.recipe.signed else grad_z
        grad_z[~torch.tensor(active)] = 0  # finished problems stay where they are
        self.z.grad = grad_z
        frozen = self.z.detach()[~torch.tensor(active)].clone()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self._box()
        with torch.no_grad():
            self.z[~torch.tensor(active)] = frozen
        return [(float(loss[k]), 1) for k in range(len(active))]


def _distances(kind: str, dummy: list[torch.Tensor], target: list[torch.Tensor],
               target_norm: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per problem (first axis), the distance of ``template.distance_and_seed`` and its derivative."""
    with torch.no_grad():
        def per_problem(ts: list[torch.Tensor]) -> torch.Tensor:
            return sum(t.flatten(1).sum(1) for t in ts)

        def widen(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return v.view(-1, *([1] * (like.ndim - 1)))

        if kind == "l2":
            diff = [d - t for d, t in zip(dummy, target)]
            return per_problem([d * d for d in diff]), [2 * d for d in diff]
        dot = per_problem([d * t for d, t in zip(dummy, target)])
        norm = torch.sqrt(per_problem([d * d for d in dummy])).clamp_min(1e-12)
        denom = norm * target_norm.clamp_min(1e-12)
        seeds = [-t / widen(denom, t) + widen(dot / (norm * norm * denom), d) * d for d, t in zip(dummy, target)]
        return 1 - dot / denom, seeds


def _batched_gradients(problems: list[_Problem]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """x [N, B, C, H, W] -> per parameter a tensor [N, *shape]: problem k's (clipped) dummy gradient at its
    own model point (the same θ_g in FedSGD; θ_g − U_k in FedAvg's one-step stand-in) with its own labels,
    from one K-fold replicated model (``tipcore.attacks.replicate``). With the unrolled objective, every
    copy starts at θ_g and takes the client's T clipped SGD steps on its own dummy batch, in the graph, and
    the mean step gradient (θ_g − θ_T) / (T · lr) is returned, as ``MatchingProblem`` does alone."""
    first = problems[0].problem
    points = [{n: p for n, p in q.problem.model.named_parameters()} for q in problems]
    replica = Replicated(first.model, points)
    index = [replica.names.index(n) for n in first.names]
    params = [replica.params[i] for i in index]
    labels = torch.stack([p.labels for p in problems])  # [N, B]
    clip = first.clip

    def step_gradients(x: torch.Tensor, point: list[torch.Tensor] | None) -> list[torch.Tensor]:
        current = params if point is None else point
        logits = replica.forward(x, None if point is None else dict(zip(first.names, point)))  # [N, B, classes]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        # Each problem's loss is the mean over its own batch; the copies share no parameter, so the
        # gradient of the sum gives every copy exactly its own problem's gradient.
        total = loss.view(labels.shape).mean(dim=1).sum()
        flat = torch.autograd.grad(total, current, create_graph=True)
        grads = [replica.per_problem(n, g) for n, g in zip(first.names, flat)]
        if clip is not None:  # the protocol's global-norm clipping, per problem
            norm = torch.sqrt(sum((t * t).flatten(1).sum(1) for t in grads))
            factor = torch.clamp(clip / (norm + 1e-6), max=1.0)
            grads = [t * factor.view(-1, *([1] * (t.ndim - 1))) for t in grads]
        return grads

    def unrolled(x: torch.Tensor) -> list[torch.Tensor]:
        point: list[torch.Tensor] = list(params)
        summed: list[torch.Tensor] | None = None
        for _ in range(first.steps):
            grads = step_gradients(x, point)
            summed = grads if summed is None else [s + g for s, g in zip(summed, grads)]
            point = [p - first.lr * g.reshape(p.shape) for p, g in zip(point, grads)]
        assert summed is not None
        return [s / first.steps for s in summed]

    if first.objective == "unrolled":
        return unrolled
    return lambda x: step_gradients(x, None)
