"""The 2D DFT of convolution kernels, TIP's high-frequency mask, and high-pass Gaussian noise.

Transforms run over the two kernel axes only (dims −2, −1): shifting every axis, as the authors' bare
``fftshift`` call does, would also roll the input-channel axis. Forward and inverse DFT are the
unnormalised pair (torch's default), so noise added to a spectrum comes back at the same scale.
"""

from __future__ import annotations

import functools
import math

import torch

KERNEL_DIMS = (-2, -1)


def highfreq_mask(kh: int, kw: int, cutoff: float) -> torch.Tensor:
    """M_r(u, v) = 1 where the centred bin lies at radius >= r · min(kH, kW) / 2 from DC, else 0.

    DC sits at (floor(kH/2), floor(kW/2)) after fftshift. r = 0 keeps every bin (DC included);
    for a 3x3 kernel, r = 0.5 selects the 8 non-DC bins and r = 1 selects none.
    """
    if not 0.0 <= cutoff <= 1.0:
        raise ValueError(f"cutoff must be in [0, 1], got {cutoff}")
    u = torch.arange(kh, dtype=torch.float64) - kh // 2
    v = torch.arange(kw, dtype=torch.float64) - kw // 2
    radius = torch.sqrt(u[:, None] ** 2 + v[None, :] ** 2)
    threshold = cutoff * min(kh, kw) / 2
    return (radius >= threshold - 1e-12).to(torch.float32)


def centred_spectrum(w: torch.Tensor) -> torch.Tensor:
    """fftshift(DFT2(w)) over the kernel axes; complex, same shape as ``w``."""
    return torch.fft.fftshift(torch.fft.fft2(w, dim=KERNEL_DIMS), dim=KERNEL_DIMS)


def from_centred_spectrum(spec: torch.Tensor) -> torch.Tensor:
    """Re(IDFT2(ifftshift(spec))): the inverse of ``centred_spectrum`` for real kernels."""
    return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=KERNEL_DIMS), dim=KERNEL_DIMS).real


def highpass_noise(z: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """ΔW = β · Re(IDFT2(ifftshift(M ⊙ fftshift(DFT2(Z))))): white noise Z projected onto the masked bins.

    The mask is point-symmetric, so ΔW is real up to rounding; bins outside the mask get exactly nothing.
    The projection is linear in Z, so it is applied as one small real matrix (kH·kW square, built from
    that very definition) instead of four FFT passes per kernel: same result to float rounding, and the
    FFT work was half of TIP's cost on ResNet-18.
    """
    if beta == 0.0:
        return torch.zeros_like(z)
    if bool(mask.all()):  # the whole spectrum: the projection is the identity
        return beta * z
    if not bool(mask.any()):
        return torch.zeros_like(z)
    kh, kw = z.shape[-2:]
    proj = projection_matrix(tuple(int(v) for v in mask.flatten().tolist()), kh, kw).to(z)
    flat = z.reshape(-1, kh * kw) @ proj.T
    return beta * flat.reshape(z.shape)


@functools.lru_cache(maxsize=64)
def projection_matrix(mask_bits: tuple[int, ...], kh: int, kw: int) -> torch.Tensor:
    """P with P·vec(Z) = vec(Re(IDFT2(ifftshift(M ⊙ fftshift(DFT2(Z)))))), built column by column in float64."""
    mask = torch.tensor(mask_bits, dtype=torch.float64).reshape(kh, kw)
    basis = torch.eye(kh * kw, dtype=torch.float64).reshape(kh * kw, kh, kw)
    columns = from_centred_spectrum(centred_spectrum(basis) * mask)  # [kh*kw (input), kh, kw]
    return columns.reshape(kh * kw, kh * kw).T.contiguous()


def highpass_noise_fft(z: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """The same projection done literally with FFTs: the reference the matrix form is tested against."""
    return beta * from_centred_spectrum(centred_spectrum(z) * mask.to(z.device))


def effective_std(mask: torch.Tensor, beta: float) -> float:
    """Per-element std of ΔW: β · sqrt(|M| / (kH · kW)) (Parseval, unnormalised DFT pair)."""
    return beta * math.sqrt(float(mask.sum()) / mask.numel())


def magnitude(w: torch.Tensor) -> torch.Tensor:
    """|fftshift(DFT2(w))|: the centred magnitude spectrum the app draws."""
    return centred_spectrum(w).abs()
