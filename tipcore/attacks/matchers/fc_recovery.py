"""``fc_recovery``: read the fc layer's input off the update (B = 1) and match it, plus every clean tensor.

For one example, the final linear layer's gradient is dW = δ φᵀ and db = δ (δ = ∂L/∂z, φ its input, the
flattened conv output), so φ = dW_i / db_i for any row with db_i ≠ 0 (breaching's ``invert_fc_layer``),
and the label is the one row whose db is negative (softmax minus one-hot). Clipping scales dW and db alike,
so the ratio survives it; TIP never touches the fc layer. Here φ is the least-squares estimate over every
row, each entry from the rows where it was sent non-zero (a pruned entry is unknown; a column every row
sends as zero, as Soteria's, stays unknown). The attack matches φ(x̂) to it (``FeatureTarget``, weighted by
``feature_weight``) together with every tensor except the conv channels the energy + roughness detector
flags (as ``energy`` drops them; with ``keep_low`` their clean low bins stay, as in ``hybrid``) and except the
entries a pruning defense sent as exact zeros (in tensors with at least ``zero_fraction`` of them, as
``prune_aware``), and uses the recovered label.

Measured (LeNet, FedSGD, clip 5, 100 L-BFGS steps): against TIP it reconstructs as well as ``energy``
(within about 1 dB: the feature term adds nothing the matched fc gradient does not already say), and it
is also strong against Soteria, where only the fc layer's non-zero columns are matched.

A model without a final linear layer with a bias cannot be read this way: fitting fails with a one-line
error. With B > 1 the rows mix the examples' features; nothing is recovered and a note says so (the
attacker then matches the clean tensors only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tipcore.attacks.matchers._base import ContrastKnobs, CutoffKnobs, EnergyKnobs, GapKnobs, Matcher, ZeroKnobs, channel_maps
from tipcore.attacks.registry import register_matcher
from tipcore.common.knobs import knob

if TYPE_CHECKING:
    import torch

    from tipcore.attacks.fitted import Fitted, Received


@dataclass(frozen=True)
class FcRecoveryConfig(ZeroKnobs, EnergyKnobs, ContrastKnobs, GapKnobs, CutoffKnobs):
    feature_weight: float = knob(1.0, "Feature weight", "weight of the recovered-feature term against the gradient "
                                 "distance (1: alike at the start)", low=0.0, high=1e6)
    keep_low: bool = knob(False, "Keep low bins", "keep the flagged channels' clean low bins (as hybrid) instead "
                          "of dropping them")


def fc_names(received: Received) -> tuple[str, str]:
    """The update's names of the final linear layer's weight and bias, or a one-line error."""
    from torch import nn

    model = received.model
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear) or fc.bias is None:
        raise ValueError(f"fc_recovery needs a final linear layer with a bias after the convolutions; "
                         f"{type(model).__name__} has none")
    names = {id(p): n for n, p in model.named_parameters()}
    weight, bias = names.get(id(fc.weight)), names.get(id(fc.bias))
    if weight not in received.targets or bias not in received.targets:
        raise ValueError("fc_recovery needs the fc layer's weight and bias in the update")
    return weight, bias


def invert_fc(dw: torch.Tensor, db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(φ, known) from one example's fc gradient: φ_j = Σ_i dW_ij db_i / Σ_i db_i² over the rows i where
    dW_ij was sent non-zero (the least-squares solution of dW_ij = db_i φ_j); known_j = some such row."""
    import torch

    dw, db = dw.detach().double(), db.detach().double()
    sent = (dw != 0).double()
    weight = sent * (db * db)[:, None]
    denominator = weight.sum(0)
    known = denominator > 1e-30 * float((db * db).sum())
    phi = (dw * db[:, None]).sum(0) / denominator.clamp_min(1e-300)
    return torch.where(known, phi, torch.zeros_like(phi)), known.double()


def sent_only(received: Received, fitted: Fitted, zero_fraction: float) -> None:
    """Match a tensor with at least ``zero_fraction`` exact zeros (pruned by a defense) only where it was sent
    non-zero, on top of whatever map it already has."""
    from tipcore.attacks.fitted import TensorMap, zero_fraction as zeros_in

    for name, t in received.targets.items():
        if zeros_in(t) >= zero_fraction:
            sent = (t != 0).to(t.dtype)
            m = fitted.maps.get(name, TensorMap())
            fitted.maps[name] = TensorMap(scale=sent if m.scale is None else m.scale * sent, cutoff=m.cutoff,
                                          remove_high=m.remove_high)


@register_matcher("fc_recovery", FcRecoveryConfig, label="recovers the fc input analytically", short="fc-recovery",
                  flags_channels=True,
                  summary="adaptive: reads the fc layer's input and the label off the update (B = 1) and matches "
                          "them plus every tensor but the noised conv channels and the pruned entries")
class FcRecovery(Matcher):
    def fit(self, received: Received) -> Fitted:
        import torch

        from tipcore.attacks.fitted import FeatureTarget, Fitted

        c = self.config
        weight_name, bias_name = fc_names(received)
        fitted = Fitted()
        channel_maps(c, received, fitted, keep_low=c.keep_low)
        sent_only(received, fitted, c.zero_fraction)
        if received.batch != 1:
            fitted.notes.append(f"fc input not recovered: B = {received.batch} (the rows mix the examples)")
            return fitted
        dw, db = received.targets[weight_name], received.targets[bias_name]
        if not bool((db != 0).any()):
            fitted.notes.append("fc input not recovered: the fc bias update is all zeros")
            return fitted
        phi, known = invert_fc(dw, db)
        dtype = dw.dtype
        fitted.features = FeatureTarget(phi.to(dtype)[None], known.to(dtype)[None], c.feature_weight)
        fitted.labels = (int(torch.argmin(db)),)
        fitted.notes.append(f"fc input recovered for {int(known.sum())} of {known.numel()} features; "
                            f"label {fitted.labels[0]} from the fc bias")
        if received.mode != "fedsgd":
            fitted.notes.append("FedAvg: the recovered fc input averages the local steps (approximate)")
        return fitted
