"""Training the bundled digits checkpoints (``python -m tipcore train``) and measuring accuracy.

Data: the 5,000 real MNIST digits bundled in assets/digits (4,000 train, 1,000 held out), padded to
32x32 RGB. Adam, seeded shuffling, eval-mode accuracy on the held-out digits. Checkpoints are stored in
float16 (half the size; ``models.load_checkpoint`` casts back to float32).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Generator

import torch
from torch import nn

from tipcore.federation import data, models
from tipcore.common.progress import Event, StopHook, Stopwatch, never_stop
from tipcore.common.seeding import generator

DEFAULT_EPOCHS = {"lenet": 30, "convnet": 10, "resnet18": 1}


@dataclass(frozen=True)
class TrainProgress:
    epoch: int
    epochs: int
    loss: float
    test_accuracy: float
    elapsed_s: float


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i: i + batch]).argmax(1) == y[i: i + batch]).sum())
    model.train(was_training)
    return correct / len(x)


@dataclass(frozen=True)
class Trained:
    """What ``train`` returns, stopped or not: the model as trained so far (eval mode) and how far it got."""

    model: nn.Module
    steps: int
    epochs_completed: int
    stopped: bool
    history: tuple[TrainProgress, ...]  # one per completed epoch


def train(name: str, epochs: int | None = None, *, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
          should_stop: StopHook = never_stop) -> Generator[Event, None, Trained]:
    """Adam on the bundled digits. Yields a minor event per step and one per epoch (payload: its
    ``TrainProgress``); checks ``should_stop`` before every step and returns what was trained."""
    epochs = epochs or DEFAULT_EPOCHS[name]
    if not 1 <= epochs <= 200:
        raise ValueError(f"epochs must be in [1, 200], got {epochs}")
    model = models.build(name, seed=seed)
    x_train, y_train = data.load_digits("train")
    x_test, y_test = data.load_digits("test")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = generator(seed, "train-shuffle")
    watch = Stopwatch()
    per_epoch = math.ceil(len(x_train) / batch_size)
    total_steps, steps = epochs * per_epoch, 0
    history: list[TrainProgress] = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(order), batch_size):
            if should_stop():
                return Trained(model.eval(), steps, len(history), True, tuple(history))
            idx = order[i: i + batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            steps += 1
            yield watch.event("training", steps, total_steps, "step", f"epoch {epoch}/{epochs}  loss {total / seen:.4f}",
                              minor=True)
        progress = TrainProgress(epoch, epochs, total / len(x_train), accuracy(model, x_test, y_test), watch.elapsed())
        history.append(progress)
        yield watch.event("training", steps, total_steps, "step",
                          f"epoch {epoch}/{epochs}  loss {progress.loss:.4f}  held-out accuracy {progress.test_accuracy:.3f}",
                          payload=progress)
    return Trained(model.eval(), steps, len(history), False, tuple(history))


def save_checkpoint(name: str, model: nn.Module, meta: dict) -> None:
    path = models.checkpoint_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
