"""The optimisation loop every attack runs, once: restarts, trials, the divergence guard, snapshots, stop.

A run optimises one or more **slots** (problems: one received update each) in lockstep. A single attack is
one slot (``tipcore.attacks.template``); a batched comparison of N defended updates is N slots sharing one
closure (``tipcore.attacks.speed.batched``). What differs between the two is only the **group** that advances
the slots' optimisation variables: one L-BFGS or signed Adam on its own vector, or N of them on the rows of
one matrix. Everything else (when a run diverged and is restarted from fresh random numbers, when a trial
ends, which attempt is kept, when a snapshot is due, what a stop returns) lives here.

Also here, because both closures use them: the one distance (L2 or cosine, with its derivative in closed
form), total variation, and the start vector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Protocol, Sequence

import numpy as np
import torch

from tipcore.attacks.base import BatchSnapshot, Snapshot, snapshot_event
from tipcore.attacks.speed.lbfgs import FlatLBFGS
from tipcore.attacks.recipe import Distance, Recipe
from tipcore.common.progress import Event, StopHook

Closure = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# Several problems' closure: the variables of the problems to evaluate [R, n] and which slots they are ->
# their losses [R] and gradients [R, n]. Only problems that need an evaluation are given.
RowsClosure = Callable[[torch.Tensor, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]]


def to_images(x: torch.Tensor) -> np.ndarray:
    return x.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


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


def distances_per_problem(kind: Distance, dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                          target_norms: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``distance_and_seed`` for N problems stacked on the first axis: [N] losses, [N, ...] seeds.

    Each seed keeps its dummy gradient's memory layout (the backward kernels it feeds, and so their
    rounding, depend on it)."""
    per = [distance_and_seed(kind, [d[k] for d in dummy], [t[k] for t in target], target_norms[k])
           for k in range(target_norms.shape[0])]
    seeds = []
    for i, d in enumerate(dummy):
        seed = torch.empty_like(d)
        for k, (_, row) in enumerate(per):
            seed[k].copy_(row[i])
        seeds.append(seed)
    return torch.stack([loss for loss, _ in per]), seeds


