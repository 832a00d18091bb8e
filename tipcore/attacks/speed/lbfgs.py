"""L-BFGS without line search, as ``torch.optim.LBFGS(line_search_fn=None)`` does it, on one flat vector.

Same algorithm and stopping rules as PyTorch's optimiser (first step scaled by min(1, 1/‖g‖₁), history of
curvature pairs kept only when yᵀs > 1e-10, the same tolerances), but the inverse-Hessian product uses the
compact representation of Byrd, Nocedal and Schnabel (1994): a few matrix products over the stacked
history instead of the two-loop recursion's 4·m tiny Python-level operations per evaluation. For the small
problems DLG solves, that Python overhead cost as much as the model's own forward and double backward.
"""

from __future__ import annotations

from typing import Callable, Generator

import torch

LossAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FlatLBFGS:
    def __init__(self, z: torch.Tensor, lr: float = 1.0, max_iter: int = 20, history_size: int = 100,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9) -> None:
        self.z = z  # flat parameter vector, updated in place
        self.lr, self.max_iter, self.history_size = lr, max_iter, history_size
        self.max_eval = max_iter * 5 // 4
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change
        n, h = z.numel(), history_size
        # Curvature pairs live in a window [lo, lo + m) of buffers twice the history size, so dropping the
        # oldest pair is an index move, not a copy; the window slides back to row 0 once per h pushes.
        self.S_buf = z.new_zeros((2 * h, n))  # steps s_i, oldest first
        self.Y_buf = z.new_zeros((2 * h, n))  # gradient differences y_i
        self.lo, self.m = 0, 0
        self.SY = z.new_zeros((h, h))  # SY[i, j] = s_i · y_j, kept up to date pair by pair
        self.YY = z.new_zeros((h, h))  # YY[i, j] = y_i · y_j
        self.H_diag = 1.0
        self.d: torch.Tensor | None = None
        self.t = lr
        self.prev_grad: torch.Tensor | None = None
        self.n_iter = 0

    def _push(self, s: torch.Tensor, y: torch.Tensor) -> None:
        h = self.history_size
        if self.m == h:  # forget the oldest pair
            self.lo += 1
            self.m -= 1
            self.SY[: h - 1, : h - 1] = self.SY[1:, 1:].clone()
            self.YY[: h - 1, : h - 1] = self.YY[1:, 1:].clone()
        if self.lo + self.m == 2 * h:
            self.S_buf[: self.m] = self.S_buf[self.lo: self.lo + self.m].clone()
            self.Y_buf[: self.m] = self.Y_buf[self.lo: self.lo + self.m].clone()
            self.lo = 0
        row = self.lo + self.m
        self.S_buf[row] = s
        self.Y_buf[row] = y
        self.m += 1
        S, Y, k = self.S_buf[self.lo: row + 1], self.Y_buf[self.lo: row + 1], self.m - 1
        self.SY[k, : k + 1] = Y @ s
        self.SY[: k + 1, k] = S @ y
        yy = Y @ y
        self.YY[k, : k + 1] = yy
        self.YY[: k + 1, k] = yy

    def _inverse_hessian_times(self, g: torch.Tensor) -> torch.Tensor:
        gamma, m = self.H_diag, self.m
        if m == 0:
            return gamma * g
        S, Y = self.S_buf[self.lo: self.lo + m], self.Y_buf[self.lo: self.lo + m]
        SY, YY = self.SY[:m, :m], self.YY[:m, :m]
        a, b = S @ g, Y @ g
        R = torch.triu(SY)
        Rinv_a = torch.linalg.solve_triangular(R, a[:, None], upper=True)[:, 0]
        inner = torch.diagonal(SY) * Rinv_a + gamma * (YY @ Rinv_a) - gamma * b
        p1 = torch.linalg.solve_triangular(R.T, inner[:, None], upper=False)[:, 0]
        return gamma * g + S.T @ p1 - gamma * (Y.T @ Rinv_a)

    def step(self, loss_and_grad: LossAndGrad) -> tuple[float, int]:
        """One outer step; returns (loss at its start, closure evaluations it used)."""
        steps = self.step_requests()
        next(steps)
        while True:
            try:
                steps.send(loss_and_grad(self.z))
            except StopIteration as done:
                return done.value

    def step_requests(self) -> Generator[None, tuple[torch.Tensor, torch.Tensor], tuple[float, int]]:
        """The same outer step as a coroutine: each ``yield`` asks for (loss, gradient) at ``self.z``.

        Several optimisers can so be advanced in lockstep while one batched closure evaluates all of
        their points at once (``tipcore.attacks.speed.batched``), each keeping its own exact arithmetic.
        """
        loss_t, g = yield
        evals = 1
        orig_loss = loss = float(loss_t)
        if g.abs().max() <= self.tolerance_grad:
            return orig_loss, evals
        inner = 0
        while inner < self.max_iter:
            inner += 1
            self.n_iter += 1
            if self.n_iter == 1:
                self.d, self.H_diag = -g, 1.0
            else:
                y = g - self.prev_grad
                s = self.d * self.t
                ys = float(y @ s)
                if ys > 1e-10:
                    self._push(s, y)
                    self.H_diag = ys / float(y @ y)
                self.d = -self._inverse_hessian_times(g)
            self.prev_grad = g.clone()
            prev_loss = loss
            self.t = min(1.0, 1.0 / float(g.abs().sum())) * self.lr if self.n_iter == 1 else self.lr
            gtd = float(g @ self.d)
            if gtd > -self.tolerance_change:
                break
            with torch.no_grad():
                self.z.add_(self.d, alpha=self.t)
            step_evals = 0
            if inner != self.max_iter:
                loss_t, g = yield
                loss = float(loss_t)
                step_evals = 1
            evals += step_evals
            if inner == self.max_iter or evals >= self.max_eval:
                break
            if step_evals and g.abs().max() <= self.tolerance_grad:
                break
            if float(self.d.abs().max()) * self.t <= self.tolerance_change:
                break
            if abs(loss - prev_loss) < self.tolerance_change:
                break
        return orig_loss, evals
