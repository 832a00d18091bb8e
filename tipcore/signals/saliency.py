"""Grad-CAM: the per-channel weight α that ranks TIP's channels, and the heatmap drawn for people.

α_l[k] = mean over (i, j) of ∂z_y / ∂A_l[k, i, j]: signed, no ReLU, not multiplied by A, for the output
A_l of every chosen conv layer (before BN and ReLU). It equals pytorch-grad-cam's ``GradCAM.get_cam_weights``
with ``ClassifierOutputTarget(y)`` (tests/test_tip.py checks it against the library, which stays the
reference and draws the heatmaps). The activations come from a forward hook of our own per layer, not from
the library's ``ActivationsAndGradients``: importing pytorch-grad-cam pulls in torchvision, torch._dynamo
and scikit-learn (about 3.7 s on 2 cores), which every TIP run would pay for one hook. The gradients are
then taken with ``torch.autograd.grad`` on those activations, which pairs each gradient with its layer
exactly (backward order through residual branches is not the reverse of forward order). Always in eval
mode: the caller's weights, its BatchNorm statistics and its ``.grad`` fields are never touched, and the
hooks are removed in ``finally``. Only ``gradcam_map`` (the picture) imports the library.
(``channel_alpha`` runs the caller's module in eval mode and restores its mode, rather than deep-copying
it: a copy of ResNet-18 cost more than the Grad-CAM pass itself.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from tipcore.federation.models import conv_layers


def resolve_layers(model: nn.Module, layers: str = "all") -> list[tuple[str, nn.Conv2d]]:
    """'all' (every Conv2d), 'last' (the last one), or a comma-separated list of conv layer names."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"model {type(model).__name__} has no Conv2d layers: TIP needs at least one")
    if layers == "all":
        return convs
    if layers == "last":
        return convs[-1:]
    by_name = dict(convs)
    names = [n.strip() for n in layers.split(",") if n.strip()]
    if not names:
        raise ValueError("layers must be 'all', 'last' or a comma-separated list of conv layer names")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"layer '{unknown[0]}' is not a conv layer of {type(model).__name__}; valid names: {', '.join(by_name)}"
        )
    return [(n, by_name[n]) for n, _ in convs if n in names]


def channel_alpha(model: nn.Module, x: torch.Tensor, label: int, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """Signed Grad-CAM channel weights for one image ``x`` [1, 3, H, W] and its label, per named layer."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"channel_alpha takes one image [1, 3, H, W], got {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    modules = dict(model.named_modules())
    # One output list per layer, so each activation is known to belong to its layer whatever the call order;
    # the first call's output counts, as in the library's hooks (a conv layer runs once per forward here).
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in layer_names}
    handles = [modules[n].register_forward_hook(lambda _module, _inputs, out, kept=outputs[n]: kept.append(out))
               for n in layer_names]
    try:
        with torch.enable_grad():  # callers may sit inside torch.no_grad()
            logits = model(x.detach())
            activations = [outputs[n][0] for n in layer_names]
            # autograd.grad with respect to the activations only: no parameter's .grad is written.
            grads = torch.autograd.grad(logits[0, int(label)], activations)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {n: g[0].mean(dim=(1, 2)).detach() for n, g in zip(layer_names, grads)}


def gradcam_map(model: nn.Module, x: torch.Tensor, label: int, layer_name: str | None = None) -> np.ndarray:
    """The Grad-CAM heatmap of one image at a conv layer (default: the last), in [0, 1], at input size.

    ReLU(Σ_k α_k A_k), upsampled bilinearly and normalised by its maximum: the picture, not the score
    TIP uses (which is the signed α alone).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    work = copy.deepcopy(model).eval()
    name = layer_name or conv_layers(work)[-1][0]
    layer = dict(work.named_modules())[name]
    with GradCAM(model=work, target_layers=[layer]) as cam:
        heat = cam(input_tensor=x.detach().clone(), targets=[ClassifierOutputTarget(int(label))])
    return np.asarray(heat[0], dtype=np.float32)


def heatmap_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two heatmaps (1: same picture); 0 when either is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0
