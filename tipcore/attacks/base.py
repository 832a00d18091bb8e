"""What every attack shares: the progress stream, the result, the registry, and the gradient-matching setup.

An attack is a generator: every ``report_every`` steps it yields a ``tipcore.progress.Event`` whose payload
is a ``Snapshot``, checks ``should_stop()`` before each step, and returns an ``AttackResult``. The CLI and
the app consume the same stream through ``tipcore.progress.drive``.
Attacks receive a ``ServerView`` and a ``SharedUpdate`` and nothing else: no private image, no client context.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generator, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from tipcore.config import create_registered
from tipcore.progress import Event, StopHook, drive, never_stop  # noqa: F401  (drive, never_stop re-exported)
from tipcore.fl import ServerView, SharedUpdate

SMALL_MODEL_PARAMS = 1_000_000


@dataclass(frozen=True)
class Snapshot:
    step: int
    loss: float
    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]
    elapsed_s: float
    eta_s: float
    restart: int = 0


@dataclass(frozen=True)
class AttackResult:
    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]
    labels: tuple[int, ...]
    iterations: int  # optimisation steps of the run that produced ``images`` (L-BFGS: outer steps)
    restarts: int  # how many times a diverging run was restarted with fresh random numbers
    seconds: float
    stopped: bool
    final_loss: float
    diverged: bool = False  # still diverging after the last allowed restart
    evaluations: int = 0  # gradient-matching loss evaluations (L-BFGS closure calls), all runs together
    history: tuple[Snapshot, ...] = ()
    match: str = "all"  # what the attacker matched (tipcore.attacks.matching)
    flagged: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # drop: conv layer -> channels left out


AttackStream = Generator[Event, None, AttackResult]


def snapshot_event(snap: Snapshot, total: int) -> Event:
    """The progress event of an attack snapshot: ``snap.step`` of ``total`` steps, the snapshot as payload."""
    message = f"loss {snap.loss:.4g}" + (f"  restart {snap.restart}" if snap.restart else "")
    return Event("attack", snap.step, total, "step", message, snap.elapsed_s, snap.eta_s, payload=snap)


class Attack(Protocol):
    name: ClassVar[str]

    def reconstruct(self, view: ServerView, update: SharedUpdate, *, generator: torch.Generator,
                    should_stop: StopHook = never_stop, report_every: int = 10) -> AttackStream: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class AttackSpec:
    name: str
    config_cls: type
    factory: Callable[[Any], Attack]
    summary: str


ATTACKS: dict[str, AttackSpec] = {}


def register(name: str, config_cls: type, summary: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        cls.name = name
        ATTACKS[name] = AttackSpec(name, config_cls, cls, summary)
        return cls

    return decorate


def create(name: str, options: Mapping[str, Any] | None = None) -> Attack:
    return create_registered(ATTACKS, "attack", name, options)


def register_adaptive_variants(base: str, cls: type, config_cls: type) -> None:
    """Register ``{base}_{mode}`` for every adaptive matcher: the same attack whose config defaults to
    that matcher, so the CLI and the app can name the adaptive attacker directly (``idlg_drop``)."""
    from dataclasses import field as dc_field, make_dataclass

    from tipcore.attacks.matching import ADAPTIVE_MODES, MATCH_SUMMARIES

    for mode in ADAPTIVE_MODES:
        name = f"{base}_{mode}"
        variant_cfg = make_dataclass(f"{config_cls.__name__}_{mode}", [("match", str, dc_field(default=mode))],
                                     bases=(config_cls,), frozen=True)
        variant_cfg.__module__ = config_cls.__module__
        variant = type(f"{cls.__name__}_{mode}", (cls,), {"name": name, "base": base})
        summary = f"{ATTACKS[base].summary.split(':')[0]} + {mode}: {MATCH_SUMMARIES[mode].split(': ', 1)[1]}"
        ATTACKS[name] = AttackSpec(name, variant_cfg, variant, summary)


ATTACK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}  # base attack -> preset name -> options


def preset_options(attack: str, preset: str) -> dict[str, Any]:
    """A named set of options for an attack or any of its adaptive variants (``ig_drop`` uses ``ig``'s)."""
    presets = ATTACK_PRESETS.get(base_attack(attack), {})
    if preset not in presets:
        known = ", ".join(f"{b}: {', '.join(p)}" for b, p in ATTACK_PRESETS.items()) or "none"
        raise ValueError(f"attack '{attack}' has no preset '{preset}' (presets: {known})")
    return dict(presets[preset])


def base_attack(name: str) -> str:
    """The naive attack an adaptive variant is built on (``idlg_drop`` -> ``idlg``)."""
    return getattr(ATTACKS[name].factory, "base", name)


def to_images(x: torch.Tensor) -> np.ndarray:
    return x.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


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


OBJECTIVES: tuple[str, ...] = ("auto", "gradient", "unrolled")


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
        if self.clip is not None:
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            factor = torch.clamp(self.clip / (norm + 1e-6), max=1.0)
            grads = tuple(g * factor for g in grads)
        return grads

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
