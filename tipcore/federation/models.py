"""The models a victim client trains: the DLG paper's LeNet, a small ReLU ConvNet, CIFAR ResNet-18.

Every model takes images in [0, 1] of shape [B, 3, 32, 32] (``ModelSpec.input_shape``: part of the
architecture, so the server's view reads it there) and exposes ``features(x)`` (the input of the
final linear layer, which Soteria prunes and iDLG reads) and ``fc`` (that linear layer).
``build`` returns a fresh module every call: Grad-CAM hooks, ``eval()`` and TIP all mutate modules, so
cached weights are kept as a read-only state_dict and never handed out as a live module.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from tipcore.common import bundle
# The registry is declared torch-free in specs.py (the CLI's help and the presets read it); re-exported here.
from tipcore.federation.specs import MAX_CLASSES, MODELS, WEIGHTS, ModelSpec  # noqa: F401

CHECKPOINT_DIR = bundle.ASSETS_DIR / "checkpoints"


class LeNet(nn.Module):
    """The DLG paper's LeNet: three 5x5 conv layers of 12 channels with sigmoid, then one linear layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1), nn.Sigmoid(),
        )
        self.fc = nn.Linear(768, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def init_weights(self, gen: torch.Generator) -> None:
        # U(-0.5, 0.5) for every weight and bias, as the DLG / iDLG reference code does: the sigmoid
        # network then has large, informative gradients.
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5, generator=gen)


class ConvNet(nn.Module):
    """A small ReLU ConvNet (four 3x3 convs, about 75k parameters): quick to train and to attack."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.fc = nn.Linear(2 * w * 4 * 4, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def init_weights(self, gen: torch.Generator) -> None:
        _default_init(self, gen)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, 20 conv layers (three of them 1x1 shortcuts)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def init_weights(self, gen: torch.Generator) -> None:
        _default_init(self, gen)


def _default_init(model: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default initialisation, redrawn from an explicit generator so a seed fixes it."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=gen)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def checkpoint_path(name: str) -> Path:
    return CHECKPOINT_DIR / f"{name}_digits.pt"


def build(name: str, *, num_classes: int = 10, weights: str = "random", seed: int = 0) -> nn.Module:
    """A fresh model: random init from ``seed``, or the bundled checkpoint trained on MNIST digits."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got '{weights}'")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    if weights == "digits" and num_classes != 10:
        raise ValueError(f"the digits checkpoints have 10 classes, got num_classes={num_classes}")
    # Layer constructors run PyTorch's default init from the global RNG; fork it so building a model never
    # moves the caller's random stream (every weight is redrawn from an explicit generator below anyway).
    with torch.random.fork_rng(devices=[]):
        model = MODELS[name].factory(num_classes)
    if weights == "random":
        from tipcore.common.seeding import generator

        model.init_weights(generator(seed, f"model-init:{name}"))
    else:
        model.load_state_dict(load_checkpoint(name))
    return model


_CHECKPOINT_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def load_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """The bundled digits checkpoint as a float32 state_dict (cached; callers get the shared tensors,
    which ``load_state_dict`` copies, so the cache is never mutated)."""
    if name not in _CHECKPOINT_CACHE:
        path = checkpoint_path(name)
        if not path.is_file():
            raise ValueError(
                f"no digits checkpoint for '{name}' at {path}; create it with: python -m tipcore train --model {name}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        _CHECKPOINT_CACHE[name] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return _CHECKPOINT_CACHE[name]


def has_checkpoint(name: str) -> bool:
    return checkpoint_path(name).is_file()


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d in ``named_modules`` order (1x1 included): the layers TIP may target."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
