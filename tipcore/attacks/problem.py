"""The attacker's side of one received update: its model at the point the update refers to, the target to
match (gradient units), the dummy data's counterpart of it, and the labels iDLG reads off the fc gradient.

Everything here is built from ``ServerView`` + ``SharedUpdate`` alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call

from tipcore.attacks.fitted import Received
from tipcore.federation.fl import ServerView, SharedUpdate, clip_by_global_norm

SMALL_MODEL_PARAMS = 1_000_000
OBJECTIVES: tuple[str, ...] = ("auto", "gradient", "unrolled")


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    # A process-wide switch: a concurrent run on a big model may briefly take the native kernels too,
    # which changes only its speed, never its numbers' meaning.
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def resolve_objective(objective: str, update: SharedUpdate) -> str:
    """What the dummy data is compared through: ``gradient`` (one gradient) or ``unrolled`` (the client's
    local steps replayed). ``auto`` unrolls every FedAvg update, as breaching does for any user that
    trains locally; FedSGD has a single step, so unrolling it is the gradient itself."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
    if update.mode == "fedsgd":
        return "gradient"
    return "unrolled" if objective == "auto" else objective


class MatchingProblem:
    """The attacker's model at the point the update refers to, and the target to match (gradient units).

    FedSGD: gradients at θ_global. FedAvg, objective ``gradient`` (the TIP paper's attack protocol): a
    one-step stand-in: the client's model is θ_local = θ_global − U, dummy gradients are taken there, and
    the target is U / (steps · lr). FedAvg, objective ``unrolled`` (invertinggradients' FedAvgReconstructor,
    breaching's multi-step objective): the dummy batch is pushed through the client's ``local_steps``
    full-batch SGD steps of ``lr`` from θ_global, each step's gradient clipped to the public ``clip``, all
    differentiably, and (θ_global − θ_T) / (steps · lr) is compared with the same target: exact, where the
    stand-in is only a first-order guess.
    """

    def __init__(self, view: ServerView, update: SharedUpdate, device: torch.device | None = None,
                 objective: str = "gradient") -> None:
        device = device or next(iter(update.tensors.values())).device
        self.objective = resolve_objective(objective, update)
        model = view.build_model().to(device)
        if update.mode == "fedavg" and self.objective == "gradient":
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.sub_(update.tensors[name].to(device))
        self.model: nn.Module = model.eval()
        self.device = device
        self.mode = update.mode
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n in self.names if n not in update.tensors]
        if missing:
            raise ValueError(f"the update lacks tensors for {len(missing)} parameters (e.g. {missing[0]})")
        for p in model.parameters():
            p.requires_grad_(True)
        self.params = [p for n, p in model.named_parameters() if n in set(self.names)]
        grad_units = update.as_gradient()
        self.targets = [grad_units[n].to(device).detach() for n in self.names]
        self.batch = update.num_examples
        # The protocol's clipping is public: an attacker on a FedSGD gradient clips its dummy gradient the
        # same way, or L2 matching would chase a rescaled target it can never reach. The one-step FedAvg
        # stand-in does not clip (its target sums several clipped steps); the unrolled one clips every step.
        self.clip = update.clip if update.mode == "fedsgd" or self.objective == "unrolled" else None
        self.steps, self.lr = update.local_steps, update.lr
        # The image shape is part of the architecture the server knows, never the private batch's.
        self.shape = (self.batch, *view.input_shape)

    def backend(self) -> contextlib.AbstractContextManager:
        """oneDNN convolutions pay a fixed cost per call that dominates on tiny models (LeNet's closure
        runs 1.7x faster without them on 2 cores), so small models use PyTorch's native kernels."""
        small = sum(p.numel() for p in self.params) < SMALL_MODEL_PARAMS
        if small and self.device.type == "cpu":
            return _without_onednn()
        return contextlib.nullcontext()

    def gradients(self, x: torch.Tensor, label: torch.Tensor, soft: bool) -> tuple[torch.Tensor, ...]:
        """The dummy batch's counterpart of the target (differentiable in ``x`` and a soft ``label``)."""
        if self.objective == "unrolled":
            return self._unrolled(x, label, soft)
        return self._step_gradient(self.params, x, label, soft)

    def gradients_and_features(self, x: torch.Tensor, label: torch.Tensor,
                               soft: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """``gradients`` and the fc layer's input for ``x`` at the update's point (differentiable in ``x``)."""
        captured: list[torch.Tensor] = []
        handle = self.model.fc.register_forward_pre_hook(
            lambda _module, args: captured.append(args[0]) if not captured else None)
        try:
            grads = self.gradients(x, label, soft)
        finally:
            handle.remove()
        return grads, captured[0]

    def _step_gradient(self, params: list[torch.Tensor], x: torch.Tensor, label: torch.Tensor,
                       soft: bool) -> tuple[torch.Tensor, ...]:
        if params is self.params:
            out = self.model(x)
        else:
            out = functional_call(self.model, dict(zip(self.names, params)), (x,))
        if soft:  # a learnable label: softmax over free logits, as DLG does
            loss = torch.mean(torch.sum(-torch.softmax(label, -1) * torch.log_softmax(out, -1), -1))
        else:
            loss = nn.functional.cross_entropy(out, label)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return tuple(clip_by_global_norm(grads, self.clip))  # the protocol's clipping, as the client did

    def _unrolled(self, x: torch.Tensor, label: torch.Tensor, soft: bool) -> tuple[torch.Tensor, ...]:
        """(θ_global − θ_T) / (T · lr) after the client's T clipped SGD steps on the dummy batch, kept in the
        graph. Summed step by step rather than subtracted at the end, which would cancel digits."""
        params: list[torch.Tensor] = list(self.params)
        total: list[torch.Tensor] | None = None
        for _ in range(self.steps):
            grads = self._step_gradient(params, x, label, soft)
            total = list(grads) if total is None else [t + g for t, g in zip(total, grads)]
            params = [p - self.lr * g for p, g in zip(params, grads)]
        assert total is not None
        return tuple(t / self.steps for t in total)

    def received(self) -> Received:
        """What a matcher is fitted on: the architecture at the update's point and the received update."""
        return Received(self.model, dict(zip(self.names, self.targets)), self.batch, self.mode)

    def fc_weight_target(self) -> torch.Tensor:
        fc = self.model.fc.weight
        return self.targets[[i for i, p in enumerate(self.params) if p is fc][0]]


def infer_labels(problem: MatchingProblem) -> torch.Tensor:
    """iDLG: the true label's row of the fc weight gradient is the only negative one, because the
    features feeding fc are non-negative (sigmoid or ReLU). For B > 1, the B most negative rows."""
    row_sums = problem.fc_weight_target().sum(dim=1)
    order = torch.argsort(row_sums)
    labels = order[: problem.batch]
    return labels.to(problem.device).long()
