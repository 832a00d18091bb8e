"""The cells that privacy curves and the reproduction report are made of, with one noise level per setting.

A ``DefenseSetting`` is defined once and used unchanged on both axes of a comparison. Its strength is
unit-free for every noise-adding defense: the relative noise z, the per-element noise standard deviation
of the update divided by the clipped update's norm bound (``tipcore.defenses.calibration.relative_noise``). Each cell
converts z into the defense's own knob for its own round, so the attacked update (FedSGD on one image) and
every client update of the utility run (FedAvg from random init) get exactly the same relative noise, and
both record the z they ran with (``noise_rel``) next to the measured noise-to-signal ratio.

- An attack cell: one image, one setting, one attacker, one seed -> PSNR, SSIM, label accuracy, the update
  statistics, and for an attacker that flags channels how well it found the noised ones.
- A utility cell: one setting, one seed -> held-out accuracy after ``UtilityProtocol.rounds`` FedAvg rounds
  from random init, in which every client applies the setting (the per-round curve is kept).
- ``best_per_image``: for every image, the strongest of several attackers (how a defense must be judged).
- Reference scores any reconstruction must beat to mean anything: a random-pixel image, a grey guess.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from tipcore import defenses
from tipcore.federation import data
from tipcore.common import knobs
from tipcore.defenses import calibration as privacy
from tipcore.federation.specs import RoundConfig
from tipcore.common.progress import StopHook, drive, never_stop

# Torch-free at import (metrics and seeding load it inside the cells that compute): sweep --help and
# reproduce --help read UtilityProtocol's defaults from here.

# The class-demo protocol the attacks run in: DLG's LeNet at random init, FedSGD on one image, C = 5.
ATTACK_MODEL = "lenet"
ATTACK_ROUND = RoundConfig(clip=5.0)
DEMO_CLIP = ATTACK_ROUND.clip


@dataclass(frozen=True)
class DefenseSetting:
    """One point on a defense's strength axis: ``knob`` set to ``value`` (plus fixed options ``extra``).

    For the defense's noise knob (``Knob.noise_unit``), ``value`` is the unit-free relative noise z, turned
    into the knob's own units for each round it runs in (``options``). Every other knob's value is used as
    it is, typed as its config declares (an integer knob stays an integer, a choice a choice).
    """

    defense: str
    knob: str = ""  # the option varied ("" for no defense, or a defense at its defaults)
    value: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # fixed options besides the knob, native units

    def __post_init__(self) -> None:
        if self.defense not in defenses.DEFENSES:
            raise ValueError(f"unknown defense '{self.defense}'; choose one of: {', '.join(defenses.DEFENSES)}")
        if self.knob:
            declared = knobs.knobs(self.config_cls)
            if self.knob not in declared:
                raise ValueError(f"defense '{self.defense}' has no option '{self.knob}' "
                                 f"(its options: {', '.join(declared) or 'none'})")
            object.__setattr__(self, "value", knobs.coerce(self.config_cls, self.knob, self.value))

    @property
    def config_cls(self) -> type:
        return defenses.DEFENSES[self.defense].config_cls

    def noise_unit(self) -> str:
        """The knob's noise unit when the setting varies the defense's noise scale, else ""."""
        found = defenses.DEFENSES[self.defense].noise_knob()
        return found[1].noise_unit if found is not None and found[0] == self.knob else ""

    def relative_noise(self) -> float | None:
        """z, the x-axis of the privacy curves: the same for every round the setting runs in."""
        return float(self.value) if self.noise_unit() else None

    def options(self, round_cfg: RoundConfig) -> dict[str, Any]:
        """The defense's options in this round: a relative noise becomes the knob's value for the round, and
        the knob's implied options follow (TIP's β switches its noise to "direct")."""
        opts = dict(self.extra)
        if self.knob:
            unit = self.noise_unit()
            opts[self.knob] = privacy.noise_value(unit, self.value, round_cfg) if unit else self.value
            opts.update(dict(knobs.knobs(self.config_cls)[self.knob].implies))
        return opts

    def key(self) -> dict[str, Any]:
        """What identifies the setting in a results table."""
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return {"defense": self.defense, "knob": self.knob, "strength": self.value, "extra": extra}

    def label(self) -> str:
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.extra.items())]
        if self.knob:
            name = "z" if self.noise_unit() else self.knob
            parts.append(f"{name}={self.value:g}" if isinstance(self.value, (int, float)) else f"{name}={self.value}")
        return " ".join([self.defense, *parts])


# ------------------------------------------------------------------------------------------ attack cells

def attack_config(image_id: str, setting: DefenseSetting, attack: str, *, iterations: int, seed: int,
                  model: str = ATTACK_MODEL, round_cfg: RoundConfig | None = None,
                  attack_options: Mapping[str, Any] | None = None, defense_options: Mapping[str, Any] | None = None):
    """The RunSpec of one attack cell; ``defense_options`` (e.g. a budget) come before the setting's own."""
    from tipcore.pipeline.runspec import RunSpec

    round_cfg = round_cfg or ATTACK_ROUND
    return RunSpec(
        seed=seed, model=model, image_ids=(image_id,), round=round_cfg, defense=setting.defense,
        defense_cfg={**dict(defense_options or {}), **setting.options(round_cfg)}, attack=attack,
        attack_cfg={"iterations": iterations, **dict(attack_options or {})}, device="cpu",
    )


