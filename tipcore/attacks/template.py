"""One optimisation-attack template: objective x optimiser x regulariser x label strategy x matcher.

Every gradient-inversion attack of the project is a configuration of ``GradientInversion`` (the way
breaching composes its attacks from lookups): DLG is L2 + L-BFGS + a soft learnable label; iDLG is the
same with the label read off the fc gradient; Inverting Gradients is cosine + total variation + signed
Adam in a box. Each can run naive (match everything) or adaptive (``tipcore.attacks.matching``). The
restart, snapshot, timing and stop logic lives here, once.

The optimisation variable is one flat vector z = [image, soft label if learnable], so L-BFGS and Adam
drive the same closure. The data term is evaluated as one vector-Jacobian product: the distance's
derivative with respect to the (matched) dummy gradient is known in closed form, so autograd walks the
double-backward once instead of differentiating the distance's own graph too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from tipcore.attacks import matching
from tipcore.attacks.base import (
    AttackResult, AttackStream, Clock, DivergenceGuard, MatchingProblem, Snapshot, StopHook, infer_labels,
    never_stop, resolve_objective, snapshot_event, to_images,
)
from tipcore.attacks.lbfgs import FlatLBFGS
from tipcore.fl import ServerView, SharedUpdate

Distance = Literal["l2", "cosine"]
# What the attack does about labels: "soft" learns them jointly (DLG) and "auto" reads them off the fc
# gradient (iDLG), each unless the threat model tells the server the labels, which are then used as given;
# "known" requires them; "infer" reads the fc gradient even when told (an explicit experimenter's choice).
LabelStrategy = Literal["soft", "infer", "known", "auto"]
Objective = Literal["auto", "gradient", "unrolled"]
Init = Literal["randn", "centred"]
Closure = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------------------------------- objective

def distance_and_seed(kind: Distance, dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                      target_norm: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The distance between dummy and target gradients, and its derivative with respect to ``dummy``."""
    with torch.no_grad():
        if kind == "l2":
            diff = torch._foreach_sub(list(dummy), list(target))
            loss = sum((d * d).sum() for d in diff)
            return loss, torch._foreach_mul(diff, 2.0)
        dot = sum(torch.vdot(g.reshape(-1), t.reshape(-1)) for g, t in zip(dummy, target))
        norm = torch.sqrt(sum(torch.vdot(g.reshape(-1), g.reshape(-1)) for g in dummy)).clamp_min(1e-12)
        denom = norm * target_norm.clamp_min(1e-12)
        # d(1 − g·t / (|g||t|)) / dg = −t / (|g||t|) + (g·t) / (|g|³|t|) · g
        seed = torch._foreach_mul(list(target), float(-1 / denom))
        torch._foreach_add_(seed, list(dummy), alpha=float(dot / (norm * norm * denom)))
        return 1 - dot / denom, seed


def total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = torch.mean(torch.abs(x[:, :, :, :-1] - x[:, :, :, 1:]))
    dy = torch.mean(torch.abs(x[:, :, :-1, :] - x[:, :, 1:, :]))
    return dx + dy


# ------------------------------------------------------------------------------------------ optimisers

class LBFGSOptimiser:
    def __init__(self, z: torch.Tensor, recipe: "Recipe") -> None:
        self.opt = FlatLBFGS(z, lr=recipe.lr, max_iter=recipe.evals_per_step, history_size=recipe.history_size)

    def step(self, closure: Closure) -> tuple[float, int]:
        return self.opt.step(closure)


