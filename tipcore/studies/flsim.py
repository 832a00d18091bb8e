"""A multi-round FedAvg simulation on the bundled digits: what each defense costs in accuracy.

K clients hold class-balanced IID shards of the 4,000 training digits. Every round each client trains
E local epochs (mini-batches of B, global-norm clipping C, plain SGD), computes U = θ_g − θ, applies
the defense with its own data as private context (TIP takes one Grad-CAM sample per distinct label,
n_cam up to 10, and T = E·ceil(N/B) steps in its calibration), and the server averages the updates
weighted by sample count. Accuracy is measured on the 1,000 held-out digits after every round.

Clients train in train() mode, so BatchNorm normalises with batch statistics and updates its running
statistics as any FedAvg client does; the server averages those buffers (running mean and variance,
weighted by sample count; the batch counter likewise, rounded) next to the defended parameter update.
The buffers travel as they are: no defense of the project touches them (see ``tipcore.defenses.dp``).
The defense sees the client's model in eval() mode and the exact mini-batch schedule of its round
(``ClientContext.batches``), so DP-SGD replays the same steps and adds the noise it reports.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Generator, Iterable, Mapping

import torch
from torch import nn

from tipcore import defenses
from tipcore.federation import data, models
from tipcore.pipeline import update_stats
from tipcore.common.config import from_dict
from tipcore.defenses.base import Defense, DefenseDiagnostics
from tipcore.federation.fl import MAX_LR, ClientContext, RoundConfig, SharedUpdate, local_sgd, trainable_names
from tipcore.common.progress import Event, StopHook, Stopwatch, never_stop
from tipcore.common.seeding import generator
from tipcore.federation.training import accuracy


@dataclass(frozen=True)
class FLConfig:
    model: str = "convnet"
    weights: str = "random"  # "digits": start from the bundled checkpoint (how much do defended rounds cost it?)
    clients: int = 10
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.2  # plain SGD from random init: 0.05 barely leaves chance level in 10 rounds
    clip: float = 5.0
    defense: str = "none"
    defense_cfg: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model '{self.model}'; choose one of: {', '.join(models.MODELS)}")
        if self.weights not in models.WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(models.WEIGHTS)}, got '{self.weights}'")
        if not 1 <= self.clients <= 400:
            raise ValueError(f"clients must be in [1, 400], got {self.clients}")
        if not 1 <= self.rounds <= 10_000:
            raise ValueError(f"rounds must be in [1, 10000], got {self.rounds}")
        if not 1 <= self.local_epochs <= 100:
            raise ValueError(f"local_epochs must be in [1, 100], got {self.local_epochs}")
        if not 1 <= self.batch_size <= 64:
            raise ValueError(f"batch_size must be in [1, 64], got {self.batch_size}")
        if not 0 < self.lr <= MAX_LR:  # the round's bound: a larger step only overflows the weights
            raise ValueError(f"lr must be > 0 and <= {MAX_LR:g}, got {self.lr}")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")
        if self.defense not in defenses.DEFENSES:
            raise ValueError(f"unknown defense '{self.defense}'; choose one of: {', '.join(defenses.DEFENSES)}")
        from_dict(defenses.DEFENSES[self.defense].config_cls, self.defense_cfg)


@dataclass(frozen=True)
class RoundResult:
    round: int
    accuracy: float
    elapsed_s: float
    # What the round's clients sent, measured by the simulator (it holds the clean and the defended update):
    # the defense's unit-free noise strength (tipcore.defenses.calibration.relative_noise; None without noise) and the
    # noise-to-signal ratio on the perturbed slices, both averaged over the round's clients.
    noise_rel: float | None = None
    noise_to_signal: float | None = None


@dataclass(frozen=True)
class FLResult:
    config: FLConfig
    initial_accuracy: float
    rounds: tuple[RoundResult, ...]
    stopped: bool

    def as_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "initial_accuracy": self.initial_accuracy,
                "accuracy": [r.accuracy for r in self.rounds], "stopped": self.stopped,
                "noise_rel": [r.noise_rel for r in self.rounds],
                "noise_to_signal": [r.noise_to_signal for r in self.rounds],
                "seconds": self.rounds[-1].elapsed_s if self.rounds else 0.0}


def shards(y: torch.Tensor, clients: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Class-balanced IID split: each class's indices shuffled and dealt round-robin to the clients."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(clients)]
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for k in range(clients):
            parts[k].append(idx[k::clients])
    return [torch.cat(p) for p in parts]


def epoch_batches(size: int, cfg: FLConfig, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One client's local mini-batches for a round: E shuffled passes over its ``size`` examples."""
    batches: list[torch.Tensor] = []
    for _ in range(cfg.local_epochs):
        order = torch.randperm(size, generator=gen)
        batches += [order[i: i + cfg.batch_size] for i in range(0, size, cfg.batch_size)]
    return tuple(batches)


@dataclass(frozen=True)
class ClientRound:
    """What one client sends the server in a round: the defended update and its BatchNorm buffers."""

    update: SharedUpdate
    buffers: Mapping[str, torch.Tensor]  # every buffer of the locally trained model (running stats, counters)
    diagnostics: DefenseDiagnostics  # the defense's own record (e.g. DP's sigma_per_step)
    round_config: RoundConfig  # the client's round as the defense saw it (its T = local steps)
    noise_to_signal: float = 0.0  # ‖defended − clean‖ / ‖clean‖ on the perturbed slices (simulator's view)


