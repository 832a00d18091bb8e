"""tipcore: one federated round, the TIP defense and its baselines, and the gradient-inversion attacks.

The public API, for scripts and notebooks (the CLI and the app use the same names)::

    import tipcore

    spec = tipcore.RunSpec(image_ids=("cifar10-00",), round=tipcore.RoundConfig(clip=5.0), defense="tip",
                           defense_cfg={"ratio": 0.1}, attack="idlg_drop", attack_cfg={"iterations": 100})
    record = tipcore.run(spec)            # or: for event in tipcore.stream(spec): ...
    print(record.scores.psnr)
    tipcore.DEFENSES, tipcore.ATTACKS     # the registries; tipcore.PRESETS the named settings

Names are loaded on first use, so ``import tipcore`` (and ``python -m tipcore --help``) stays free of torch.
The engine never imports streamlit. docs/ARCHITECTURE.md says where each concept lives.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_PUBLIC = {
    "RunSpec": ("tipcore.pipeline.runspec", "RunSpec"),
    "ImageSource": ("tipcore.pipeline.runspec", "ImageSource"),
    "validate_pixels": ("tipcore.pipeline.runspec", "validate_pixels"),
    "RoundConfig": ("tipcore.federation.fl", "RoundConfig"),
    "run": ("tipcore.pipeline.experiment", "run"),
    "stream": ("tipcore.pipeline.experiment", "stream"),
    "stream_comparison": ("tipcore.pipeline.experiment", "stream_comparison"),
    "load_run": ("tipcore.pipeline.experiment", "load_run"),
    "artifact_files": ("tipcore.pipeline.experiment", "artifact_files"),
    "DEFENSES": ("tipcore.defenses", "DEFENSES"),
    "ATTACKS": ("tipcore.attacks", "ATTACKS"),
    "MODELS": ("tipcore.federation.models", "MODELS"),
    "PRESETS": ("tipcore.pipeline.presets", "PRESETS"),
    "knob": ("tipcore.common.knobs", "knob"),
    "register_defense": ("tipcore.defenses.base", "register"),
    "StopToken": ("tipcore.common.progress", "StopToken"),
    "Event": ("tipcore.common.progress", "Event"),
    "drive": ("tipcore.common.progress", "drive"),
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'tipcore' has no attribute '{name}'")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
