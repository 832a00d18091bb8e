"""Several attacks of one recipe, optimised together: the side-by-side comparison of N defended updates.

Each problem keeps its own target, matcher, labels, start, optimiser state, restarts and result, exactly
as if run alone (each gets its own generator with the same seed); only the expensive part is shared: one
batched closure computes every problem's dummy gradient at once on a K-fold replicated model (grouped
convolutions, ``tipcore.attacks.speed.replicate``), and one vector-Jacobian product gives every image's gradient.
The loop (restarts, guard, snapshots, stop) is the single attack's (``tipcore.attacks.engine``) on N slots:
L-BFGS problems advance in lockstep through ``FlatLBFGS.step_requests``; Adam problems share one
elementwise Adam (so the moments of each image's block are its own). Each closure call evaluates only
the problems that need an evaluation (``SubsetClosures``): an L-BFGS problem whose step ends after fewer
evaluations than the others', or one that finished (its last step done while a restarted one goes on, or
diverged past its last restart), leaves the batch, and the rest are evaluated on a replica of just their
own copies.

Numbers match separate runs up to float rounding of the batched kernels (which L-BFGS, a chaotic
optimiser, can amplify over hundreds of steps); ``bench/batched_comparison.py`` measures the speed.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from typing import Callable, Generator, Sequence

import torch
from torch import nn

from tipcore.attacks.base import AttackResult, BatchSnapshot  # noqa: F401  (BatchSnapshot: the progress payload)
from tipcore.attacks.engine import (
    Clock, DivergenceGuard, LockstepLBFGS, SharedAdam, Slot, distances_per_problem, feature_coefficient,
    feature_distance_and_seed, optimise, start_vector, to_images, total_variation,
)
from tipcore.attacks.fitted import stack_maps
from tipcore.attacks.recipe import GradientInversion, Recipe
from tipcore.attacks.speed.replicate import Replicated
from tipcore.attacks.template import Attacked, attack_closure
from tipcore.federation.fl import ServerView, SharedUpdate, clip_by_global_norm
from tipcore.common.progress import Event, StopHook, never_stop

NATIVE_MAX_FOLDS = 3  # replicas of at most this many copies of a small model use the native kernels


class BatchedComparison:
    """Run ``attack`` (a template configuration) against several updates of the same model and image shape."""

    def __init__(self, attack: GradientInversion) -> None:
        self.recipe = attack.recipe()
        if self.recipe.labels == "soft":
            raise ValueError("batched comparison needs a fixed label per problem (iDLG or IG), not DLG's soft label")
        if self.recipe.trials != 1:
            raise ValueError("batched comparison runs one trial per problem")
        self.evaluated: SubsetClosures | None = None  # the last reconstruct's closure and its call counts

    def reconstruct(self, view: ServerView, updates: Sequence[SharedUpdate], *,
                    generators: Sequence[torch.Generator], should_stop: StopHook = never_stop,
                    report_every: int = 10) -> Generator[Event, None, list[AttackResult]]:
        recipe = self.recipe
        if len(updates) != len(generators) or not updates:
            raise ValueError("give one generator per update, and at least one update")
        problems = [Attacked(recipe, view, u, g) for u, g in zip(updates, generators)]
        first = problems[0].problem
        shape, device = first.shape, first.device
        if any(p.problem.shape != shape for p in problems):
            raise ValueError("every update of a batched comparison must come from the same batch size")
        protocol = [(p.problem.mode, p.problem.clip, p.problem.objective, p.problem.steps, p.problem.lr) for p in problems]
        if any(proto != protocol[0] for proto in protocol):
            raise ValueError("every update of a batched comparison must come from the same protocol "
                             "(mode, clip, steps, lr) and be attacked with the same objective")
        def start(p: Attacked) -> Callable[[], torch.Tensor]:
            return lambda: start_vector(recipe, shape, view.num_classes, False, p.generator, device)

        slots = [Slot(start(p), DivergenceGuard(recipe.explode_factor)) for p in problems]
        z = torch.stack([s.start() for s in slots])  # [N, nx]
        clock = Clock(recipe.iterations)
        closure = self.evaluated = SubsetClosures(recipe, problems, view.num_classes)
        group = LockstepLBFGS(recipe, closure, z) if recipe.optimiser == "lbfgs" else SharedAdam(recipe, closure, z)
        stopped = yield from optimise(slots, group, recipe, clock, should_stop=should_stop, report_every=report_every,
                                      images=lambda row: to_images(row.detach().view(shape)), batch_snapshots=True)
        results = []
        for s, p in zip(slots, problems):
            assert s.best is not None
            loss, row, steps = s.best
            results.append(AttackResult(
                images=to_images(torch.nan_to_num(row.view(shape), nan=0.5)),
                labels=tuple(int(v) for v in p.labels.tolist()), iterations=steps, restarts=s.restarts,
                seconds=clock.elapsed(), stopped=stopped, final_loss=loss, diverged=s.diverged,
                evaluations=s.evaluations, match=recipe.matcher, flagged=dict(p.fitted.flagged),
                notes=tuple(p.fitted.notes)))
        return results


def batched_closure(recipe: Recipe, problems: Sequence[Attacked]
                    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """K problems' closure on one K-fold replicated model: their variables zs [K, nx] -> losses [K] and
    gradients [K, nx], each problem's with its own target, matcher, labels and feature term."""
    first = problems[0].problem
    shape = first.shape
    k = len(problems)
    features = [p.fitted.features for p in problems]
    with_features = any(f is not None for f in features)
    gradients = _batched_gradients(list(problems), with_features)
    device = first.device
    names = first.names
    # Matchers are linear maps per tensor: each problem's, stacked along the first axis.
    maps = {name: stack_maps([p.fitted.maps.get(name) for p in problems], t.shape, device)
            for name, t in zip(names, first.targets)}

    def match(name: str, t: torch.Tensor) -> torch.Tensor:  # t: [K, *shape]
        m = maps[name]
        return t if m is None else m(t)

    targets = [torch.stack([p.targets[i] for p in problems]) for i in range(len(names))]  # matched, [K, ...]
    target_norms = torch.stack([p.target_norm for p in problems])
    if with_features:  # problems without recovered features get a zero coefficient
        width = next(f for f in features if f is not None).target.shape
        feature_targets = torch.stack([torch.zeros(width) if f is None else f.target for f in features]).to(device)
        feature_known = torch.stack([torch.zeros(width) if f is None else f.known for f in features]).to(device)
        coefficients = torch.stack([
            torch.zeros(()) if f is None else
            feature_coefficient(f.weight, f.known, f.target, recipe.distance, p.target_norm).reshape(())
            for f, p in zip(features, problems)]).to(device)

    # Kernels: a small model's replica of up to NATIVE_MAX_FOLDS copies runs faster in PyTorch's native
    # kernels, as the single problem does (problem.backend()); from 4 copies on, oneDNN's grouped
    # convolutions win (bench/batched_comparison.py, LeNet iDLG, 2 cores: 2 copies native 3.4 ms vs oneDNN
    # 4.3, 4 copies 5.2 vs 5.5, 16 copies 15.2 vs 11.3).
    backend = first.backend if k <= NATIVE_MAX_FOLDS else contextlib.nullcontext

    def closure(zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with backend():
            return evaluate(zs)

    def evaluate(zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zs = zs.detach().requires_grad_(True)
        x = zs.view(k, *shape)
        grads, phi = gradients(x)
        dummy = [match(name, g) for name, g in zip(names, grads)]
        loss, seeds = distances_per_problem(recipe.distance, dummy, targets, target_norms)
        if phi is None:
            (grad_z,) = torch.autograd.grad(dummy, [zs], grad_outputs=seeds)
        else:
            feature_loss, feature_seed = feature_distance_and_seed(phi, feature_targets, feature_known,
                                                                   coefficients)
            (grad_z,) = torch.autograd.grad(dummy + [phi], [zs], grad_outputs=list(seeds) + [feature_seed])
            loss = loss + feature_loss
        if recipe.tv > 0:
            tv = torch.stack([total_variation(x[i]) for i in range(k)])
            grad_z = grad_z + recipe.tv * torch.autograd.grad(tv.sum(), [zs])[0]
            loss = loss + recipe.tv * tv.detach()
        return loss.detach(), grad_z

    return closure


class SubsetClosures:
    """The batched closure over whichever problems still need an evaluation: (zs [R, nx], their problem
    indices) -> (losses [R], gradients [R, nx]).

    Each subset gets its own R-fold replicated model (built on first use: within an L-BFGS step the set of
    problems still evaluating only shrinks, so few distinct subsets occur; the ``kept`` most recently used
    are kept). A problem left alone is evaluated with the single attack's own closure, which is faster on a
    small model than a 1-fold replica (``bench/batched_comparison.py`` measures both).
    """

    def __init__(self, recipe: Recipe, problems: Sequence[Attacked], num_classes: int, kept: int = 16) -> None:
        if kept < 1:
            raise ValueError(f"keep at least one subset's closure, got kept={kept}")
        self.recipe, self.problems, self.num_classes, self.kept = recipe, list(problems), num_classes, kept
        self._closures: OrderedDict[tuple[int, ...], Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]
        self._closures = OrderedDict()
        self.calls_by_rows: Counter[int] = Counter()  # closure calls by how many problems they evaluated
        self._closure_for(tuple(range(len(self.problems))))  # every problem at once: checks the maps stack

    def _closure_for(self, rows: tuple[int, ...]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        closure = self._closures.get(rows)
        if closure is None:
            if len(rows) == 1:
                single = attack_closure(self.recipe, self.problems[rows[0]], self.num_classes)

                def closure(zs: torch.Tensor, single=single) -> tuple[torch.Tensor, torch.Tensor]:
                    loss, grad_z = single(zs[0])
                    return loss.reshape(1), grad_z.reshape(1, -1)
            else:
                closure = batched_closure(self.recipe, [self.problems[k] for k in rows])
            self._closures[rows] = closure
            while len(self._closures) > self.kept:
                self._closures.popitem(last=False)
        self._closures.move_to_end(rows)
        return closure

    def __call__(self, zs: torch.Tensor, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = tuple(rows)
        if zs.shape[0] != len(rows) or not rows:
            raise ValueError(f"give one variable per problem evaluated: {zs.shape[0]} rows for problems {rows}")
        self.calls_by_rows[len(rows)] += 1
        return self._closure_for(rows)(zs)

    @property
    def rows_evaluated(self) -> int:
        """Problem evaluations over all calls (a separate run of each problem would make as many)."""
        return sum(r * c for r, c in self.calls_by_rows.items())


def _batched_gradients(problems: list[Attacked], with_features: bool = False
                       ) -> Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor | None]]:
    """x [N, B, C, H, W] -> (per parameter a tensor [N, *shape]: problem k's (clipped) dummy gradient at its
    own model point (the same θ_g in FedSGD; θ_g − U_k in FedAvg's one-step stand-in) with its own labels,
    from one K-fold replicated model (``tipcore.attacks.speed.replicate``); with ``with_features`` also every
    copy's fc input [N, B, D] at that point, else None). With the unrolled objective, every copy starts at
    θ_g and takes the client's T clipped SGD steps on its own dummy batch, in the graph, and the mean step
    gradient (θ_g − θ_T) / (T · lr) is returned, as ``MatchingProblem`` does alone."""
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
        return clip_by_global_norm(grads, clip, per_problem=True)  # the protocol's clipping, per problem

    def unrolled(x: torch.Tensor) -> list[torch.Tensor]:
        point: list[torch.Tensor] = list(params)
        summed: list[torch.Tensor] | None = None
        for _ in range(first.steps):
            grads = step_gradients(x, point)
            summed = grads if summed is None else [s + g for s, g in zip(summed, grads)]
            point = [p - first.lr * g.reshape(p.shape) for p, g in zip(point, grads)]
        assert summed is not None
        return [s / first.steps for s in summed]

    gradients = unrolled if first.objective == "unrolled" else (lambda x: step_gradients(x, None))
    if not with_features:
        return lambda x: (gradients(x), None)

    def gradients_and_features(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        captured: list[torch.Tensor] = []
        handle = replica.model.fc.register_forward_pre_hook(
            lambda _module, args: captured.append(args[0]) if not captured else None)
        try:
            grads = gradients(x)
        finally:
            handle.remove()
        return grads, replica.split_inputs(captured[0])

    return gradients_and_features
