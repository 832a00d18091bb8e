"""Noise calibration from a privacy budget (ε, δ), shared by every noise-adding defense.

The classic Gaussian mechanism adds σ = Δ · sqrt(2 ln(1.25/δ)) / ε for sensitivity Δ. docs/METHOD.md §3.5:
the sensitivity of a clipped local trajectory is T·η·C/B (FedAvg, parameter units) or C/B for one mean
gradient (FedSGD, gradient units), so TIP and DP at the same (ε, δ) use the same σ. The classic bound is
proven only for ε < 1; the paper uses ε = 5, so these numbers are a noise scale, not a guarantee.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tipcore.federation.fl import RoundConfig


def check_budget(epsilon: float, delta: float) -> None:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def gaussian_factor(delta: float) -> float:
    """s = sqrt(2 ln(1.25 / δ)); 4.8448 for δ = 1e-5."""
    return math.sqrt(2 * math.log(1.25 / delta))


def update_sigma(round_cfg: RoundConfig, epsilon: float, delta: float, clip: float) -> float:
    """σ of the whole update, in the update's own units (docs/METHOD.md §3.5 and §3.6)."""
    check_budget(epsilon, delta)
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    per_step = clip / round_cfg.batch_size * gaussian_factor(delta) / epsilon
    if round_cfg.mode == "fedsgd":
        return per_step
    return round_cfg.steps * round_cfg.lr * per_step


def classic_noise_multiplier(epsilon: float, delta: float, steps: int) -> float:
    """z for DP-SGD with full batches: T Gaussian mechanisms of ratio z compose exactly into one of
    ratio z / sqrt(T) (Gaussian DP), calibrated with the classic formula: z = sqrt(T) · s / ε."""
    check_budget(epsilon, delta)
    return math.sqrt(steps) * gaussian_factor(delta) / epsilon


def rdp_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """ε of T full-batch Gaussian mechanisms via Rényi DP: min over α of T·α/(2z²) + ln(1/δ)/(α − 1)."""
    if noise_multiplier <= 0:
        return math.inf
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))
    return min(steps * a / (2 * noise_multiplier**2) + math.log(1 / delta) / (a - 1) for a in orders)


def rdp_noise_multiplier(epsilon: float, delta: float, steps: int) -> float:
    """The smallest z whose RDP ε is at most ``epsilon`` (bisection)."""
    check_budget(epsilon, delta)
    lo, hi = 1e-3, 1e4
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if rdp_epsilon(mid, steps, delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


# ------------------------------------------------------------------------ one unit-free noise strength

def update_bound(round_cfg: RoundConfig) -> float:
    """The norm bound of a clipped update in the update's own units: C for one clipped gradient (FedSGD),
    T·η·C for T clipped local SGD steps of learning rate η (FedAvg's θ_g − θ)."""
    if round_cfg.clip is None:
        raise ValueError("a relative noise strength needs a clipped round (the clip norm C is its unit)")
    return round_cfg.clip * (round_cfg.steps * round_cfg.lr if round_cfg.mode == "fedavg" else 1.0)


def relative_noise(noise_unit: str, value: float, round_cfg: RoundConfig) -> float:
    """The unit-free strength z of a noise knob's value in this round: the per-element standard deviation of
    the noise on the update, divided by the clipped update's norm bound (``update_bound``).

    - "update" (TIP's β, the paper's DP σ: noise added once to the update): z = value / bound.
    - "multiplier" (DP-SGD's z_dp: std z_dp·C on each of T steps' sums of B clipped per-example gradients,
      divided by B, so η·sqrt(T)·z_dp·C/B on a FedAvg update, z_dp·C/B on a gradient): z = z_dp / (B·sqrt(T)).

    The same z therefore means the same noise relative to what the client can send, whatever the round's
    batch size, steps and learning rate: the attacked update and every client of a utility run get it.
    """
    if noise_unit == "update":
        return float(value) / update_bound(round_cfg)
    if noise_unit == "multiplier":
        return float(value) / (round_cfg.batch_size * math.sqrt(round_cfg.steps))
    raise ValueError(f"not a noise unit: '{noise_unit}'")


def noise_value(noise_unit: str, strength: float, round_cfg: RoundConfig) -> float:
    """The knob value that gives relative strength ``strength`` in this round (inverse of ``relative_noise``)."""
    if noise_unit == "update":
        return float(strength) * update_bound(round_cfg)
    if noise_unit == "multiplier":
        return float(strength) * round_cfg.batch_size * math.sqrt(round_cfg.steps)
    raise ValueError(f"not a noise unit: '{noise_unit}'")
