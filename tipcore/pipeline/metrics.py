"""Reconstruction quality, per image on [0, 1] images with data range 1, then averaged.

PSNR and MSE are per image (never pooled over the batch, which would let one good image hide a bad one).
SSIM uses torchmetrics with a Gaussian window of 11 and sigma 1.5. LPIPS needs backbone weights that
would have to be downloaded, so it is computed only when they already exist locally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Scores:
    mse: float
    psnr: float
    ssim: float
    label_accuracy: float
    lpips: float | None
    lpips_note: str
    per_image_psnr: tuple[float, ...]
    order: tuple[int, ...]  # reconstruction index matched to each original (batch order is not shared)

    def as_dict(self) -> dict[str, object]:
        return {
            "mse": self.mse, "psnr": self.psnr, "ssim": self.ssim, "label_accuracy": self.label_accuracy,
            "lpips": self.lpips, "lpips_note": self.lpips_note, "per_image_psnr": list(self.per_image_psnr),
            "order": list(self.order),
        }


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (B, H, W, 3), got {images.shape}")
    return np.clip(images, 0.0, 1.0)


def mse_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((_check(a) - _check(b)) ** 2).reshape(len(_check(a)), -1).mean(axis=1)


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = mse_per_image(a, b)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-30)), np.inf)


def ssim_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    ta = torch.from_numpy(_check(a)).permute(0, 3, 1, 2)
    tb = torch.from_numpy(_check(b)).permute(0, 3, 1, 2)
    values = ssim(ta, tb, gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0, reduction="none")
    return values.reshape(-1).numpy()


def match_order(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """For each original, the reconstruction that fits it best (one-to-one, by MSE)."""
    originals, reconstructions = _check(originals), _check(reconstructions)
    if len(originals) == 1:
        return np.zeros(1, dtype=int)
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[((o - r) ** 2).mean() for r in reconstructions] for o in originals])
    _, cols = linear_sum_assignment(cost)
    return cols


def lpips_status() -> tuple[bool, str]:
    """LPIPS is available only if the ``lpips`` package and its AlexNet backbone weights are already on
    disk: it must never trigger a download."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False, "unavailable: the lpips package is not installed"
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    if not any(hub.glob("alexnet-owt-*.pth")):
        return False, f"unavailable: AlexNet backbone weights not found in {hub} (never downloaded at run time)"
    return True, "lpips (alex)"


def lpips_mean(a: np.ndarray, b: np.ndarray) -> float:
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False)
    ta = torch.from_numpy(_check(a)).permute(0, 3, 1, 2) * 2 - 1
    tb = torch.from_numpy(_check(b)).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        return float(net(ta, tb).mean())


def score(originals: np.ndarray, reconstructions: np.ndarray, true_labels: tuple[int, ...],
          predicted_labels: tuple[int, ...]) -> Scores:
    originals, reconstructions = _check(originals), _check(reconstructions)
    if originals.shape != reconstructions.shape:
        raise ValueError(f"shape mismatch: originals {originals.shape}, reconstructions {reconstructions.shape}")
    order = match_order(originals, reconstructions)
    matched = reconstructions[order]
    psnr = psnr_per_image(originals, matched)
    # Labels are a multiset: count how many true labels the attacker recovered, whatever their order.
    remaining = list(predicted_labels)
    hits = 0
    for label in true_labels:
        if label in remaining:
            remaining.remove(label)
            hits += 1
    available, note = lpips_status()
    return Scores(
        mse=float(mse_per_image(originals, matched).mean()),
        psnr=float(np.mean(np.minimum(psnr, 100.0))),  # identical images: cap at 100 dB rather than inf
        ssim=float(ssim_per_image(originals, matched).mean()),
        label_accuracy=hits / max(len(true_labels), 1),
        lpips=lpips_mean(originals, matched) if available else None,
        lpips_note=note,
        per_image_psnr=tuple(float(min(v, 100.0)) for v in psnr),
        order=tuple(int(i) for i in order),
    )