def attack_cells(cfgs: list, should_stop: StopHook = never_stop) -> list[dict[str, Any]]:
    """Run attacks that differ only in their defense (batched where the attack allows it) and flatten what
    the curves and the report need into one row each; ``seconds`` is the group's time split evenly."""
    from tipcore.pipeline.experiment import stream_comparison

    t0 = time.perf_counter()
    records = drive(stream_comparison(list(cfgs), should_stop=should_stop))
    share = (time.perf_counter() - t0) / max(len(records), 1)
    return [row_of(record, share) for record in records]


def row_of(record, seconds: float) -> dict[str, Any]:
    analysis = record.analysis
    detection = analysis.get("detection") or {}
    spec = defenses.DEFENSES[record.config.defense]
    return {
        "psnr": record.scores.psnr, "ssim": record.scores.ssim, "label_accuracy": record.scores.label_accuracy,
        "update_cosine": analysis.get("update_cosine"), "noise_to_signal": analysis.get("noise_to_signal"),
        "noise_to_signal_median": analysis.get("noise_to_signal_median"),
        "noise_rel": spec.relative_noise(record.prepared.diagnostics, record.config.round),
        "flag_precision": detection.get("precision"), "flag_recall": detection.get("recall"),
        "flagged": detection.get("flagged"), "restarts": record.result.restarts,
        "stopped": record.result.stopped, "steps": record.result.iterations, "seconds": round(seconds, 2),
    }


def strength_at_budget(defense: str, extra: Mapping[str, Any] | None = None, *, epsilon: float = 5.0,
                       delta: float = 1e-5, image_id: str = "cifar10-00", model: str = ATTACK_MODEL,
                       round_cfg: RoundConfig | None = None) -> float | None:
    """The relative noise z that ``defense`` calibrates from (ε, δ) in the attack cell (for TIP: β = σ / n_cam
    / L with this model's L and one Grad-CAM sample): the point at which its privacy is measured, so that
    its utility can be measured at exactly that noise too. None for a defense without a noise knob."""
    from tipcore.pipeline.experiment import prepare
    from tipcore.pipeline.runspec import RunSpec

    spec = defenses.DEFENSES[defense]
    if spec.noise_knob() is None:
        return None
    round_cfg = round_cfg or ATTACK_ROUND
    options = {**dict(extra or {}), **({"epsilon": epsilon, "delta": delta} if spec.uses_budget else {})}
    run = RunSpec(model=model, image_ids=(image_id,), round=round_cfg, defense=defense, defense_cfg=options,
                  device="cpu")
    prepared = prepare(run)
    return spec.relative_noise(prepared.diagnostics, round_cfg)


# ------------------------------------------------------------------------------------------ utility cells

@dataclass(frozen=True)
class UtilityProtocol:
    """Utility from scratch: FedAvg from random init on the bundled digits, every client applying the setting.

    The default model is the attack cell's (DLG's LeNet), so privacy and utility are measured on the same
    architecture at the same relative noise; the data differ (the attacks' CIFAR-10 images cannot be trained
    on: no CIFAR training set is bundled) and the report says so.
    """

    model: str = ATTACK_MODEL
    clients: int = 10
    rounds: int = 40
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.5
    clip: float = 5.0
    seeds: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        from tipcore.studies import flsim

        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"utility seeds must be distinct and at least one, got {list(self.seeds)}")
        flsim.FLConfig(**self.fl_fields(), seed=self.seeds[0])  # every other field checked there

    def fl_fields(self) -> dict[str, Any]:
        return {"model": self.model, "weights": "random", "clients": self.clients, "rounds": self.rounds,
                "local_epochs": self.local_epochs, "batch_size": self.batch_size, "lr": self.lr, "clip": self.clip}

    def round_config(self) -> RoundConfig:
        """The round every client runs: FedAvg, T = E·ceil(N_k / B) clipped SGD steps on its N_k digits."""
        shard = data.DIGITS_TRAIN // self.clients
        steps = self.local_epochs * math.ceil(shard / self.batch_size)
        return RoundConfig(mode="fedavg", batch_size=self.batch_size, local_steps=steps, lr=self.lr, clip=self.clip)

    def manifest(self) -> dict[str, Any]:
        return {**self.fl_fields(), "seeds": list(self.seeds)}

    def describe(self) -> str:
        rc = self.round_config()
        return (f"held-out accuracy (1,000 digits) after {self.rounds} FedAvg rounds from random init, "
                f"{self.model}, {self.clients} clients with class-balanced IID shards of the 4,000 training digits, "
                f"B = {self.batch_size}, {rc.local_steps} clipped SGD steps per round (lr {self.lr:g}, C = {self.clip:g}), "
                f"mean over seeds {', '.join(map(str, self.seeds))}")


