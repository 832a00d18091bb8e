"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020): L2 gradient matching with L-BFGS.

DLG optimises the dummy image and a soft dummy label jointly. iDLG first reads the label off the sign
structure of the last layer's gradient, then optimises the image alone. One "step" is one L-BFGS outer
step (up to ``evals_per_step`` closure evaluations); ``AttackResult.evaluations`` counts the closures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tipcore.attacks.base import (
    AttackResult, AttackStream, Clock, DivergenceGuard, MatchingProblem, Snapshot, StopHook,
    infer_labels, never_stop, register, to_images,
)
from tipcore.attacks.lbfgs import FlatLBFGS
from tipcore.fl import ServerView, SharedUpdate


@dataclass(frozen=True)
class DLGConfig:
    iterations: int = 300  # L-BFGS outer steps
    lr: float = 1.0
    evals_per_step: int = 20  # L-BFGS max_iter: closure evaluations allowed per outer step
    history_size: int = 100
    max_restarts: int = 3  # restarts of a diverging run, each from fresh random numbers
    explode_factor: float = 1e4  # loss above this multiple of the first loss counts as divergence

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= 100_000:
            raise ValueError(f"iterations must be in [1, 100000], got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 1 <= self.evals_per_step <= 1000:
            raise ValueError(f"evals_per_step must be in [1, 1000], got {self.evals_per_step}")
        if not 1 <= self.history_size <= 1000:
            raise ValueError(f"history_size must be in [1, 1000], got {self.history_size}")
        if not 0 <= self.max_restarts <= 100:
            raise ValueError(f"max_restarts must be in [0, 100], got {self.max_restarts}")
        if not self.explode_factor > 1:
            raise ValueError(f"explode_factor must be > 1, got {self.explode_factor}")


class _LBFGSMatching:
    label_mode = "soft"  # "soft": DLG's learnable label; "infer": iDLG

    def __init__(self, config: DLGConfig | None = None) -> None:
        self.config = config or DLGConfig()

    def reconstruct(self, view: ServerView, update: SharedUpdate, *, generator: torch.Generator,
                    should_stop: StopHook = never_stop, report_every: int = 10) -> AttackStream:
        cfg = self.config
        problem = MatchingProblem(view, update)
        dev = problem.device
        num_classes = view.num_classes
        soft = self.label_mode == "soft"
        hard_labels = None if soft else self._labels(problem, update)
        guard = DivergenceGuard(cfg.explode_factor)
        clock = Clock(cfg.iterations)
        history: list[Snapshot] = []
        restarts, evaluations, stopped, diverged = 0, 0, False, False

        nx = problem.batch * 3 * 32 * 32

        def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return z[:nx].view(problem.shape), z[nx:].view(problem.batch, num_classes)

        def loss_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = z.detach().requires_grad_(True)
            x, label = split(z)
            grads = problem.gradients(x, label if soft else hard_labels, soft)
            loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, problem.targets))
            (grad,) = torch.autograd.grad(loss, z)
            if not soft:  # the label block is not a variable in iDLG
                grad[nx:] = 0
            return loss.detach(), grad

        while True:
            x0 = torch.randn(problem.shape, generator=generator)
            label0 = torch.randn((problem.batch, num_classes), generator=generator)
            z = torch.cat([x0.flatten(), label0.flatten()]).to(dev)
            opt = FlatLBFGS(z, lr=cfg.lr, max_iter=cfg.evals_per_step, history_size=cfg.history_size)
            x, label = split(z)
            guard.reset()
            step, loss_value, restart_now = 0, float("nan"), False
            while step < cfg.iterations:
                if should_stop():
                    stopped = True
                    break
                with problem.backend():
                    loss_value, used = opt.step(loss_and_grad)
                evaluations += used
                step += 1
                x, label = split(z)
                if guard.diverged(loss_value) or not torch.isfinite(z).all():
                    restart_now = True
                    break
                if step % report_every == 0 or step == cfg.iterations:
                    snap = Snapshot(step, loss_value, to_images(x), clock.elapsed(), clock.eta(step), restarts)
                    history.append(snap)
                    yield snap
            if restart_now and restarts < cfg.max_restarts:
                restarts += 1
                clock = Clock(cfg.iterations)
                continue
            diverged = restart_now
            break

        labels = hard_labels if not soft else label.detach().argmax(dim=-1)
        final_images = to_images(torch.nan_to_num(x.detach(), nan=0.5))
        return AttackResult(
            images=final_images, labels=tuple(int(v) for v in labels.tolist()), iterations=step,
            restarts=restarts, seconds=clock.elapsed(), stopped=stopped, final_loss=loss_value,
            diverged=diverged, evaluations=evaluations, history=tuple(history),
        )

    def _labels(self, problem: MatchingProblem, update: SharedUpdate) -> torch.Tensor:
        return infer_labels(problem)


@register("dlg", DLGConfig, "DLG: L2 gradient matching, L-BFGS, image and soft label optimised jointly")
class DLG(_LBFGSMatching):
    label_mode = "soft"

    def describe(self) -> str:
        return ("Deep Leakage from Gradients (Zhu et al., 2019). The server starts from random noise and a "
                "random soft label, and moves both with L-BFGS until the gradient they produce matches the "
                "shared one in squared L2 distance. Strong on small sigmoid networks such as LeNet; fragile "
                "on deep ReLU networks, and sometimes diverges (then it is restarted).")


@register("idlg", DLGConfig, "iDLG: label read off the last layer's gradient signs, then DLG on the image")
class IDLG(_LBFGSMatching):
    label_mode = "infer"

    def describe(self) -> str:
        return ("Improved DLG (Zhao et al., 2020). With cross-entropy and non-negative features, the only "
                "negative row of the last layer's weight gradient belongs to the true label, so the label is "
                "read off exactly; L-BFGS then matches gradients over the image alone, which converges more "
                "reliably than DLG.")
