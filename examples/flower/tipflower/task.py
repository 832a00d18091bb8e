"""The learning task both apps share: the digits ConvNet, each node's shard, local training, evaluation.

Semantics mirror ``tipcore.studies.flsim`` (the project's own simulator), so the curves are comparable: K
class-balanced IID shards of the 4,000 bundled training digits (shard k goes to the node whose node config
says ``partition-id=k num-partitions=K``), E local epochs of shuffled mini-batches of B with plain SGD and
global-norm clipping C, accuracy on the 1,000 held-out digits. Nothing is downloaded.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import nn

from tipcore.federation import data, models
from tipcore.federation.fl import local_sgd
from tipcore.studies.flsim import shards
from tipcore.common.seeding import generator
from tipcore.federation.training import accuracy

# Each SuperNode's ClientApp process is one client: one thread keeps K nodes on a small machine from
# oversubscribing its cores (TIPFLOWER_THREADS overrides it).
torch.set_num_threads(int(os.environ.get("TIPFLOWER_THREADS", "1")))


class MLP(nn.Module):
    """A conv-free baseline (DP and no defense work on it; TIP refuses it at start: it has no channels)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3 * 32 * 32, 128)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc1(x.flatten(1))))


MODEL_NAMES = (*models.MODELS, "mlp")


def build_model(name: str, seed: int = 0) -> nn.Module:
    if name == "mlp":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP().eval()
    if name not in models.MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODEL_NAMES)}")
    return models.build(name, seed=seed).eval()


@lru_cache(maxsize=4)
def load_partition(partition_id: int, num_partitions: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's private shard (cached: the ClientApp and the DefenseMod both ask for it)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    # The split needs the labels only; the images are built for this shard alone (a fresh ClientApp
    # process loads it every round, so building all 4,000 and indexing cost a K-node round K times over).
    shard = shards(data.digit_labels("train"), num_partitions, generator(seed, "fl-split"))[partition_id]
    return data.load_digits("train", rows=shard)


@lru_cache(maxsize=1)
def load_test() -> tuple[torch.Tensor, torch.Tensor]:
    return data.load_digits("test")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
          clip: float, gen: torch.Generator) -> int:
    """E epochs of shuffled mini-batches, in place; returns the number of SGD steps."""
    batches = []
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        batches += [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    local_sgd(model, ((x[b], y[b]) for b in batches), lr, clip)
    return len(batches)


def evaluate(model: nn.Module) -> float:
    x, y = load_test()
    with torch.no_grad():
        return accuracy(model, x, y)