def utility_cell(setting: DefenseSetting, protocol: UtilityProtocol, seed: int, *,
                 should_stop: StopHook = never_stop) -> dict[str, Any] | None:
    """One utility run of ``setting`` (at the same relative noise as its attack cells); None when stopped."""
    from tipcore.studies import flsim

    options = setting.options(protocol.round_config())
    cfg = flsim.FLConfig(**protocol.fl_fields(), defense=setting.defense, defense_cfg=options, seed=seed)
    result = drive(flsim.simulate(cfg, should_stop=should_stop))
    if result.stopped:
        return None
    first = result.rounds[0]
    return {"accuracy": float(result.rounds[-1].accuracy), "fl_rounds": len(result.rounds),
            "noise_rel": first.noise_rel, "noise_to_signal": first.noise_to_signal,
            "curve": " ".join(f"{r.accuracy:.4f}" for r in result.rounds)}


UTILITY_COLUMNS = ("defense", "knob", "strength", "extra", "seed", "accuracy", "fl_rounds", "noise_rel",
                   "noise_to_signal", "curve")


class UtilityStore:
    """Utility cells on disk, keyed by the setting and the seed alone (a utility run depends on nothing else),
    so the sweep and the report can share one directory (``--utility-dir``) and never run a cell twice. The
    directory holds one protocol (``job.json``); another protocol is refused."""

    def __init__(self, directory, protocol: UtilityProtocol) -> None:
        from pathlib import Path

        from tipcore.studies.resumable import ResumableTable, claim_directory

        self.directory, self.protocol = Path(directory), protocol
        self.directory.mkdir(parents=True, exist_ok=True)
        claim_directory(self.directory, {"job": "utility", **protocol.manifest()})
        self.table = ResumableTable(self.directory / "utility.csv", UTILITY_COLUMNS,
                                    ("defense", "knob", "strength", "extra", "seed"))

    def has(self, setting: DefenseSetting, seed: int) -> bool:
        self.table.refresh()  # another job (the sweep, the report) may share this directory
        return self.table.has({**setting.key(), "seed": seed})

    def run(self, setting: DefenseSetting, seed: int, *, should_stop: StopHook = never_stop) -> bool:
        """Compute and store one cell (False when stopped: nothing stored); a cell another job sharing the
        directory finished meanwhile is not run again."""
        if self.has(setting, seed):
            return True
        row = utility_cell(setting, self.protocol, seed, should_stop=should_stop)
        if row is None:
            return False
        self.table.append({**setting.key(), "seed": seed, **row})
        return True

    def rows(self, setting: DefenseSetting) -> list[dict[str, str]]:
        return [r for r in self.table.select(**setting.key()) if int(r["seed"]) in self.protocol.seeds]


def converged_round(curve: Iterable[float], tolerance: float = 0.01) -> int | None:
    """The first round from which accuracy stays within ``tolerance`` of its final value, or None."""
    values = list(curve)
    if not values:
        return None
    final = values[-1]
    for i in range(len(values)):
        if all(abs(v - final) <= tolerance + 1e-12 for v in values[i:]):
            return i + 1
    return len(values)


# ------------------------------------------------------------------------------------------ verdicts

def best_per_image(rows: Iterable[Mapping[str, Any]], attacks: Iterable[str]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Per (image, seed), the row of the strongest of ``attacks`` (highest PSNR): the evaluator's worst case for
    the defense, as a defense must be judged. The one place a "best attacker" is chosen."""
    wanted = set(attacks)
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        if r["attack"] not in wanted:
            continue
        cell = (str(r["image"]), str(r.get("seed", "")))
        if cell not in best or float(r["psnr"]) > float(best[cell]["psnr"]):
            best[cell] = r
    return best


def adaptive_attacks(naive: str) -> tuple[str, ...]:
    """Every registered attacker built on ``naive`` that knows the defense (``{naive}_{matcher}``)."""
    from tipcore import attacks

    return attacks.adaptive_variants(naive)


def reference_psnr(image_ids: tuple[str, ...], seed: int = 0) -> dict[str, float]:
    """Mean PSNR of a uniform random-pixel image and of a constant grey (0.5) guess against the originals:
    a 'reconstruction' scoring near these has recovered nothing."""
    from tipcore.common.seeding import generator
    from tipcore.pipeline import metrics

    originals = np.stack([data.sample_image(i) for i in image_ids])
    gen = np.random.default_rng(int(generator(seed, "reference").initial_seed()) % (2**32))
    random = gen.random(originals.shape, dtype=np.float32)
    grey = np.full_like(originals, 0.5)
    return {"random_psnr": float(np.mean(metrics.psnr_per_image(originals, random))),
            "grey_psnr": float(np.mean(metrics.psnr_per_image(originals, grey)))}


def chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def cifar10_ids(count: int) -> tuple[str, ...]:
    ids = tuple(s.id for s in data.gallery() if s.dataset == "cifar10")
    if not 1 <= count <= len(ids):
        raise ValueError(f"images must be in [1, {len(ids)}] (the gallery's CIFAR-10 images), got {count}")
    return ids[:count]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean(vals)), float(np.std(vals))
