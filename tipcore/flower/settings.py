"""The public round protocol and the defense choice, checked before any Flower process is involved.

``RoundSettings`` is what the server announces in every train message (learning rate, clipping norm, batch
size, local epochs, examples per round): the client trains with it and the defense calibrates with it, the
same semantics as ``tipcore.studies.flsim``. ``examples_per_round`` N > 0 makes every node train its round
on a seeded sample of N examples of its data (``round_sample``), as a cross-device client does, so a round's
update averages N examples (attackable up to ``MAX_BATCH``); 0 trains on the whole shard. ``check_defense`` rejects an unknown defense, bad options, a budgeted defense whose
calibration clip differs from the round's, and TIP on a model without conv layers, each with a one-line
ValueError, so a launcher can refuse before it starts a process and the ServerApp before its first round.
No flwr import here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn

from tipcore import defenses
from tipcore.common.seeding import generator
from tipcore.federation.fl import MAX_BATCH


@dataclass(frozen=True)
class RoundSettings:
    lr: float = 0.2
    clip: float = 5.0
    batch_size: int = 32
    local_epochs: int = 1
    examples_per_round: int = 0  # N > 0: each node trains its round on a seeded sample of N of its examples

    # Keys in the train ConfigRecord (Flower's convention is kebab-case).
    KEYS = {"lr": "lr", "clip": "clip", "batch_size": "batch-size", "local_epochs": "local-epochs",
            "examples_per_round": "examples-per-round"}
    OPTIONAL = {"examples-per-round": 0}  # absent from a train config (an older ServerApp): the whole shard

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch-size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if not 1 <= self.local_epochs <= 100:
            raise ValueError(f"local-epochs must be in [1, 100], got {self.local_epochs}")
        if not 0 <= self.examples_per_round <= 10**6:
            raise ValueError(f"examples-per-round must be in [0, 1000000] (0: the whole shard), got "
                             f"{self.examples_per_round}")

    def steps(self, num_examples: int) -> int:
        """T = E · ceil(N / B): the SGD steps behind one client's update (TIP's calibration uses it)."""
        return self.local_epochs * math.ceil(num_examples / self.batch_size)

    def to_config(self) -> dict[str, float | int]:
        return {self.KEYS[f.name]: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RoundSettings":
        missing = [key for key in cls.KEYS.values() if key not in config and key not in cls.OPTIONAL]
        if missing:
            raise ValueError(f"the train config lacks {', '.join(missing)}: the ServerApp must send the round's "
                             f"{', '.join(k for k in cls.KEYS.values() if k not in cls.OPTIONAL)}")
        return cls(lr=float(config["lr"]), clip=float(config["clip"]), batch_size=int(config["batch-size"]),
                   local_epochs=int(config["local-epochs"]),
                   examples_per_round=int(config.get("examples-per-round", cls.OPTIONAL["examples-per-round"])))


def round_sample(num_examples: int, settings: RoundSettings, *, seed: int, node: object,
                 server_round: int) -> torch.Tensor | None:
    """The indices (sorted) into a node's ``num_examples`` examples that it trains round ``server_round`` on:
    a sample of ``settings.examples_per_round`` drawn from (run seed, node, round), so the ClientApp that
    trains and the DefenseMod that defends draw the same one. None: the whole shard (``examples_per_round``
    0, or at least the shard's size)."""
    wanted = settings.examples_per_round
    if wanted == 0 or wanted >= num_examples:
        return None
    order = torch.randperm(num_examples, generator=generator(seed, f"flower-round-sample:{node}:{server_round}"))
    return order[:wanted].sort().values


def parse_options(options: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Defense options as given in a run config: a JSON object string (Flower configs hold scalars only)."""
    if options is None or options == "":
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    try:
        parsed = json.loads(options)
    except json.JSONDecodeError as err:
        raise ValueError(f"defense-options must be a JSON object such as '{{\"ratio\": 0.1}}', got {options!r} "
                         f"({err.msg})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"defense-options must be a JSON object such as '{{\"ratio\": 0.1}}', got {options!r}")
    return parsed


def defense_options(name: str, options: str | Mapping[str, Any] | None, clip: float) -> dict[str, Any]:
    """The options the defense is built with: a budgeted defense's calibration clip is the round's clip
    (filled in when absent; a different value is refused, since the calibration would then be wrong)."""
    if name not in defenses.DEFENSES:
        raise ValueError(f"unknown defense '{name}'; choose one of: {', '.join(defenses.DEFENSES)}")
    opts = parse_options(options)
    spec = defenses.DEFENSES[name]
    if spec.uses_budget and "clip" in {f.name for f in fields(spec.config_cls)}:
        given = opts.setdefault("clip", clip)
        if float(given) != float(clip):
            raise ValueError(f"defense option clip={given} differs from the round's clip={clip}: the noise "
                             "calibration assumes the round's clipping norm; drop the option or set both equal")
    return opts


def check_defense(name: str, options: str | Mapping[str, Any] | None, clip: float,
                  model: nn.Module | None = None) -> defenses.base.Defense:
    """Build the defense (unknown name or option: ValueError) and, given the model, check that it applies:
    whatever the defense declares by its ``check_model`` (TIP and its ablations: conv layers of the configured
    ``layers``)."""
    defense = defenses.create(name, defense_options(name, options, clip))
    if model is not None:
        try:
            defenses.check_model(defense, model)
        except ValueError as err:
            raise ValueError(f"defense '{name}' cannot protect this model: {err}") from None
    return defense
