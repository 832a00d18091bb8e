"""How a defense changed the update, measured by the experimenter who holds both the clean and the defended
update (never by an attacker): noise-to-signal on the perturbed slices, cosine to the clean update, and how
well an adaptive attacker's guess of the noised channels matches the defense's own record.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from tipcore.defenses.base import DefenseDiagnostics


def update_cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a)
    na = math.sqrt(sum(float((a[k].double() ** 2).sum()) for k in a))
    nb = math.sqrt(sum(float((b[k].double() ** 2).sum()) for k in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def perturbed_slices(clean: Mapping[str, torch.Tensor], defended: Mapping[str, torch.Tensor]):
    """(clean slice, change) for every slice the defense changed: a conv weight's output channel (its
    kernels [C_in, kH, kW]), or a whole tensor of any other kind."""
    for name, c in clean.items():
        d = defended[name]
        if torch.equal(c, d):
            continue
        change = (d - c).double()
        if c.ndim == 4:
            for ch in torch.nonzero(change.flatten(1).abs().amax(1) > 0).flatten().tolist():
                yield c[ch].double(), change[ch]
        else:
            yield c.double(), change


def noise_to_signal(clean: Mapping[str, torch.Tensor], defended: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """‖defended − clean‖ / ‖clean‖ over the slices the defense changed (pooled), and the median of the
    per-slice ratios. 0 when nothing changed; ``inf`` where a changed slice was exactly zero before."""
    ratios, change_sq, clean_sq, count = [], 0.0, 0.0, 0
    for c, change in perturbed_slices(clean, defended):
        cn, dn = float(c.norm()), float(change.norm())
        ratios.append(dn / cn if cn > 0 else math.inf)
        change_sq += dn * dn
        clean_sq += cn * cn
        count += 1
    if count == 0:
        return {"noise_to_signal": 0.0, "noise_to_signal_median": 0.0, "perturbed_slices": 0.0}
    pooled = math.sqrt(change_sq / clean_sq) if clean_sq > 0 else math.inf
    return {"noise_to_signal": pooled, "noise_to_signal_median": float(np.median(ratios)),
            "perturbed_slices": float(count)}


def true_selection(diagnostics: DefenseDiagnostics) -> dict[str, set[int]] | None:
    """The channels the defense noised per conv layer (all Grad-CAM samples together), or None when the
    defense does not work by channel (DP, pruning, ...)."""
    if not diagnostics.layers:
        return None
    # A selected layer whose mask has no bins (a 1x1 kernel at r > 0) gets no noise at all.
    return {layer.name: {c for sample in layer.selected for c in sample} for layer in diagnostics.layers
            if layer.effective_std > 0}


def detection(flagged: Mapping[str, tuple[int, ...]], diagnostics: DefenseDiagnostics,
              noised: bool = True) -> dict[str, Any]:
    """Precision and recall of an attacker's noised-channel estimate against the defense's record.

    ``noised`` False (e.g. β = 0) means nothing was really perturbed: every flag is a false positive.
    Precision is None when nothing was flagged; recall is None when nothing was noised.
    """
    return detection_against(flagged, (true_selection(diagnostics) or {}) if noised else {})


def detection_against(flagged: Mapping[str, tuple[int, ...]], truth: Mapping[str, set[int]]) -> dict[str, Any]:
    """``detection`` against the noised channels per conv layer as given (e.g. read from a node's audit)."""
    flagged_total = sum(len(v) for v in flagged.values())
    true_total = sum(len(v) for v in truth.values())
    hits = sum(len(set(flagged.get(layer, ())) & chosen) for layer, chosen in truth.items())
    return {
        "flagged": flagged_total, "noised": true_total, "true_positives": hits,
        "precision": hits / flagged_total if flagged_total else None,
        "recall": hits / true_total if true_total else None,
    }
