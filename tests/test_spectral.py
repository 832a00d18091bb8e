"""tipcore.signals.spectral: centred kernel spectra, TIP's high-frequency mask, high-pass noise (docs/METHOD.md §3.3, §3.4)."""

from __future__ import annotations

import math

import pytest
import torch

from tipcore.signals import spectral
from tipcore.common.seeding import generator


def _z(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=generator(seed, "spectral-test"), dtype=dtype)


# docs/METHOD.md §3.3 (mask table): (kernel, cutoff) -> number of noised bins.
MASK_TABLE = [
    (1, 0.5, 0), (3, 0.5, 8), (5, 0.5, 20), (7, 0.5, 40),
    (1, 1.0, 0), (3, 1.0, 0), (5, 1.0, 4), (7, 1.0, 12),
    (1, 0.0, 1), (3, 0.0, 9), (5, 0.0, 25), (7, 0.0, 49),
]


@pytest.mark.parametrize("k, cutoff, count", MASK_TABLE)
def test_mask_bin_counts_follow_spec_table(k, cutoff, count):
    mask = spectral.highfreq_mask(k, k, cutoff)
    assert mask.shape == (k, k)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == count


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("cutoff", [0.25, 0.5, 0.75, 1.0])
def test_mask_is_radial_spares_dc_and_is_point_symmetric(k, cutoff):
    mask = spectral.highfreq_mask(k, k, cutoff)
    c = k // 2
    assert mask[c, c] == 0, "DC (at floor(k/2), floor(k/2)) must never be noised for r > 0"
    assert torch.equal(mask, torch.flip(mask, dims=(0, 1))), "mask must be point-symmetric about DC"
    # Radial definition: noised iff the distance to DC is >= r * k / 2.
    for u in range(k):
        for v in range(k):
            expected = math.hypot(u - c, v - c) >= cutoff * k / 2 - 1e-12
            assert bool(mask[u, v]) == expected


def test_mask_grows_as_cutoff_falls():
    counts = [int(spectral.highfreq_mask(7, 7, r).sum()) for r in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1] == 49


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_mask_rejects_cutoff_out_of_range(bad):
    with pytest.raises(ValueError, match=r"cutoff.*\[0, 1\]"):
        spectral.highfreq_mask(3, 3, bad)


def test_centred_spectrum_puts_dc_in_the_middle_and_round_trips():
    w = _z((4, 6, 5, 5))
    spec = spectral.centred_spectrum(w)
    assert spec.shape == w.shape and spec.is_complex()
    # DC bin = sum over the kernel, per (out, in) pair; shifting only the kernel axes.
    assert torch.allclose(spec[..., 2, 2].real, w.sum(dim=(-2, -1)), atol=1e-12)
    assert torch.allclose(spec[..., 2, 2].imag, torch.zeros(4, 6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(spectral.from_centred_spectrum(spec), w, atol=1e-12)
    # No roll along the channel axes: channel i's spectrum depends on channel i only.
    assert torch.allclose(spectral.centred_spectrum(w[1:2, 3:4]), spec[1:2, 3:4], atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("cutoff", [0.0, 0.5, 1.0])
def test_highpass_noise_touches_only_masked_bins(k, cutoff):
    z = _z((16, 8, k, k), seed=k)
    mask = spectral.highfreq_mask(k, k, cutoff)
    beta = 0.37
    dw = spectral.highpass_noise(z, mask, beta)
    assert dw.shape == z.shape and not dw.is_complex()
    spec_dw = spectral.centred_spectrum(dw)
    spec_z = spectral.centred_spectrum(z)
    keep = mask.bool()
    outside = spec_dw[..., ~keep].abs()
    assert outside.numel() == 0 or float(outside.max()) < 1e-12, "bins outside the mask must get nothing"
    # Inside the mask the noise spectrum is exactly beta times Z's spectrum (a projection, not new noise).
    assert torch.allclose(spec_dw[..., keep], beta * spec_z[..., keep], atol=1e-10)


def test_highpass_noise_3x3_half_cutoff_is_z_minus_its_mean():
    z = _z((5, 7, 3, 3), seed=1)
    dw = spectral.highpass_noise(z, spectral.highfreq_mask(3, 3, 0.5), 2.0)
    assert torch.allclose(dw, 2.0 * (z - z.mean(dim=(-2, -1), keepdim=True)), atol=1e-12)
    assert dw.mean(dim=(-2, -1)).abs().max() < 1e-12


@pytest.mark.parametrize("k", [1, 3, 5])
def test_full_band_is_white_noise_and_empty_band_is_zero(k):
    z = _z((3, 2, k, k), seed=2)
    assert torch.allclose(spectral.highpass_noise(z, spectral.highfreq_mask(k, k, 0.0), 0.5), 0.5 * z, atol=1e-12)
    if k <= 3:  # r = 1 noises nothing for 1x1 and 3x3
        assert torch.count_nonzero(spectral.highpass_noise(z, spectral.highfreq_mask(k, k, 1.0), 0.5)) == 0
    assert torch.count_nonzero(spectral.highpass_noise(z, spectral.highfreq_mask(k, k, 0.5), 0.0)) == 0


def test_highpass_noise_is_linear_in_beta_and_float32_safe():
    z64 = _z((8, 8, 5, 5), seed=3)
    mask = spectral.highfreq_mask(5, 5, 0.5)
    a = spectral.highpass_noise(z64, mask, 1.0)
    assert torch.allclose(spectral.highpass_noise(z64, mask, 3.0), 3.0 * a, atol=1e-12)
    b = spectral.highpass_noise(z64.float(), mask, 1.0)
    assert b.dtype == torch.float32
    assert torch.allclose(b.double(), a, atol=1e-5)


@pytest.mark.parametrize("k, cutoff", [(3, 0.5), (5, 0.5), (7, 0.5), (5, 1.0), (7, 1.0), (3, 0.0)])
def test_effective_std_formula_and_empirical_std(k, cutoff):
    mask = spectral.highfreq_mask(k, k, cutoff)
    beta = 0.2
    expected = beta * math.sqrt(float(mask.sum()) / (k * k))
    assert spectral.effective_std(mask, beta) == pytest.approx(expected, rel=1e-12)
    z = _z((256, 64, k, k), seed=10 + k)
    dw = spectral.highpass_noise(z, mask, beta)
    assert float(dw.std()) == pytest.approx(expected, rel=0.05)


def test_magnitude_is_abs_of_centred_spectrum():
    w = _z((2, 3, 3, 3), seed=4)
    assert torch.allclose(spectral.magnitude(w), spectral.centred_spectrum(w).abs())


@pytest.mark.parametrize("k, r", [(3, 0.5), (5, 0.5), (7, 0.5), (5, 1.0), (7, 1.0), (4, 0.5), (3, 0.25)])
def test_matrix_projection_equals_the_literal_fft_definition(k, r):
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(64, 5, k, k, generator=gen)
    mask = spectral.highfreq_mask(k, k, r)
    fast = spectral.highpass_noise(z, mask, 0.7)
    literal = spectral.highpass_noise_fft(z, mask, 0.7)
    assert torch.allclose(fast, literal, atol=1e-6, rtol=1e-5)  # float32 FFT rounding
