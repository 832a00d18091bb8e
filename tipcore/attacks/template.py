"""One optimisation attack on one received update: the template every registered attack runs.

A ``Recipe`` (``tipcore.attacks.recipe``) says which distance, optimiser, label strategy, start, regulariser
and matcher; ``run_recipe`` fits the matcher on the update, builds the closure and runs the shared loop
(``tipcore.attacks.engine``) on one slot.

The optimisation variable is one flat vector z = [image, soft label if learnable], so L-BFGS and Adam
drive the same closure. The data term is evaluated as one vector-Jacobian product: the distance's
derivative with respect to the (matched) dummy gradient is known in closed form, so autograd walks the
double-backward once instead of differentiating the distance's own graph too.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from tipcore.attacks.base import AttackResult, AttackStream
from tipcore.attacks.engine import (
    Clock, DivergenceGuard, SingleGroup, Slot, distance_and_seed, feature_coefficient, feature_distance_and_seed, optimise,
    start_vector, to_images, total_variation,
)
from tipcore.attacks.fitted import fit_matcher
from tipcore.attacks.problem import MatchingProblem, infer_labels, resolve_objective
from tipcore.attacks.recipe import LabelStrategy, Recipe
from tipcore.federation.fl import ServerView, SharedUpdate
from tipcore.common.progress import StopHook, never_stop


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


class Attacked:
    """One received update made ready to attack: the attacker's model and target, the fitted matcher, the
    matched target and its norm, and the labels."""

    def __init__(self, recipe: Recipe, view: ServerView, update: SharedUpdate, generator: torch.Generator) -> None:
        self.problem = MatchingProblem(view, update, objective=resolve_objective(recipe.objective, update))
        self.generator = generator
        self.fitted = fit_matcher(recipe.matcher, recipe.matcher_config, self.problem.received())
        self.targets = [self.fitted.apply(n, t) for n, t in zip(self.problem.names, self.problem.targets)]
        self.target_norm = torch.sqrt(sum((t * t).sum() for t in self.targets))
        self.labels = choose_labels(recipe.labels, self.problem, view, update)
        if self.fitted.labels is not None and recipe.labels in ("auto", "soft") and view.known_labels(update) is None:
            # The matcher read the labels off the update itself (e.g. the fc bias's sign for B = 1).
            self.labels = torch.tensor(self.fitted.labels, dtype=torch.long, device=self.problem.device)


def splitter(problem: MatchingProblem, soft: bool, num_classes: int
             ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]:
    """z -> (its image block as the batch's shape, its soft label block or None)."""
    nx = math.prod(problem.shape)

    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = z[:nx].view(problem.shape)
        return x, (z[nx:].view(problem.batch, num_classes) if soft else None)

    return split


def attack_closure(recipe: Recipe, attacked: Attacked, num_classes: int
                   ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One problem's closure: the flat variable z = [image, soft label if learnt] -> (loss, its gradient).

    The batched comparison (``tipcore.attacks.speed.batched``) evaluates a problem left alone in its
    batch with this same closure, so that its evaluations cost (and round) as a single attack's."""
    problem, fitted, targets, target_norm = attacked.problem, attacked.fitted, attacked.targets, attacked.target_norm
    hard_labels = attacked.labels
    soft = hard_labels is None
    split = splitter(problem, soft, num_classes)

    features = fitted.features
    if features is not None:
        coefficient = feature_coefficient(features.weight, features.known, features.target, recipe.distance,
                                          target_norm).reshape(1)

    def closure(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        x, label = split(z)
        with problem.backend():
            if features is None:
                grads = problem.gradients(x, label if soft else hard_labels, soft)
            else:
                grads, phi = problem.gradients_and_features(x, label if soft else hard_labels, soft)
            dummy = [fitted.apply(n, g) for n, g in zip(problem.names, grads)]
            loss, seed = distance_and_seed(recipe.distance, dummy, targets, target_norm)
            if features is None:
                (grad_z,) = torch.autograd.grad(dummy, [z], grad_outputs=seed)
            else:
                feature_loss, feature_seed = feature_distance_and_seed(phi[None], features.target[None],
                                                                       features.known[None], coefficient)
                (grad_z,) = torch.autograd.grad(dummy + [phi], [z], grad_outputs=list(seed) + [feature_seed[0]])
                loss = loss + feature_loss[0]
        if recipe.tv > 0:
            tv = total_variation(x)
            grad_z = grad_z + recipe.tv * torch.autograd.grad(tv, [z])[0]
            loss = loss + recipe.tv * tv.detach()
        return loss.detach(), grad_z

    return closure


def run_recipe(recipe: Recipe, view: ServerView, update: SharedUpdate, *, generator: torch.Generator,
               should_stop: StopHook = never_stop, report_every: int = 10) -> AttackStream:
    """Attack one received update with ``recipe``: a stream of snapshots, then the ``AttackResult``."""
    attacked = Attacked(recipe, view, update, generator)
    problem, fitted = attacked.problem, attacked.fitted
    hard_labels = attacked.labels
    soft = hard_labels is None
    nx = math.prod(problem.shape)
    num_classes = view.num_classes
    split = splitter(problem, soft, num_classes)
    closure = attack_closure(recipe, attacked, num_classes)

    clock = Clock(recipe.iterations * recipe.trials)
    slot = Slot(lambda: start_vector(recipe, problem.shape, num_classes, soft, generator, problem.device),
                DivergenceGuard(recipe.explode_factor))
    group = SingleGroup(recipe, closure, slot.start(), nx)
    stopped = yield from optimise([slot], group, recipe, clock, should_stop=should_stop, report_every=report_every,
                                  images=lambda z: to_images(split(z)[0]), batch_snapshots=False)

    assert slot.best is not None
    loss_value, z_best, steps = slot.best
    x_best, label_best = split(z_best)
    labels = hard_labels if not soft else label_best.argmax(dim=-1)
    return AttackResult(
        images=to_images(torch.nan_to_num(x_best, nan=0.5)), labels=tuple(int(v) for v in labels.tolist()),
        iterations=steps, restarts=slot.restarts, seconds=clock.elapsed(), stopped=stopped, final_loss=loss_value,
        diverged=slot.diverged, evaluations=slot.evaluations, history=tuple(slot.history),
        match=recipe.matcher, flagged=dict(fitted.flagged), notes=tuple(fitted.notes),
    )
