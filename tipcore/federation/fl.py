"""One federated round from the victim client's side, and the exact message the server receives.

The client trains on its private batch and sends a ``SharedUpdate``: named tensors plus public metadata.
FedSGD sends the gradient of the batch loss; FedAvg runs local SGD steps and sends θ_global − θ_local
(gradient-aligned, as the TIP authors' attack uses it). The private batch lives only in ``ClientContext``,
which defenses see and attacks never do: attacks get a ``ServerView`` and the ``SharedUpdate``.
The round runs the model in eval() mode (BatchNorm on running statistics), as the paper's attack study does,
so the update never changes BN buffers (the multi-round simulator, ``tipcore.studies.flsim``, trains in train() mode
and averages the buffers). Labels reach the server only through ``SharedUpdate.labels`` and only when the
threat model says so (``AttackerCapabilities.labels_known``, read through ``ServerView.known_labels``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from tipcore.federation import models
# The round's config and its limits are declared torch-free in specs.py (the CLI and presets read them).
from tipcore.federation.specs import MAX_BATCH, MAX_LR, MODES, Mode, RoundConfig  # noqa: F401


@dataclass(frozen=True)
class SharedUpdate:
    """Exactly what the honest-but-curious server receives."""

    mode: Mode
    tensors: Mapping[str, torch.Tensor]  # gradient (fedsgd) or θ_global − θ_local (fedavg), per parameter
    num_examples: int
    local_steps: int
    lr: float
    labels: tuple[int, ...] | None = None  # only when the threat model shares them
    clip: float | None = None  # the protocol's clipping norm: public, like lr and the step count

    def with_tensors(self, tensors: Mapping[str, torch.Tensor]) -> "SharedUpdate":
        return replace(self, tensors=dict(tensors))

    def as_gradient(self) -> dict[str, torch.Tensor]:
        """The update in gradient units: a FedAvg difference divided by (steps × lr)."""
        scale = 1.0 if self.mode == "fedsgd" else 1.0 / (self.local_steps * self.lr)
        return {k: v * scale for k, v in self.tensors.items()}


@dataclass(frozen=True)
class AttackerCapabilities:
    """What the threat model grants the server beyond the architecture, the weights and the protocol."""

    labels_known: bool = False  # the client's labels travel with its update (``SharedUpdate.labels``)


@dataclass(frozen=True)
class ServerView:
    """The attacker's knowledge besides the update: the architecture, its input shape and the global weights.

    ``input_shape`` is (channels, height, width) of one input image: part of the architecture, so public.
    None takes the shape the model declares (``models.ModelSpec.input_shape``).
    """

    model_name: str
    num_classes: int
    global_weights: Mapping[str, torch.Tensor]
    capabilities: AttackerCapabilities = field(default_factory=AttackerCapabilities)
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.model_name not in models.MODELS:
            raise ValueError(f"unknown model '{self.model_name}'; choose one of: {', '.join(models.MODELS)}")
        shape = models.MODELS[self.model_name].input_shape if self.input_shape is None else self.input_shape
        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width) of positive sizes, got {shape}")
        object.__setattr__(self, "input_shape", shape)

    def known_labels(self, update: "SharedUpdate") -> tuple[int, ...] | None:
        """The labels this server is allowed to use: the update's, and only when the threat model grants them.

        The one place attacks get labels from: without ``labels_known`` the update's ``labels`` field is
        not even looked at, so labels a message happens to carry never leak into a blind attacker.
        """
        if not self.capabilities.labels_known:
            return None
        if update.labels is None:
            raise ValueError("the threat model says the server knows the labels, but the update carries none "
                             "(share them: client_update(..., share_labels=True))")
        if len(update.labels) != update.num_examples:
            raise ValueError(f"the update carries {len(update.labels)} labels for {update.num_examples} examples")
        return tuple(int(v) for v in update.labels)

    def build_model(self) -> nn.Module:
        model = models.build(self.model_name, num_classes=self.num_classes)
        model.load_state_dict(self.global_weights)
        return model.eval()


@dataclass(frozen=True)
class ClientContext:
    """Private to the client: only defenses see it."""

    model: nn.Module  # the model the update refers to: θ_global (fedsgd) or θ_local (fedavg)
    global_model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    round: RoundConfig
    generator: torch.Generator
    # Indices into x of each local step's mini-batch, in order (the FL simulator's epochs over a shard);
    # None: every step uses the whole of x, as client_update does. A defense that replaces the local
    # training (DP-SGD) replays exactly these steps.
    batches: tuple[torch.Tensor, ...] | None = None


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def clip_by_global_norm(grads: Sequence[torch.Tensor], clip: float | None, *,
                        per_problem: bool = False) -> Sequence[torch.Tensor]:
    """g · min(1, C / (‖g‖₂ + 1e-6)) over all tensors together, as the paper's clipping: the client's, and
    the attacker's on its dummy gradient (differentiable). With ``per_problem`` the tensors hold N
    problems stacked on their first axis, each clipped by its own norm (the batched attack)."""
    if clip is None:
        return grads
    if per_problem:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]),
                                        dim=0)
        factor = torch.clamp(clip / (norm + 1e-6), max=1.0)
        return [g * factor.view(-1, *([1] * (g.ndim - 1))) for g in grads]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = torch.clamp(clip / (norm + 1e-6), max=1.0)
    return [g * factor for g in grads]


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float | None = None) -> list[torch.Tensor]:
    """∇θ of the mean cross-entropy over the batch, clipped to global norm ``clip``."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():  # callers may sit inside torch.no_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        grads = list(torch.autograd.grad(loss, params))
    return clip_by_global_norm(grads, clip)


