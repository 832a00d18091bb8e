"""Explicit randomness: one seed per run, one independent generator per pipeline stage.

Each stage's generator is derived from (seed, stage name), so adding a stage never shifts the random
numbers another stage draws, and the same seed always gives the same result.
"""

from __future__ import annotations

import hashlib

import torch


def stage_seed(seed: int, stage: str) -> int:
    """A 63-bit seed that depends only on the run seed and the stage name."""
    digest = hashlib.sha256(f"{int(seed)}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, stage: str, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(stage_seed(seed, stage))
    return gen


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes the GPU when there is one, the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but no CUDA GPU is available; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got '{name}'")
    return torch.device(name)
