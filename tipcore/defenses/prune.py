"""Magnitude gradient pruning (as in the DLG paper's defense study): zero the smallest entries."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tipcore.defenses.base import DefenseDiagnostics, register
from tipcore.common.knobs import check, knob

if TYPE_CHECKING:
    import torch

    from tipcore.federation.fl import ClientContext, SharedUpdate


@dataclass(frozen=True)
class PruneConfig:
    ratio: float = knob(0.7, "Pruned fraction", "fraction of each tensor's entries, smallest |value| first, set to "
                        "zero", low=0.0, high=1.0, role="strength", grid=(0.3, 0.7, 0.9, 0.99))

    def __post_init__(self) -> None:
        check(self)


def prune_tensor(t: torch.Tensor, ratio: float) -> torch.Tensor:
    import torch

    k = int(round(ratio * t.numel()))
    if k <= 0:
        return t.clone()
    if k >= t.numel():
        return torch.zeros_like(t)
    flat = t.reshape(-1)
    drop = torch.topk(flat.abs(), k, largest=False).indices
    out = flat.clone()
    out[drop] = 0
    return out.view_as(t)


@register("prune", PruneConfig, "magnitude pruning: zero the smallest entries of every tensor",
          label="Pruning")
class Prune:
    def __init__(self, config: PruneConfig | None = None) -> None:
        self.config = config or PruneConfig()

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]:
        tensors = {n: prune_tensor(t, self.config.ratio) for n, t in update.tensors.items()}
        zeros = sum(int((t == 0).sum()) for t in tensors.values())
        total = sum(t.numel() for t in tensors.values())
        return update.with_tensors(tensors), DefenseDiagnostics(
            "prune", asdict(self.config), summary={"zero_fraction": zeros / max(total, 1)}
        )

    def describe(self) -> str:
        return ("Gradient pruning. In every tensor of the update, the given fraction of entries with the "
                "smallest magnitude is set to zero before sending. It removes information without adding "
                "noise; the DLG paper found attacks fail once roughly 20% or more is pruned on small nets.")