def local_sgd(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float,
              clip: float | None) -> None:
    """Plain SGD in place: gradients fresh every step (no accumulation), no momentum, no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    for xb, yb in batches:
        grads = batch_gradient(model, xb, yb, clip)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-lr)


def client_update(global_model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: RoundConfig, *,
                  generator: torch.Generator, share_labels: bool = False) -> tuple[SharedUpdate, ClientContext]:
    """Run the victim's round on its private batch; return what it would send and its private context."""
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected images [B, 3, H, W] and B labels, got {tuple(x.shape)} and {tuple(y.shape)}")
    global_model = copy.deepcopy(global_model).eval()
    names = trainable_names(global_model)
    if cfg.mode == "fedsgd":
        grads = batch_gradient(global_model, x, y, cfg.clip)
        tensors = {n: g.detach() for n, g in zip(names, grads)}
        local_model = global_model
    else:
        local_model = copy.deepcopy(global_model)
        local_sgd(local_model, ((x, y) for _ in range(cfg.local_steps)), cfg.lr, cfg.clip)
        before, after = dict(global_model.named_parameters()), dict(local_model.named_parameters())
        tensors = {n: (before[n] - after[n]).detach() for n in names}
    update = SharedUpdate(
        mode=cfg.mode, tensors=tensors, num_examples=int(x.shape[0]), local_steps=cfg.steps, lr=cfg.lr,
        labels=tuple(int(v) for v in y.tolist()) if share_labels else None, clip=cfg.clip,
    )
    ctx = ClientContext(model=local_model, global_model=global_model, x=x, y=y, round=cfg, generator=generator)
    return update, ctx


def apply_update(global_model: nn.Module, update: SharedUpdate, server_lr: float | None = None) -> nn.Module:
    """The server's step with one client's update: θ_g − U (FedAvg) or θ_g − lr·U (FedSGD); a new module."""
    model = copy.deepcopy(global_model)
    lr = update.lr if server_lr is None else server_lr
    scale = 1.0 if update.mode == "fedavg" else lr
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in update.tensors:
                p.sub_(update.tensors[name].to(p.device), alpha=scale)
    return model