class SignedAdamOptimiser:
    """Adam on the (optionally signed) gradient, a box on the image block, a step-decayed learning rate."""

    def __init__(self, z: torch.Tensor, recipe: "Recipe", image_size: int | None = None) -> None:
        self.z, self.recipe, self.image_size = z, recipe, image_size
        self.z.requires_grad_(True)
        self.opt = torch.optim.Adam([z], lr=recipe.lr)
        milestones = [int(recipe.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        self.sched = (torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones, gamma=recipe.decay_gamma)
                      if recipe.lr_decay else None)
        self._box()

    def _box(self) -> None:
        if self.recipe.boxed:
            with torch.no_grad():
                (self.z if self.image_size is None else self.z[: self.image_size]).clamp_(0, 1)

    def step(self, closure: Closure) -> tuple[float, int]:
        loss, grad = closure(self.z)
        self.z.grad = grad.sign() if self.recipe.signed else grad
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self._box()
        return float(loss), 1


# ---------------------------------------------------------------------------------------------- recipe

@dataclass(frozen=True)
class Recipe:
    """Everything that defines one optimisation attack; the registered configs translate into this."""

    distance: Distance
    optimiser: Literal["lbfgs", "adam"]
    labels: LabelStrategy
    init: Init
    iterations: int
    lr: float
    tv: float = 0.0
    trials: int = 1
    max_restarts: int = 3
    explode_factor: float = 1e4
    evals_per_step: int = 20  # L-BFGS
    history_size: int = 100  # L-BFGS
    signed: bool = True  # Adam
    boxed: bool = True  # Adam
    lr_decay: bool = True  # Adam
    decay_gamma: float = 0.1  # Adam
    match: matching.MatchOptions = matching.MatchOptions()
    objective: Objective = "auto"  # FedAvg: unroll the client's local steps (auto) or the one-step stand-in


def choose_labels(strategy: LabelStrategy, problem: MatchingProblem, view: ServerView,
                  update: SharedUpdate) -> torch.Tensor | None:
    """The labels the attack assumes (None: learnt jointly, as DLG's soft label).

    Labels come only from what the threat model grants (``ServerView.known_labels``): with them, every
    strategy but an explicit ``infer`` uses them and optimises the image alone; without them, ``soft``
    learns a label and the others read it off the fc gradient (iDLG's rule), which every defense of the
    project leaves readable.
    """
    if strategy == "infer":
        return infer_labels(problem)
    told = view.known_labels(update)
    if told is not None:
        return torch.tensor(told, dtype=torch.long, device=problem.device)
    if strategy == "known":
        raise ValueError("labels='known' but this threat model does not tell the server the labels")
    if strategy == "soft":
        return None
    return infer_labels(problem)


class GradientInversion:
    """The template: one loop for every optimisation attack. Subclasses supply ``recipe()``."""

    name = "gradient-inversion"

    def recipe(self) -> Recipe:  # pragma: no cover - every registered attack overrides it
        raise NotImplementedError

    def reconstruct(self, view: ServerView, update: SharedUpdate, *, generator: torch.Generator,
                    should_stop: StopHook = never_stop, report_every: int = 10) -> AttackStream:
        recipe = self.recipe()
        problem = MatchingProblem(view, update, objective=resolve_objective(recipe.objective, update))
        matcher = matching.fit(recipe.match, problem.model, dict(zip(problem.names, problem.targets)))
        targets = [matcher.apply(n, t) for n, t in zip(problem.names, problem.targets)]
        target_norm = torch.sqrt(sum((t * t).sum() for t in targets))
        hard_labels = choose_labels(recipe.labels, problem, view, update)
        soft = hard_labels is None
        nx = math.prod(problem.shape)
        num_classes = view.num_classes

        def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            x = z[:nx].view(problem.shape)
            return x, (z[nx:].view(problem.batch, num_classes) if soft else None)

        def closure(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = z.detach().requires_grad_(True)
            x, label = split(z)
            with problem.backend():
                grads = problem.gradients(x, label if soft else hard_labels, soft)
                dummy = [matcher.apply(n, g) for n, g in zip(problem.names, grads)]
                loss, seed = distance_and_seed(recipe.distance, dummy, targets, target_norm)
                (grad_z,) = torch.autograd.grad(dummy, [z], grad_outputs=seed)
            if recipe.tv > 0:
                tv = total_variation(x)
                grad_z = grad_z + recipe.tv * torch.autograd.grad(tv, [z])[0]
                loss = loss + recipe.tv * tv.detach()
            return loss.detach(), grad_z

        clock = Clock(recipe.iterations * recipe.trials)
        guard = DivergenceGuard(recipe.explode_factor)
        history: list[Snapshot] = []
        restarts, stopped, evaluations, done_before, still_diverging = 0, False, 0, 0, False
        best: tuple[float, torch.Tensor, int] | None = None
        trial = 0
        while trial < recipe.trials and not stopped:
            z = self._start(recipe, problem, num_classes, soft, generator)
            optimiser = (LBFGSOptimiser(z, recipe) if recipe.optimiser == "lbfgs"
                         else SignedAdamOptimiser(z, recipe, nx))
            guard.reset()
            step, loss_value, restart_now = 0, float("nan"), False
            while step < recipe.iterations:
                if should_stop():
                    stopped = True
                    break
                loss_value, used = optimiser.step(closure)
                evaluations += used
                step += 1
                if guard.diverged(loss_value) or not torch.isfinite(z).all():
                    restart_now = True
                    break
                if step % report_every == 0 or step == recipe.iterations:
                    done = done_before + step
                    snap = Snapshot(done, loss_value, to_images(split(z)[0]), clock.elapsed(), clock.eta(done),
                                    restarts)
                    history.append(snap)
                    yield snapshot_event(snap, clock.total)
            if restart_now and restarts < recipe.max_restarts:
                restarts += 1
                continue
            still_diverging = restart_now
            # The lowest final loss wins; a diverged run counts only if nothing else exists.
            if best is None or (not restart_now and (best[0] != best[0] or loss_value < best[0])):
                best = (loss_value, z.detach().clone(), step)
            done_before += step
            trial += 1

        assert best is not None
        loss_value, z_best, steps = best
        x_best, label_best = split(z_best)
        labels = hard_labels if not soft else label_best.argmax(dim=-1)
        return AttackResult(
            images=to_images(torch.nan_to_num(x_best, nan=0.5)), labels=tuple(int(v) for v in labels.tolist()),
            iterations=steps, restarts=restarts, seconds=clock.elapsed(), stopped=stopped, final_loss=loss_value,
            diverged=still_diverging, evaluations=evaluations, history=tuple(history),
            match=recipe.match.match, flagged=dict(matcher.flagged),
        )

    @staticmethod
    def _start(recipe: Recipe, problem: MatchingProblem, num_classes: int, soft: bool,
               generator: torch.Generator) -> torch.Tensor:
        """The flat start vector: DLG's N(0, 1) image, or IG's 0.5 + 0.25·N(0, 1) (its randn start in the
        coordinates of a dataset normalised with mean 0.5 and std 0.25); then DLG's random soft label."""
        x0 = torch.randn(problem.shape, generator=generator)
        if recipe.init == "centred":
            x0 = 0.5 + 0.25 * x0
        parts = [x0.flatten()]
        if soft:
            parts.append(torch.randn((problem.batch, num_classes), generator=generator).flatten())
        return torch.cat(parts).to(problem.device)
