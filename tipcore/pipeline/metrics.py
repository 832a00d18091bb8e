"""Reconstruction quality, per image on [0, 1] images with data range 1, then averaged.

PSNR and MSE are per image (never pooled over the batch, which would let one good image hide a bad one).
SSIM is torchmetrics' (Gaussian window of 11, sigma 1.5), ported so that a run does not import the library.
LPIPS needs backbone weights that would have to be downloaded, so it is computed only when they already
exist locally.
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


SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03


def ssim_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of each image pair: torchmetrics' ``structural_similarity_index_measure`` with
    ``gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0``, ported operation for operation
    (reflect padding, one grouped convolution of the five moments, the map averaged over every pixel).
    Importing torchmetrics loads torchvision, torch._dynamo, scipy.signal and sympy, several seconds for
    every run that scores one image; tests/test_metrics.py checks the port against the library bit for bit."""
    from torch.nn import functional as F  # noqa: N812

    preds = torch.from_numpy(_check(a)).permute(0, 3, 1, 2)
    target = torch.from_numpy(_check(b)).permute(0, 3, 1, 2)
    c1, c2 = pow(SSIM_K1 * 1.0, 2), pow(SSIM_K2 * 1.0, 2)  # data range 1
    size = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1  # 11: the Gaussian window torchmetrics derives from sigma
    pad = (size - 1) // 2
    preds = F.pad(preds, (pad, pad, pad, pad), mode="reflect")
    target = F.pad(target, (pad, pad, pad, pad), mode="reflect")
    dist = torch.arange(start=(1 - size) / 2, end=(1 + size) / 2, step=1, dtype=preds.dtype)
    gauss = torch.exp(-torch.pow(dist / SSIM_SIGMA, 2) / 2)
    gauss = (gauss / gauss.sum()).unsqueeze(dim=0)
    channel = preds.size(1)
    kernel = torch.matmul(gauss.t(), gauss).expand(channel, 1, size, size)
    moments = torch.cat((preds, target, preds * preds, target * target, preds * target))
    mu_p, mu_t, e_pp, e_tt, e_pt = F.conv2d(moments, kernel, groups=channel).split(preds.shape[0])
    mu_p_sq, mu_t_sq, mu_pt = mu_p.pow(2), mu_t.pow(2), mu_p * mu_t
    var_p = torch.clamp(e_pp - mu_p_sq, min=0.0)
    var_t = torch.clamp(e_tt - mu_t_sq, min=0.0)
    upper = 2 * (e_pt - mu_pt) + c2
    lower = (var_p + var_t) + c2
    full = ((2 * mu_pt + c1) * upper) / ((mu_p_sq + mu_t_sq + c1) * lower)
    return full.reshape(full.shape[0], -1).mean(-1).numpy()


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
