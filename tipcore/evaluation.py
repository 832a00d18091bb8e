"""The cells that privacy curves and the reproduction report are made of.

One attack cell: one image, one defense setting, one attacker, one seed -> PSNR, SSIM, label accuracy, the
update statistics and (for ``*_drop``) how well the noised channels were found. One utility cell: one
defense setting -> held-out accuracy of the digits ConvNet after a few FedAvg rounds in which every client
applies it. And the two reference scores any reconstruction must beat to mean anything: a random-pixel
image and a constant grey guess.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from tipcore import data, defenses, knobs, metrics
from tipcore.fl import RoundConfig
from tipcore.progress import StopHook, drive, never_stop
from tipcore.seeding import generator

# The class-demo protocol: FedSGD on one image, gradients clipped to C = 5 (the paper's C).
DEMO_CLIP = 5.0
FL_CLIENT_STEPS = 13  # FLConfig defaults: 400 digits per client, batch 32, one epoch -> ceil(400/32) steps
FL_LR = 0.2  # FLConfig default learning rate


@dataclass(frozen=True)
class DefenseSetting:
    """One point on a defense's strength axis."""

    defense: str
    knob: str = ""  # the option varied ("" for no defense)
    strength: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)  # fixed options besides the knob

    def options(self) -> dict[str, Any]:
        opts = dict(self.extra)
        if self.knob:
            opts[self.knob] = self.strength
            declared = knobs.knobs(defenses.DEFENSES[self.defense].config_cls).get(self.knob)
            if declared is not None:  # e.g. TIP's beta switches its noise to "direct"
                opts.update(dict(declared.implies))
        return opts

    def noise_scale(self) -> float | None:
        """Per-element noise std in gradient units where the knob sets one directly (x-axis of the curves)."""
        if self.knob in ("beta", "sigma"):
            return float(self.strength)
        if self.knob == "noise_multiplier":  # dp: std z·C on a sum of B = 1 clipped gradients
            return float(self.strength) * DEMO_CLIP
        return None

    def label(self) -> str:
        return self.defense if not self.knob else f"{self.defense} {self.knob}={self.strength:g}"


def attack_config(image_id: str, setting: DefenseSetting, attack: str, *, iterations: int, seed: int,
                  model: str = "lenet", round_cfg: RoundConfig | None = None, attack_options: Mapping[str, Any] | None = None):
    from tipcore.experiment import ExperimentConfig

    return ExperimentConfig(
        seed=seed, model=model, image_ids=(image_id,), round=round_cfg or RoundConfig(clip=DEMO_CLIP),
        defense=setting.defense, defense_cfg=setting.options(), attack=attack,
        attack_cfg={"iterations": iterations, **dict(attack_options or {})}, device="cpu",
    )


def attack_cells(cfgs: list, should_stop: StopHook = never_stop) -> list[dict[str, Any]]:
    """Run attacks that differ only in their defense (batched where the attack allows it) and flatten what
    the curves and the report need into one row each; ``seconds`` is the group's time split evenly."""
    from tipcore.experiment import stream_comparison

    t0 = time.perf_counter()
    records = drive(stream_comparison(list(cfgs), should_stop=should_stop))
    share = (time.perf_counter() - t0) / max(len(records), 1)
    return [row_of(record, share) for record in records]


def row_of(record, seconds: float) -> dict[str, Any]:
    analysis = record.analysis
    detection = analysis.get("detection") or {}
    return {
        "psnr": record.scores.psnr, "ssim": record.scores.ssim, "label_accuracy": record.scores.label_accuracy,
        "update_cosine": analysis.get("update_cosine"), "noise_to_signal": analysis.get("noise_to_signal"),
        "noise_to_signal_median": analysis.get("noise_to_signal_median"),
        "flag_precision": detection.get("precision"), "flag_recall": detection.get("recall"),
        "flagged": detection.get("flagged"), "restarts": record.result.restarts,
        "stopped": record.result.stopped, "steps": record.result.iterations, "seconds": round(seconds, 2),
    }


def chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def fl_options(setting: DefenseSetting) -> dict[str, Any]:
    """The setting's options for the FedAvg utility run. A direct noise scale is given in gradient units
    (FedSGD, like the attack); a FedAvg update is T·η gradients, so the same per-step noise is T·η·β."""
    opts = setting.options()
    scale = FL_CLIENT_STEPS * FL_LR
    for key in ("beta", "sigma"):
        if opts.get(key) is not None:
            opts[key] = float(opts[key]) * scale
    return opts


def utility_accuracy(setting: DefenseSetting, *, rounds: int, seed: int, epsilon: float = 5.0,
                     delta: float = 1e-5, should_stop: StopHook = never_stop) -> float | None:
    """Held-out accuracy of the digits ConvNet (from its checkpoint) after ``rounds`` defended FedAvg rounds
    (10 clients, FLConfig defaults); None when stopped before the last round finished."""
    from tipcore import flsim
    from tipcore.experiment import with_budget

    opts = fl_options(setting)
    if defenses.DEFENSES[setting.defense].uses_budget:
        opts = {**with_budget(setting.defense, {}, epsilon, delta), **opts}
    cfg = flsim.FLConfig(weights="digits", rounds=rounds, defense=setting.defense, defense_cfg=opts, seed=seed)
    result = drive(flsim.simulate(cfg, should_stop=should_stop))
    return None if result.stopped else float(result.rounds[-1].accuracy)


def reference_psnr(image_ids: tuple[str, ...], seed: int = 0) -> dict[str, float]:
    """Mean PSNR of a uniform random-pixel image and of a constant grey (0.5) guess against the originals:
    a 'reconstruction' scoring near these has recovered nothing."""
    originals = np.stack([data.sample_image(i) for i in image_ids])
    gen = np.random.default_rng(int(generator(seed, "reference").initial_seed()) % (2**32))
    random = gen.random(originals.shape, dtype=np.float32)
    grey = np.full_like(originals, 0.5)
    return {"random_psnr": float(np.mean(metrics.psnr_per_image(originals, random))),
            "grey_psnr": float(np.mean(metrics.psnr_per_image(originals, grey)))}


def cifar10_ids(count: int) -> tuple[str, ...]:
    ids = tuple(s.id for s in data.gallery() if s.dataset == "cifar10")
    if not 1 <= count <= len(ids):
        raise ValueError(f"images must be in [1, {len(ids)}] (the gallery's CIFAR-10 images), got {count}")
    return ids[:count]


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean(vals)), float(np.std(vals))
