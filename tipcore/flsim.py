"""A multi-round FedAvg simulation on the bundled digits: what each defense costs in accuracy.

K clients hold class-balanced IID shards of the 4,000 training digits. Every round each client trains
E local epochs (mini-batches of B, global-norm clipping C, plain SGD), computes U = θ_g − θ, applies
the defense with its own data as private context (TIP takes one Grad-CAM sample per distinct label,
n_cam up to 10, and T = E·ceil(N/B) steps in its calibration), and the server averages the updates
weighted by sample count. Accuracy is measured on the 1,000 held-out digits after every round.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Generator, Mapping

import torch

from tipcore import data, defenses, models
from tipcore.config import from_dict
from tipcore.fl import ClientContext, RoundConfig, SharedUpdate, local_sgd, trainable_names
from tipcore.progress import Event, StopHook, Stopwatch, never_stop
from tipcore.seeding import generator
from tipcore.training import accuracy


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
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
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


@dataclass(frozen=True)
class FLResult:
    config: FLConfig
    initial_accuracy: float
    rounds: tuple[RoundResult, ...]
    stopped: bool

    def as_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "initial_accuracy": self.initial_accuracy,
                "accuracy": [r.accuracy for r in self.rounds], "stopped": self.stopped,
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
    names = trainable_names(global_model)
    watch = Stopwatch()
    results: list[RoundResult] = []
    initial = accuracy(global_model, x_test, y_test)
    total_updates = cfg.rounds * len(split)

    def event(done: int, message: str, **kw: Any) -> Event:
        return watch.event(f"FedAvg {cfg.defense}", done, total_updates, "client update", message, **kw)

    for rnd in range(1, cfg.rounds + 1):
        total = sum(len(s) for s in split)
        aggregate = {n: torch.zeros_like(p) for n, p in global_model.named_parameters()}
        for k, shard in enumerate(split):
            if should_stop():
                return FLResult(cfg, initial, tuple(results), True)
            xs, ys = x_train[shard], y_train[shard]
            steps = cfg.local_epochs * math.ceil(len(shard) / cfg.batch_size)
            local = copy.deepcopy(global_model)
            batches = []
            for _ in range(cfg.local_epochs):
                order = torch.randperm(len(shard), generator=batch_gen)
                batches += [order[i: i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            local_sgd(local, ((xs[b], ys[b]) for b in batches), cfg.lr, cfg.clip)
            before, after = dict(global_model.named_parameters()), dict(local.named_parameters())
            update = SharedUpdate("fedavg", {n: (before[n] - after[n]).detach() for n in names}, len(shard),
                                  steps, cfg.lr, clip=cfg.clip)
            round_cfg = RoundConfig(mode="fedavg", batch_size=cfg.batch_size, local_steps=steps, lr=cfg.lr, clip=cfg.clip)
            ctx = ClientContext(local, global_model, xs, ys, round_cfg, noise_gen)
            defended, _ = defense.protect(update, ctx)
            for n in names:
                aggregate[n] += defended.tensors[n] * (len(shard) / total)
            yield event((rnd - 1) * len(split) + k + 1, f"round {rnd}/{cfg.rounds}, client {k + 1}/{len(split)}",
                        minor=True)
        with torch.no_grad():
            for n, p in global_model.named_parameters():
                p.sub_(aggregate[n])
        result = RoundResult(rnd, accuracy(global_model, x_test, y_test), watch.elapsed())
        results.append(result)
        yield event(rnd * len(split), f"round {rnd}/{cfg.rounds}  accuracy {result.accuracy:.3f}", payload=result)
    return FLResult(cfg, initial, tuple(results), False)
