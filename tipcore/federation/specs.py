"""The round's and the models' declarations, torch-free: ``RoundConfig``, the modes, ``MODELS`` and ``WEIGHTS``.

What a command line, a preset or a study needs to name and check before anything is computed lives here,
so ``python -m tipcore attack --help`` (whose flags list the models and modes) and the presets load no
torch. ``tipcore.federation.fl`` and ``tipcore.federation.models`` re-export every name, which is where
the rest of the engine takes them from; a model's class is imported, with torch, only when one is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:
    from torch import nn

Mode = Literal["fedsgd", "fedavg"]
MODES: tuple[str, ...] = ("fedsgd", "fedavg")
MAX_BATCH = 64
# The largest client learning rate a round takes. Local SGD at 1e300 overflowed inside the first step; any
# rate past this one only blows the weights up, and no FL protocol this project models uses one.
MAX_LR = 100.0


@dataclass(frozen=True)
class RoundConfig:
    """How the victim computes its update. FedAvg: ``local_steps`` full-batch SGD steps at ``lr``;
    ``clip`` is the global L2 norm each step's gradient is clipped to (None: no clipping)."""

    mode: Mode = "fedsgd"
    batch_size: int = 1
    local_steps: int = 1
    lr: float = 1e-3
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if not 1 <= self.local_steps <= 1000:
            raise ValueError(f"local_steps must be in [1, 1000], got {self.local_steps}")
        if self.mode == "fedsgd" and self.local_steps != 1:
            raise ValueError(f"local_steps must be 1 in fedsgd mode, got {self.local_steps}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"lr must be > 0 and <= {MAX_LR:g}, got {self.lr}")
        if self.clip is not None and not 0 < self.clip < math.inf:
            raise ValueError(f"clip must be a finite number > 0 (or None for no clipping), got {self.clip}")

    @property
    def steps(self) -> int:
        """T, the number of SGD steps behind the update (1 in FedSGD)."""
        return self.local_steps if self.mode == "fedavg" else 1


@dataclass(frozen=True)
class Architecture:
    """A model class of ``tipcore.federation.models`` by name, as a factory: calling it imports that module
    (and torch) and builds the model, so the registry below can be read without either."""

    class_name: str

    def __call__(self, num_classes: int) -> "nn.Module":
        from tipcore.federation import models

        return getattr(models, self.class_name)(num_classes)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[[int], "nn.Module"]  # a model class, or an Architecture naming one
    description: str
    cpu_attack_ms: float  # rough cost of one inversion step on 2 CPU cores, for the app's time estimates
    input_shape: tuple[int, int, int] = (3, 32, 32)  # (C, H, W) the architecture expects: public, like the layers


MODELS: dict[str, ModelSpec] = {
    "lenet": ModelSpec("lenet", Architecture("LeNet"), "DLG paper's LeNet (3 sigmoid convs, 12 channels, 5x5)", 5.0),
    "convnet": ModelSpec("convnet", Architecture("ConvNet"), "small ReLU ConvNet (4 convs, 3x3, about 75k parameters)",
                         8.0),
    "resnet18": ModelSpec("resnet18", Architecture("ResNet18"), "CIFAR ResNet-18 (20 conv layers, 11.2M parameters)",
                          200.0),
}
WEIGHTS = ("random", "digits")
# The most output classes a model is built with: ImageNet's 1000, ten times CIFAR-100's. A larger count is no
# dataset this project reads, only a classifier head too big to allocate (10**9 asked for 3 TB).
MAX_CLASSES = 1000