def feature_distance_and_seed(features: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
                              coefficient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """coefficient · ‖known ⊙ (φ̂ − φ)‖² per problem (first axis) and its derivative with respect to φ̂."""
    with torch.no_grad():
        diff = known * (features - target)
        widen = coefficient.view(-1, *([1] * (diff.ndim - 1)))
        return coefficient * (diff * diff).flatten(1).sum(1), 2 * widen * diff


def feature_coefficient(weight: float, known: torch.Tensor, target: torch.Tensor, distance: Distance,
                        matched_target_norm: torch.Tensor) -> torch.Tensor:
    """The feature term's factor: ``weight`` relative to the gradient distance's scale (``FeatureTarget``)."""
    scale = matched_target_norm ** 2 if distance == "l2" else torch.ones_like(matched_target_norm)
    return weight * scale / ((known * target) ** 2).sum().clamp_min(1e-30)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = torch.mean(torch.abs(x[:, :, :, :-1] - x[:, :, :, 1:]))
    dy = torch.mean(torch.abs(x[:, :, :-1, :] - x[:, :, 1:, :]))
    return dx + dy


def start_vector(recipe: Recipe, shape: tuple[int, ...], num_classes: int, soft: bool,
                 generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The flat start vector: DLG's N(0, 1) image, or IG's 0.5 + 0.25·N(0, 1) (its randn start in the
    coordinates of a dataset normalised with mean 0.5 and std 0.25); then DLG's random soft label."""
    x0 = torch.randn(shape, generator=generator)
    if recipe.init == "centred":
        x0 = 0.5 + 0.25 * x0
    parts = [x0.flatten()]
    if soft:
        parts.append(torch.randn((shape[0], num_classes), generator=generator).flatten())
    return torch.cat(parts).to(device)


# ---------------------------------------------------------------------------------------------- guards

class DivergenceGuard:
    """Detects a diverging run: a NaN / inf loss, or a loss that exploded far above where it started."""

    def __init__(self, explode_factor: float) -> None:
        self.explode_factor = explode_factor
        self.initial: float | None = None

    def reset(self) -> None:
        self.initial = None

    def diverged(self, loss: float) -> bool:
        if not np.isfinite(loss):
            return True
        if self.initial is None:
            self.initial = max(loss, 1e-12)
            return False
        return loss > self.explode_factor * self.initial


class Clock:
    def __init__(self, total_steps: int) -> None:
        self.start = time.perf_counter()
        self.total = total_steps

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, done_steps: int) -> float:
        if done_steps <= 0:
            return float("nan")
        return self.elapsed() / done_steps * max(self.total - done_steps, 0)


# ------------------------------------------------------------------------------------------ optimisers

class SignedAdamOptimiser:
    """Adam on the (optionally signed) gradient, a box on the image block, a step-decayed learning rate."""

    def __init__(self, z: torch.Tensor, recipe: Recipe, image_size: int | None = None) -> None:
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


class Group(Protocol):
    """Advances the optimisation variables of every active slot by one step, through one closure."""

    def step(self, active: list[bool]) -> list[tuple[float, int]]: ...  # per slot: (loss, evaluations)

    def row(self, k: int) -> torch.Tensor: ...  # slot k's current variable

    def restart(self, k: int, z: torch.Tensor) -> None: ...  # slot k starts afresh from ``z``


class SingleGroup:
    """One slot: its own vector and optimiser, rebuilt from scratch at every (re)start."""

    def __init__(self, recipe: Recipe, closure: Closure, z: torch.Tensor, image_size: int) -> None:
        self.recipe, self.closure, self.image_size = recipe, closure, image_size
        self.restart(0, z)

    def restart(self, k: int, z: torch.Tensor) -> None:
        r = self.recipe
        self.z = z
        self.opt = (FlatLBFGS(z, lr=r.lr, max_iter=r.evals_per_step, history_size=r.history_size)
                    if r.optimiser == "lbfgs" else SignedAdamOptimiser(z, r, self.image_size))

    def row(self, k: int) -> torch.Tensor:
        return self.z

    def step(self, active: list[bool]) -> list[tuple[float, int]]:
        return [self.opt.step(self.closure)]


class LockstepLBFGS:
    """One FlatLBFGS per slot (each on its own row of z), advanced together through one batched closure.

    Each closure call evaluates only the slots still inside their step: one that needs fewer evaluations
    this step (converged, or stopped by a tolerance) leaves the batch when its step ends, and a finished
    slot is not evaluated at all."""

    def __init__(self, recipe: Recipe, closure: RowsClosure, z: torch.Tensor) -> None:
        self.z, self.recipe, self.closure = z, recipe, closure
        self.opts = [self._new(k) for k in range(z.shape[0])]

    def _new(self, k: int) -> FlatLBFGS:
        r = self.recipe
        return FlatLBFGS(self.z[k], lr=r.lr, max_iter=r.evals_per_step, history_size=r.history_size)

    def restart(self, k: int, z: torch.Tensor) -> None:
        with torch.no_grad():
            self.z[k] = z
        self.opts[k] = self._new(k)

    def row(self, k: int) -> torch.Tensor:
        return self.z[k]

    def step(self, active: list[bool]) -> list[tuple[float, int]]:
        runs = {k: self.opts[k].step_requests() for k in range(len(active)) if active[k]}
        for run in runs.values():
            next(run)
        out: dict[int, tuple[float, int]] = {}
        while runs:
            rows = tuple(runs)
            loss, grad_z = self.closure(self.z.detach()[list(rows)], rows)
            for i, k in enumerate(rows):
                try:
                    runs[k].send((loss[i], grad_z[i]))
                except StopIteration as done:
                    out[k] = done.value
                    del runs[k]
        return [out.get(k, (float("nan"), 0)) for k in range(len(active))]


class SharedAdam(SignedAdamOptimiser):
    """Adam is elementwise: one Adam over all rows of z [N, image] is N independent Adams (rows never mix).

    Only the active slots are evaluated; a finished slot's row gets a zero gradient and is put back where
    it was after the shared step (Adam's moments would otherwise still move it)."""

    def __init__(self, recipe: Recipe, closure: RowsClosure, z: torch.Tensor) -> None:
        super().__init__(z, recipe)
        self.closure = closure

    def restart(self, k: int, z: torch.Tensor) -> None:
        """A restarted slot forgets its moments (the shared step count, and so Adam's bias correction
        and the learning-rate schedule, go on: a restart here is not bit-identical to a separate run's)."""
        with torch.no_grad():
            self.z[k] = z
        state = self.opt.state.get(self.z)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key][k].zero_()
        self._box()

    def row(self, k: int) -> torch.Tensor:
        return self.z[k]

    def step(self, active: list[bool]) -> list[tuple[float, int]]:  # type: ignore[override]
        rows = tuple(k for k, on in enumerate(active) if on)
        loss, grad_rows = self.closure(self.z.detach()[list(rows)], rows)
        grad_z = torch.zeros_like(self.z)
        grad_z[list(rows)] = grad_rows.sign() if self.recipe.signed else grad_rows
        idle = ~torch.tensor(active)
        self.z.grad = grad_z
        frozen = self.z.detach()[idle].clone()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self._box()
        with torch.no_grad():
            self.z[idle] = frozen
        losses = [(float("nan"), 0)] * len(active)
        for i, k in enumerate(rows):
            losses[k] = (float(loss[i]), 1)
        return losses


