"""No defense: the client sends its update as computed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tipcore.defenses.base import DefenseDiagnostics, register

if TYPE_CHECKING:
    from tipcore.federation.fl import ClientContext, SharedUpdate


@dataclass(frozen=True)
class NoneConfig:
    pass


@register("none", NoneConfig, "no defense: the update is sent as computed", label="No defense")
class NoDefense:
    def __init__(self, config: NoneConfig | None = None) -> None:
        self.config = config or NoneConfig()

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]:
        return update.with_tensors({k: v.clone() for k, v in update.tensors.items()}), DefenseDiagnostics(
            "none", asdict(self.config)
        )

    def describe(self) -> str:
        return ("No defense. The client sends exactly the gradient (FedSGD) or weight difference (FedAvg) "
                "its private batch produced: the baseline every attack is measured against.")
