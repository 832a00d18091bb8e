"""Soteria (Sun et al., CVPR 2021): prune the fc layer's input representation where it leaks most.

As the original Soteria code does: for each feature f of the representation r = features(x) that feeds
the final linear layer, score_f = Σ_b ‖∂r_f/∂x_b‖ / r_{b,f}; the features whose |score| falls below the
``ratio`` percentile are removed from the update by zeroing their columns of the fc weight update. Those
are the features whose value is large relative to how much they move with the input, which the attack
could invert most easily.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tipcore.defenses.base import DefenseDiagnostics, register
from tipcore.common.knobs import check, knob

if TYPE_CHECKING:
    import torch

    from tipcore.federation.fl import ClientContext, SharedUpdate


@dataclass(frozen=True)
class SoteriaConfig:
    ratio: float = knob(0.8, "Pruned features", "fraction of the fc layer's input features pruned, those whose "
                        "perturbation reveals most of the input first", low=0.0, high=1.0, role="strength",
                        grid=(0.3, 0.6, 0.9))
    chunk: int = knob(64, "Chunk", "features differentiated at once (memory versus speed)", low=1, high=4096)
    max_examples: int = knob(32, "Scored examples", "score on at most this many private examples (a whole FL "
                             "shard would take minutes)", low=1, high=4096)

    def __post_init__(self) -> None:
        check(self)


def feature_scores(model: torch.nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """score_f = Σ_b ‖∂r_f/∂x_b‖₂ / r_{b,f}.

    Each example is replicated ``chunk`` times and one ordinary batched backward pass gives the input
    gradients of ``chunk`` different features at once (replica i backpropagates feature f0 + i). In eval
    mode the replicas do not interact, and this is several times faster than vmap over backward passes.
    """
    import torch

    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = x.detach()
    with torch.no_grad():
        r = model.features(x)
    batch, dims = r.shape
    norms = torch.zeros(batch, dims)
    for b in range(batch):
        for f0 in range(0, dims, chunk):
            n = min(chunk, dims - f0)
            xb = x[b: b + 1].expand(n, *x.shape[1:]).clone().requires_grad_(True)
            feats = model.features(xb)
            picked = feats[torch.arange(n), torch.arange(f0, f0 + n)]
            (g,) = torch.autograd.grad(picked.sum(), xb)
            norms[b, f0: f0 + n] = g.flatten(1).norm(dim=1).cpu()
    ratio = norms / r.cpu()  # r = 0 (a dead ReLU feature) gives inf: never pruned, its fc column is 0 anyway
    return torch.nan_to_num(ratio, nan=0.0, posinf=float("inf")).sum(0)


@register("soteria", SoteriaConfig, "Soteria: prune the fc input representation where it leaks most",
          label="Soteria")
class Soteria:
    def __init__(self, config: SoteriaConfig | None = None) -> None:
        self.config = config or SoteriaConfig()

    def protect(self, update: SharedUpdate, ctx: ClientContext) -> tuple[SharedUpdate, DefenseDiagnostics]:
        import torch

        scores = feature_scores(ctx.model, ctx.x[: self.config.max_examples], self.config.chunk)
        finite = scores.abs()
        thresh = torch.quantile(finite[torch.isfinite(finite)], self.config.ratio) if torch.isfinite(finite).any() else 0.0
        keep = (finite >= thresh).to(scores.dtype)
        if self.config.ratio >= 1.0:
            keep = torch.zeros_like(keep)
        fc_name = _fc_weight_name(ctx.model)
        tensors = dict(update.tensors)
        tensors[fc_name] = update.tensors[fc_name] * keep.to(tensors[fc_name].device)[None, :]
        return update.with_tensors(tensors), DefenseDiagnostics(
            "soteria", asdict(self.config), summary={"pruned_features": float((keep == 0).sum()),
                                                     "features": float(keep.numel())},
            notes=f"zeroed {int((keep == 0).sum())} of {keep.numel()} columns of {fc_name}",
        )

    def describe(self) -> str:
        return ("Soteria (Sun et al., 2021). The client looks at the representation entering the last "
                "linear layer and removes, from that layer's update, the features whose value is large "
                "compared with their sensitivity to the input: the ones an attacker inverts most easily. "
                "Everything else is sent unchanged.")


def _fc_weight_name(model: torch.nn.Module) -> str:
    for name, param in model.named_parameters():
        if param is model.fc.weight:
            return name
    raise ValueError(f"model {type(model).__name__} has no fc layer for Soteria to prune")