def client_round(global_model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, batches: tuple[torch.Tensor, ...],
                 cfg: FLConfig, defense: Defense, noise_gen: torch.Generator) -> ClientRound:
    """One client's round: local SGD in train() mode over ``batches`` (indices into xs), the defense with
    the round's own context, and the client's BatchNorm buffers after training."""
    names = trainable_names(global_model)
    local = copy.deepcopy(global_model).train()
    local_sgd(local, ((xs[b], ys[b]) for b in batches), cfg.lr, cfg.clip)
    local.eval()  # the defense explains and inspects the trained model; its passes must not move BN statistics
    buffers = {n: b.detach().clone() for n, b in local.named_buffers()}
    before, after = dict(global_model.named_parameters()), dict(local.named_parameters())
    update = SharedUpdate("fedavg", {n: (before[n] - after[n]).detach() for n in names}, len(xs),
                          len(batches), cfg.lr, clip=cfg.clip)
    round_cfg = RoundConfig(mode="fedavg", batch_size=cfg.batch_size, local_steps=len(batches), lr=cfg.lr,
                            clip=cfg.clip)
    ctx = ClientContext(local, global_model, xs, ys, round_cfg, noise_gen, batches=batches)
    defended, diagnostics = defense.protect(update, ctx)
    ratio = update_stats.noise_to_signal(dict(update.tensors), dict(defended.tensors))["noise_to_signal"]
    return ClientRound(defended, buffers, diagnostics, round_cfg, ratio)


def aggregate(global_model: nn.Module, results: Iterable[ClientRound], total_examples: int) -> None:
    """FedAvg's server step in place: θ_g − Σ_k (n_k / n) U_k, and every buffer the n_k-weighted mean of the
    clients' (integer buffers, BatchNorm's batch counter, rounded to the nearest integer). ``results`` may be
    a generator (one client's update is held at a time), so n, the round's total, is given up front."""
    update_sum = {n: torch.zeros_like(p) for n, p in global_model.named_parameters()}
    buffer_sum = {n: torch.zeros_like(b, dtype=torch.float64) for n, b in global_model.named_buffers()}
    seen = 0
    for client in results:
        n_k = client.update.num_examples
        seen += n_k
        for name, acc in update_sum.items():
            if name in client.update.tensors:
                acc += client.update.tensors[name] * (n_k / total_examples)
        for name, acc in buffer_sum.items():
            acc += client.buffers[name].double() * (n_k / total_examples)
    if seen != total_examples:
        raise ValueError(f"the clients' updates cover {seen} examples, not the {total_examples} announced")
    with torch.no_grad():
        for name, p in global_model.named_parameters():
            p.sub_(update_sum[name])
        for name, b in global_model.named_buffers():
            b.copy_(buffer_sum[name] if b.is_floating_point() else buffer_sum[name].round())


def simulate(cfg: FLConfig, *, should_stop: StopHook = never_stop) -> Generator[Event, None, FLResult]:
    """Yields a minor event after each client's update and one per round (payload: its ``RoundResult``);
    checks ``should_stop`` before every client update. A round stopped part-way is not applied: the result
    holds the rounds completed."""
    x_train, y_train = data.load_digits("train")
    x_test, y_test = data.load_digits("test")
    global_model = models.build(cfg.model, weights=cfg.weights, seed=cfg.seed).eval()
    split = shards(y_train, cfg.clients, generator(cfg.seed, "fl-split"))
    batch_gen = generator(cfg.seed, "fl-batches")
    noise_gen = generator(cfg.seed, "defense")
    defense = defenses.create(cfg.defense, defenses.bind_round(cfg.defense, cfg.defense_cfg, RoundConfig(clip=cfg.clip)))
    watch = Stopwatch()
    results: list[RoundResult] = []
    initial = accuracy(global_model, x_test, y_test)
    total_updates = cfg.rounds * len(split)

    def event(done: int, message: str, **kw: Any) -> Event:
        return watch.event(f"FedAvg {cfg.defense}", done, total_updates, "client update", message, **kw)

    for rnd in range(1, cfg.rounds + 1):
        clients: list[ClientRound] = []
        for k, shard in enumerate(split):
            if should_stop():
                return FLResult(cfg, initial, tuple(results), True)
            clients.append(client_round(global_model, x_train[shard], y_train[shard],
                                        epoch_batches(len(shard), cfg, batch_gen), cfg, defense, noise_gen))
            yield event((rnd - 1) * len(split) + k + 1, f"round {rnd}/{cfg.rounds}, client {k + 1}/{len(split)}",
                        minor=True)
        aggregate(global_model, clients, sum(len(s) for s in split))
        spec = defenses.DEFENSES[cfg.defense]
        rel = [spec.relative_noise(c.diagnostics, c.round_config) for c in clients]
        rel = [v for v in rel if v is not None]
        ratios = [c.noise_to_signal for c in clients if math.isfinite(c.noise_to_signal)]
        result = RoundResult(rnd, accuracy(global_model, x_test, y_test), watch.elapsed(),
                             sum(rel) / len(rel) if rel else None, sum(ratios) / len(ratios) if ratios else None)
        results.append(result)
        yield event(rnd * len(split), f"round {rnd}/{cfg.rounds}  accuracy {result.accuracy:.3f}", payload=result)
    return FLResult(cfg, initial, tuple(results), False)
