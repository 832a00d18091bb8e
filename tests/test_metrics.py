"""tipcore.pipeline.metrics: per-image PSNR (data range 1), SSIM, order matching, label accuracy, optional LPIPS."""

from __future__ import annotations

import math
import socket
import sys
import types
import urllib.request

import numpy as np
import pytest
import torch

from tipcore.federation import data
from tipcore.pipeline import metrics


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, (n, 32, 32, 3)).astype(np.float32)


def test_psnr_of_a_known_mse():
    a = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    for d in (0.1, 0.03, 0.25):
        b = a + np.float32(d)
        mse = float(metrics.mse_per_image(a, b)[0])
        assert mse == pytest.approx(d * d, rel=1e-5)
        assert float(metrics.psnr_per_image(a, b)[0]) == pytest.approx(10 * math.log10(1 / (d * d)), rel=1e-5)
    black, white = np.zeros((1, 8, 8, 3), np.float32), np.ones((1, 8, 8, 3), np.float32)
    assert float(metrics.psnr_per_image(black, white)[0]) == pytest.approx(0.0, abs=1e-9)  # data range 1


def test_values_outside_the_unit_range_are_clipped():
    a = np.full((1, 8, 8, 3), 0.5, np.float32)
    assert float(metrics.mse_per_image(a, a + 5.0)[0]) == pytest.approx(0.25)


def test_identical_images_are_capped_at_100_db():
    x = _images(2)
    assert np.isinf(metrics.psnr_per_image(x, x)).all()
    s = metrics.score(x, x.copy(), (1, 2), (1, 2))
    assert s.psnr == 100.0 and s.per_image_psnr == (100.0, 100.0) and s.mse == 0.0
    assert s.ssim == pytest.approx(1.0, abs=1e-6)


def test_batch_psnr_is_the_mean_of_per_image_psnrs_not_pooled():
    x = _images(2, seed=1)
    noise = np.random.default_rng(2).choice([-1.0, 1.0], size=x.shape).astype(np.float32)
    y = x.copy()
    y[0] += 0.1 * noise[0]  # MSE 1e-2 -> 20 dB
    y[1] += 0.01 * noise[1]  # MSE 1e-4 -> 40 dB
    s = metrics.score(x, y, (0, 0), (0, 0))
    assert s.order == (0, 1)
    assert s.per_image_psnr == pytest.approx((20.0, 40.0), abs=1e-3)
    assert s.psnr == pytest.approx(30.0, abs=1e-3)
    pooled = 10 * math.log10(1 / ((1e-2 + 1e-4) / 2))
    assert abs(s.psnr - pooled) > 5
    assert s.mse == pytest.approx((1e-2 + 1e-4) / 2, rel=1e-3)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    x = data.sample_image("cifar10-00")[None]  # a natural image: SSIM falls clearly with noise
    rng = np.random.default_rng(4)
    values = [float(metrics.ssim_per_image(x, x)[0])]
    for sigma in (0.02, 0.05, 0.1, 0.3):
        values.append(float(metrics.ssim_per_image(x, np.clip(x + rng.normal(0, sigma, x.shape), 0, 1))[0]))
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.5
    assert metrics.ssim_per_image(_images(3), _images(3)).shape == (3,)


def test_ssim_equals_torchmetrics_bit_for_bit():
    """The port is the library's SSIM (the reference): the same values to the last bit, on natural images,
    noise, a batch, values outside [0, 1] (clipped first) and a constant image."""
    from torchmetrics.functional.image import structural_similarity_index_measure as reference

    rng = np.random.default_rng(7)
    x = np.stack([data.sample_image("cifar10-00"), data.sample_image("cifar10-01"), _images(1, seed=2)[0]])
    pairs = [(x, np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)), (x, _images(3, seed=9)),
             (x[:1], x[:1]), (x, rng.normal(0.5, 0.8, x.shape)), (np.full_like(x, 0.5), x)]
    for a, b in pairs:
        ta = torch.from_numpy(metrics._check(a)).permute(0, 3, 1, 2)
        tb = torch.from_numpy(metrics._check(b)).permute(0, 3, 1, 2)
        expected = reference(ta, tb, gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0,
                             reduction="none").reshape(-1).numpy()
        assert np.array_equal(metrics.ssim_per_image(a, b), expected)


def test_match_order_recovers_a_permutation():
    x = _images(5, seed=5)
    perm = np.array([3, 0, 4, 1, 2])
    recon = x[perm] + np.random.default_rng(6).normal(0, 0.01, x.shape).astype(np.float32)
    order = metrics.match_order(x, recon)
    assert sorted(order.tolist()) == list(range(5))
    assert np.array_equal(perm[order], np.arange(5))  # recon[order[i]] is the image of original i
    s = metrics.score(x, recon, (0, 1, 2, 3, 4), (4, 3, 2, 1, 0))
    assert s.order == tuple(order.tolist()) and min(s.per_image_psnr) > 35
    assert metrics.match_order(x[:1], recon[:1]).tolist() == [0]


def test_label_accuracy_counts_a_multiset():
    x = _images(3)
    assert metrics.score(x, x, (1, 1, 2), (2, 1, 1)).label_accuracy == 1.0
    assert metrics.score(x, x, (1, 1, 2), (1, 2, 2)).label_accuracy == pytest.approx(2 / 3)
    assert metrics.score(x[:1], x[:1], (7,), (3,)).label_accuracy == 0.0


def test_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        metrics.score(_images(2), _images(3), (0, 0), (0, 0, 0))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        metrics.psnr_per_image(np.zeros((2, 3, 32, 32)), np.zeros((2, 3, 32, 32)))


def test_lpips_is_unavailable_without_local_weights_and_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS tried to reach the network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    available, note = metrics.lpips_status()
    assert available is False and note.startswith("unavailable")
    s = metrics.score(_images(1), _images(1, seed=9), (0,), (0,))
    assert s.lpips is None and s.lpips_note == note
    assert list(tmp_path.iterdir()) == []  # nothing was written (no download cache)


def test_lpips_needs_local_backbone_weights(monkeypatch, tmp_path):
    """With the package importable, availability depends only on weights already on disk."""
    monkeypatch.setitem(sys.modules, "lpips", types.ModuleType("lpips"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    available, note = metrics.lpips_status()
    assert available is False and "not found" in note
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert metrics.lpips_status()[0] is True


def test_scores_as_dict_is_plain():
    s = metrics.score(_images(2), _images(2, seed=1), (0, 1), (0, 1))
    d = s.as_dict()
    assert set(d) >= {"mse", "psnr", "ssim", "label_accuracy", "lpips", "per_image_psnr", "order"}
    assert isinstance(d["per_image_psnr"], list) and isinstance(d["order"], list)
