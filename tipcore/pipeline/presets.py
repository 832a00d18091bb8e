"""Named run settings shared by the CLI (``--preset NAME``) and the app's preset picker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tipcore.attacks.ig import IG_PAPER_PRESET
from tipcore.federation.specs import RoundConfig  # torch-free: --preset and its help load no torch


@dataclass(frozen=True)
class Preset:
    label: str
    description: str
    model: str
    weights: str
    round: RoundConfig
    defenses: tuple[str, ...]  # the comparison the app starts with (the CLI runs the one --defense names)
    defense_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per defense, besides ε, δ
    epsilon: float = 5.0
    delta: float = 1e-5
    attack: str = "idlg"
    attack_options: Mapping[str, Any] = field(default_factory=dict)
    cpu_iterations: int | None = None  # what a CPU-only explorer runs instead of the attack's full budget
    labels_known: bool = False


TIP_DEFAULTS = {"ratio": 0.1, "cutoff": 0.5, "noise": "calibrated"}

PRESETS: dict[str, Preset] = {
    "demo": Preset(
        label="Class demo (LeNet, iDLG, fast)",
        description="the DLG paper's LeNet, FedSGD on one image, clip 5, attacked with iDLG for 50 steps",
        model="lenet", weights="random", round=RoundConfig(mode="fedsgd", local_steps=1, lr=1e-3, clip=5.0),
        defenses=("none", "dp", "tip"), defense_options={"tip": TIP_DEFAULTS},
        attack="idlg", attack_options={"iterations": 50}, labels_known=False,
    ),
    "paper": Preset(
        label="Paper setting (ResNet-18, IG, FedAvg)",
        description="the TIP paper's attack study: CIFAR ResNet-18, one FedAvg update of 4 local steps (lr 1e-3), "
                    "clip 5, Inverting Gradients with the paper's 10,000 iterations (the app's CPU run: 200)",
        model="resnet18", weights="random", round=RoundConfig(mode="fedavg", local_steps=4, lr=1e-3, clip=5.0),
        defenses=("none", "dp_paper", "tip"), defense_options={"tip": TIP_DEFAULTS},
        attack="ig", attack_options=IG_PAPER_PRESET,
        cpu_iterations=200, labels_known=True,
    ),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