# ------------------------------------------------------------------------------------------------ loop

@dataclass
class Slot:
    """One problem's run: its attempts (restarts), trials, and the best attempt so far."""

    start: Callable[[], torch.Tensor]  # a fresh start vector, from this problem's own generator
    guard: DivergenceGuard
    step: int = 0  # steps of the current attempt
    loss: float = float("nan")
    restarts: int = 0
    evaluations: int = 0
    trial: int = 0
    done_before: int = 0  # steps of the finished trials
    finished: bool = False
    diverged: bool = False  # the last trial ended still diverging after the last allowed restart
    best: tuple[float, torch.Tensor, int] | None = None  # (loss, variable, steps) of the attempt kept
    history: list[Snapshot] = field(default_factory=list)


Images = Callable[[torch.Tensor], np.ndarray]  # a slot's variable -> its current images (B, H, W, 3)


def optimise(slots: list[Slot], group: Group, recipe: Recipe, clock: Clock, *, should_stop: StopHook,
             report_every: int, images: Images, batch_snapshots: bool) -> Generator[Event, None, bool]:
    """Run every slot to the end of its trials (or a stop); returns whether it was stopped.

    A slot whose loss is not finite, or exploded (``DivergenceGuard``), or whose variable is not finite,
    restarts from fresh random numbers, up to ``recipe.max_restarts`` times in all; after that its trial
    ends diverged. Of a slot's trials the lowest final loss wins; a diverged one counts only if nothing
    else exists. Snapshots: per slot (``Snapshot``, kept in its history) every ``report_every`` steps of
    an attempt and at its last step, or with ``batch_snapshots`` one ``BatchSnapshot`` for all slots.
    """
    def fresh(k: int, s: Slot) -> None:
        s.step, s.loss = 0, float("nan")
        s.guard.reset()
        group.restart(k, s.start())

    def end_attempt(k: int, s: Slot, diverged: bool, go_on: bool = True) -> None:
        s.diverged = diverged
        if s.best is None or (not diverged and (s.best[0] != s.best[0] or s.loss < s.best[0])):
            s.best = (s.loss, group.row(k).detach().clone(), s.step)
        s.done_before += s.step
        s.trial += 1
        if go_on and s.trial < recipe.trials:
            fresh(k, s)
        else:
            s.finished = True

    stopped = False
    while not all(s.finished for s in slots):
        if should_stop():
            stopped = True
            break
        losses = group.step([not s.finished for s in slots])
        for k, s in enumerate(slots):
            if s.finished:
                continue
            s.loss, used = losses[k]
            s.evaluations += used
            s.step += 1
            if s.guard.diverged(s.loss) or not torch.isfinite(group.row(k)).all():
                if s.restarts < recipe.max_restarts:
                    s.restarts += 1
                    fresh(k, s)
                else:
                    end_attempt(k, s, diverged=True)
                continue
            if not batch_snapshots and (s.step % report_every == 0 or s.step == recipe.iterations):
                done = s.done_before + s.step
                snap = Snapshot(done, s.loss, images(group.row(k)), clock.elapsed(), clock.eta(done), s.restarts)
                s.history.append(snap)
                yield snapshot_event(snap, clock.total)
            if s.step >= recipe.iterations:
                end_attempt(k, s, diverged=False)
        if batch_snapshots:
            step = max(s.step for s in slots)
            if step % report_every == 0 or all(s.finished for s in slots):
                shot = BatchSnapshot(step, tuple(s.loss for s in slots),
                                     np.stack([images(group.row(k))[0] for k in range(len(slots))]),
                                     clock.elapsed(), clock.eta(step))
                yield Event("attack", step, clock.total, "step", f"{len(slots)} updates at once", shot.elapsed_s,
                            shot.eta_s, payload=shot)
    for k, s in enumerate(slots):
        if not s.finished:  # stopped: the attempt in progress ends where it is
            end_attempt(k, s, diverged=False, go_on=False)
    return stopped

