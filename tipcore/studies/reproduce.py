"""The reproduction report: every defense against the naive and every adaptive attacker, privacy and utility
at the same noise, on the gallery's CIFAR-10 images (``python -m tipcore reproduce --out DIR``).

- Settings: the rows of ``PAPER`` (a ``Study``: the paper's table as data, with the row TIP is judged by and
  the DP it is compared with), each noise defense at the relative noise z its (ε = 5, δ = 1e-5) calibration
  gives where its privacy is measured (the LeNet attack cell; for TIP β = σ / n_cam / L with LeNet's L = 3 and
  one Grad-CAM sample), pruning and Soteria at fixed ratios. The same z is used on both axes
  (``studies.cells.DefenseSetting``).
- Privacy: DLG's LeNet (random init), FedSGD on one image with clip C = 5: the naive iDLG and every registered
  adaptive attacker built on it (``{naive}_{matcher}``), per image the strongest adaptive one counting.
- Utility: FedAvg from random init on the digits, same model, every client at the same z
  (``studies.cells.UtilityProtocol``; mean over seeds); convergence of the undefended run is measured and stated.
- TIP against DP at matched utility: the paper's DP at the z (decades) whose utility from scratch is closest to
  that of the study's headline row (TIP at p = 0.1), attacked on the same images; paired Wilcoxon signed-rank tests over images on PSNR, for the
  naive attacker and the best adaptive one, with "no significant difference" when p >= 0.05.
- The paper's setting (CIFAR ResNet-18, FedAvg with 4 local steps, lr 1e-3, clip 5): Inverting Gradients and its
  adaptive variants with an iteration budget given on the command line (privacy only: a from-scratch FedAvg run
  of ResNet-18 is a GPU job).
Cells are appended to the CSVs as they finish, so rerunning the same command resumes.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generator, Mapping

import numpy as np

from tipcore import attacks, defenses
from tipcore.studies.cells import (
    ATTACK_MODEL, ATTACK_ROUND, DefenseSetting, UtilityProtocol, UtilityStore, adaptive_attacks, attack_cells,
    attack_config, best_per_image, chunks, cifar10_ids, converged_round, mean_std, reference_psnr, strength_at_budget,
)
from tipcore.federation.fl import RoundConfig
from tipcore.common.progress import Event, StopHook, Stopped, Stopwatch, never_stop
from tipcore.studies.resumable import ResumableTable, claim_directory, number
from tipcore.studies.sweep import DECADES, STUDY_OPTIONS

CELL_COLUMNS = ("setting", "defense", "model", "image", "attack", "attacker", "psnr", "ssim", "label_accuracy",
                "noise_rel", "noise_to_signal", "update_cosine", "flag_precision", "flag_recall", "restarts", "seconds")
REPRODUCE_COMMAND = "python -m tipcore reproduce"
IG_MODEL = "resnet18"
IG_ROUND = RoundConfig(mode="fedavg", batch_size=1, local_steps=4, lr=1e-3, clip=5.0)
LENET_BATCH = 11  # defenses attacked together in one batched optimisation
RESNET_BATCH = 3  # ResNet-18's batched double-backward holds a graph per problem: keep memory modest
EPSILON, DELTA = 5.0, 1e-5  # the budget every budgeted defense is calibrated at


@dataclass(frozen=True)
class RowSpec:
    """A report row before its strength is known: a defense with fixed options; a noise defense's strength
    is the relative noise its calibration at (ε, δ) gives in the cell where privacy is measured."""

    label: str
    defense: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    knob: str = ""  # a non-noise strength given directly (pruning's ratio)
    value: Any = None


@dataclass(frozen=True)
class Study:
    """The table a report reproduces, declared as data in one place (nothing below names a row): its rows, the
    row the matched-utility comparison judges, the undefended row whose convergence the report states, the
    rows of the ResNet-18 part, and the DP defense compared at matched utility, at each relative noise z of
    ``zs`` (its strength knob is its declared noise scale)."""

    rows: tuple[RowSpec, ...]
    headline: str  # the row TIP is judged by (the paper's TIP setting)
    baseline: str  # the undefended row: its utility curve says when FedAvg converged
    ig_rows: tuple[str, ...]  # the rows attacked in the paper's own setting (ResNet-18)
    matched_defense: str  # the DP compared with the headline row at matched utility
    zs: tuple[float, ...] = DECADES

    def __post_init__(self) -> None:
        labels = [row.label for row in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError("a study's row labels must be distinct")
        for row in self.rows:
            if row.defense not in defenses.DEFENSES:
                raise ValueError(f"study row '{row.label}': unknown defense '{row.defense}'")
        for name in ("headline", "baseline"):
            if getattr(self, name) not in labels:
                raise ValueError(f"the study's {name} '{getattr(self, name)}' is not one of its rows")
        unknown = [label for label in self.ig_rows if label not in labels]
        if unknown:
            raise ValueError(f"the study's ig_rows {', '.join(unknown)} are not among its rows")
        matched = defenses.DEFENSES.get(self.matched_defense)
        if matched is None or matched.noise_knob() is None:
            raise ValueError(f"the matched defense '{self.matched_defense}' must be a registered noise defense")

    def matched_candidates(self) -> tuple[tuple[str, DefenseSetting], ...]:
        """(label, setting) of the matched DP at each z: the report attacks the one closest in utility."""
        knob = defenses.DEFENSES[self.matched_defense].noise_knob()[0]
        return tuple((f"{self.matched_defense} z={z:g}", DefenseSetting(self.matched_defense, knob, z))
                     for z in self.zs)

    def manifest(self) -> dict[str, Any]:
        return {"rows": [row.label for row in self.rows], "headline": self.headline, "baseline": self.baseline,
                "ig_rows": list(self.ig_rows), "matched_defense": self.matched_defense, "zs": list(self.zs)}


PAPER = Study(
    rows=(
        RowSpec("none", "none"),
        RowSpec("dp", "dp"),
        RowSpec("dp_paper", "dp_paper"),
        RowSpec("prune 0.7", "prune", knob="ratio", value=0.7),
        RowSpec("soteria 0.8", "soteria", dict(STUDY_OPTIONS["soteria"]), knob="ratio", value=0.8),
        RowSpec("tip p=0.1", "tip", {"ratio": 0.1}),
        RowSpec("tip p=0.3", "tip", {"ratio": 0.3}),
        RowSpec("tip p=0.6", "tip", {"ratio": 0.6}),
        RowSpec("tip_random p=0.1", "tip_random", {"ratio": 0.1}),
        RowSpec("tip_fullband p=0.1", "tip_fullband", {"ratio": 0.1}),
    ),
    headline="tip p=0.1",  # the paper's TIP setting
    baseline="none",
    ig_rows=("none", "tip p=0.1", "tip p=0.3", "dp_paper"),  # the paper's comparison, in its own setting
    matched_defense="dp_paper",
)


def settings_for(model: str, round_cfg: RoundConfig,
                 rows: tuple[RowSpec, ...] = PAPER.rows) -> dict[str, DefenseSetting]:
    """Each row as a ``DefenseSetting``: noise defenses at the relative noise their (ε, δ) calibration gives in
    this model's attack round, so that the same noise can be applied on the utility axis too."""
    out = {}
    for row in rows:
        found = defenses.DEFENSES[row.defense].noise_knob()
        if found is not None and not row.knob:
            z = strength_at_budget(row.defense, row.extra, epsilon=EPSILON, delta=DELTA, model=model,
                                   round_cfg=round_cfg)
            out[row.label] = DefenseSetting(row.defense, found[0], float(z), row.extra)
        else:
            out[row.label] = DefenseSetting(row.defense, row.knob, row.value, row.extra)
    return out


@dataclass(frozen=True)
class ReproduceConfig:
    images: int = 20
    lenet_attacks: tuple[str, ...] | None = None  # None: iDLG and every adaptive attacker built on it
    lenet_iters: int = 100  # iDLG reaches 40+ dB without a defense by then; 300 is the classic budget
    ig_attacks: tuple[str, ...] = ()  # e.g. ig and its adaptive variants; () leaves the ResNet-18 part out
    ig_images: int = 5
    ig_iters: int = 24  # CPU budget; the paper's protocol is 10,000 on a GPU (--ig-preset paper)
    ig_lr: float = 0.1  # lr decays at 3/8, 5/8, 7/8 of the budget
    ig_preset: str = ""  # "paper": the TIP paper's IG protocol (overrides ig_iters and ig_lr)
    utility: UtilityProtocol = field(default_factory=UtilityProtocol)
    seed: int = 0
    device: str = "cpu"
    study: Study = PAPER  # the rows of the table (study configuration, not a command-line option)

    def __post_init__(self) -> None:
        if self.lenet_attacks is None:
            object.__setattr__(self, "lenet_attacks", ("idlg", *adaptive_attacks("idlg")))
        cifar10_ids(self.images)
        if self.ig_attacks:
            cifar10_ids(self.ig_images)
        for a in (*self.lenet_attacks, *self.ig_attacks):
            if a not in attacks.ATTACKS:
                raise ValueError(f"unknown attack '{a}'; choose from: {', '.join(attacks.ATTACKS)}")
        if not any(kind_of(a) == "naive" for a in self.lenet_attacks):
            raise ValueError("the LeNet attacks need a naive attacker (the matched-utility test compares on it)")
        for name in ("lenet_iters", "ig_iters"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ValueError(f"{name} must be in [1, 100000], got {getattr(self, name)}")
        # Every attack's options are checked now, not hours later at its first cell.
        for a in self.lenet_attacks:
            attacks.create(a, {"iterations": self.lenet_iters})
        for a in ("ig", *self.ig_attacks):  # the IG options are checked even when the ResNet-18 part is left out
            attacks.create(a, self.ig_options())
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        from tipcore.common.seeding import pick_device

        pick_device(self.device)

    def ig_options(self) -> dict[str, Any]:
        if self.ig_preset:
            return attacks.preset_options("ig", self.ig_preset)
        # The paper's FedAvg attack (a one-gradient stand-in), not the stronger unrolled default of `ig`.
        return {"iterations": self.ig_iters, "lr": self.ig_lr, "objective": "gradient"}

    def manifest(self) -> dict[str, Any]:
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()
                 if k not in ("device", "utility", "study")}
        if self.study != PAPER:  # another table is another directory's job
            plain["study"] = self.study.manifest()
        return {"job": "reproduce", **plain, "utility": self.utility.manifest()}

    def claim(self) -> dict[str, Any]:
        """The settings a resumed run must share: all but the attacker lists, which only add cells (keyed by
        attack; the report reads the attackers it is asked for), so more attackers can join a finished run."""
        return {k: v for k, v in self.manifest().items() if k not in ("lenet_attacks", "ig_attacks")}

    def command(self, out: str | Path | None = None, utility_dir: str | Path | None = None) -> str:
        """The command line that makes this report: ``out`` and ``utility_dir`` as given to ``run`` (DIR where
        unknown), so that the report's "Made by" line reruns exactly what wrote it."""
        default = ReproduceConfig()
        flags = []
        for k, v in self.__dict__.items():
            if k == "study":
                continue  # declared in code, not on the command line
            if k == "utility":
                for uk, uv in v.manifest().items():
                    if uv != default.utility.manifest()[uk]:
                        text = ",".join(map(str, uv)) if isinstance(uv, list) else uv
                        flags.append(f"--utility-{uk.replace('_', '-')} {text}")
            elif v != getattr(default, k):
                flags.append(f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, tuple) else v}")
        if utility_dir is not None:
            flags.append(f"--utility-dir {utility_dir}")
        return " ".join([REPRODUCE_COMMAND, *flags, f"--out {shown_path(out) if out is not None else 'DIR'}"])


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (as a user would type it)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def kind_of(attack: str) -> str:
    """"adaptive" for an attacker whose registered matcher adapts to the defense, else "naive"."""
    return "adaptive" if attacks.is_adaptive(attack) else "naive"


def run(cfg: ReproduceConfig, out: str | Path, *, should_stop: StopHook = never_stop,
        utility_dir: str | Path | None = None, shard: tuple[int, int] = (0, 1)) -> Generator[Event, None, Path]:
    """Fill ``out`` (resuming) and write REPORT.md. Utility cells go to ``utility_dir`` (default ``out/utility``),
    which the sweep may share when it runs the same utility protocol.

    ``shard=(i, n)``: this process attacks only the images whose index is i modulo n, so n processes (or
    machines sharing the directory) split the attack cells; the one that finds every cell done writes REPORT.md.
    """
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out, cfg.claim())
    cells = ResumableTable(out / "cells.csv", CELL_COLUMNS, ("setting", "model", "image", "attack"))
    utility = Utility(UtilityStore(Path(utility_dir) if utility_dir is not None else out / "utility", cfg.utility))
    study = cfg.study
    lenet_settings = settings_for(ATTACK_MODEL, ATTACK_ROUND, study.rows)
    ig_settings = ({k: v for k, v in settings_for(IG_MODEL, IG_ROUND, study.rows).items() if k in study.ig_rows}
                   if cfg.ig_attacks else {})
    images = cifar10_ids(cfg.images)
    ig_images = cifar10_ids(cfg.ig_images) if cfg.ig_attacks else ()
    watch = Stopwatch()
    state = {"done": 0}

    def progress(total: int, message: str, stopped: bool = False) -> Event:
        return watch.event("reproduce", state["done"], total, "cell", message, stopped=stopped)

    def attack_groups(chosen: Mapping[str, DefenseSetting], model: str, every: bool = False) -> list[tuple]:
        """Per image (this shard's, or ``every`` one) and attack: the settings still to do, in batches of one
        optimisation each."""
        names, pictures, size = ((cfg.lenet_attacks, images, LENET_BATCH) if model == ATTACK_MODEL
                                 else (cfg.ig_attacks, ig_images, RESNET_BATCH))
        groups = []
        for image in (pictures if every else pictures[index::count]):
            for attack in names:
                todo = [(label, s) for label, s in chosen.items()
                        if not cells.has(dict(setting=label, model=model, image=image, attack=attack))]
                groups += [("attack", (group, model, image, attack)) for group in chunks(todo, size)]
        return groups

    def utility_items(chosen: Mapping[str, DefenseSetting]) -> list[tuple]:
        utility.settings.update(chosen)
        return [("utility", (label, s, seed)) for label, s in chosen.items() for seed in cfg.utility.seeds
                if not utility.store.has(s, seed)]

    def work(items: list[tuple[str, tuple]]) -> Generator[Event, None, bool]:
        total = state["done"] + sum(len(i[1][0]) if i[0] == "attack" else 1 for i in items)
        for kind, item in items:
            if should_stop():
                return False
            if kind == "utility":
                label, setting, seed = item
                yield progress(total, f"utility {label} seed {seed}")
                if not utility.store.run(setting, seed, should_stop=should_stop):
                    return False
                state["done"] += 1
                continue
            group, model, image, attack = item
            yield progress(total, f"{attack} on {model}, {image}, vs {len(group)} defenses")
            if model == ATTACK_MODEL:
                specs = [attack_config(image, s, attack, iterations=cfg.lenet_iters, seed=cfg.seed) for _, s in group]
            else:
                options = cfg.ig_options()
                iterations = options.pop("iterations")
                specs = [attack_config(image, s, attack, iterations=iterations, seed=cfg.seed, model=IG_MODEL,
                                       round_cfg=IG_ROUND, attack_options=options) for _, s in group]
            try:
                rows = attack_cells([replace(c, device=cfg.device) for c in specs], should_stop=should_stop)
            except Stopped:  # during a client round, before any attack
                return False
            if any(r["stopped"] for r in rows):
                return False
            for (label, setting), row in zip(group, rows):
                cells.append(dict(setting=label, defense=setting.defense, model=model, image=image, attack=attack,
                                  attacker=kind_of(attack), **{k: row[k] for k in CELL_COLUMNS if k in row}))
            state["done"] += len(group)
        return True

    def stopped() -> Event:
        return progress(state["done"], "stopped", stopped=True)

    # The DP row at TIP's utility is chosen from utility cells first, so that it is attacked in the same
    # batched optimisations as the other rows; the attack cells come before the remaining utility cells (a
    # sweep sharing the utility directory may be filling it meanwhile).
    candidates = study.matched_candidates()
    if not (yield from work(utility_items({study.headline: lenet_settings[study.headline], **dict(candidates)}))):
        yield stopped()
        return out
    matched_label, matched = matched_dp(utility, study.headline, candidates)
    first = attack_groups({**lenet_settings, matched_label: matched}, ATTACK_MODEL)
    if ig_settings:
        first += attack_groups(ig_settings, IG_MODEL)
    first += utility_items(lenet_settings)
    if not (yield from work(first)):
        yield stopped()
        return out
    if count > 1:
        cells.refresh()  # the other shards' cells
        missing = sum(len(g[1][0]) for g in attack_groups({**lenet_settings, matched_label: matched}, ATTACK_MODEL,
                                                          every=True))
        if missing:
            yield progress(state["done"], f"shard {index}/{count} done; {missing} cells left to the other shards")
            return out
        if ig_settings and attack_groups(ig_settings, IG_MODEL, every=True):
            yield progress(state["done"], f"shard {index}/{count} done; ResNet-18 cells left to the other shards")
            return out
    yield progress(state["done"], "writing REPORT.md")
    reference = reference_psnr(images, cfg.seed)
    text = report(cfg, cells, utility, lenet_settings, ig_settings, matched_label, matched, reference,
                  command=cfg.command(out, utility_dir))
    (out / "REPORT.md").write_text(text + "\n")
    return out


class Utility:
    """The report's view of the utility store: rows by report label."""

    def __init__(self, store: UtilityStore) -> None:
        self.store = store
        self.settings: dict[str, DefenseSetting] = {}

    def select(self, setting: str) -> list[dict[str, str]]:
        return self.store.rows(self.settings[setting]) if setting in self.settings else []


def mean_accuracy(utility: Utility, label: str) -> tuple[float, float]:
    return mean_std([number(r["accuracy"]) for r in utility.select(setting=label)])


def matched_dp(utility: Utility, tip_label: str,
               candidates: tuple[tuple[str, DefenseSetting], ...]) -> tuple[str, DefenseSetting]:
    """The candidate (the paper's DP at each relative noise z) whose utility from scratch is closest to TIP's."""
    def accuracy(label: str) -> float:
        value = mean_accuracy(utility, label)[0]
        if math.isnan(value):
            raise ValueError(f"no utility measured for '{label}' in {utility.store.directory}: rerun to complete it")
        return value

    tip_acc = accuracy(tip_label)
    label, setting = min(candidates, key=lambda c: abs(accuracy(c[0]) - tip_acc))
    return label, setting


def detection_attacks(cells: ResumableTable, attack_names: tuple[str, ...]) -> list[str]:
    """The attackers that flag channels (their rows carry a detection record)."""
    return [a for a in attack_names if any(r["flag_precision"] or r["flag_recall"]
                                           for r in cells.select(attack=a))]


def total_minutes(cells: ResumableTable) -> float:
    return sum(float(r["seconds"]) for r in cells.rows if r["seconds"]) / 60


def device_name(device: str) -> str:
    import torch

    from tipcore.common.seeding import pick_device

    dev = pick_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"the CPU ({platform.machine()})"


def wilcoxon(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """Two-sided Wilcoxon signed-rank test on paired values: (statistic, p-value), None if undefined."""
    from scipy.stats import wilcoxon as scipy_wilcoxon

    diffs = np.asarray(a) - np.asarray(b)
    if len(diffs) < 2 or np.allclose(diffs, 0):
        return None
    result = scipy_wilcoxon(a, b)
    return float(result.statistic), float(result.pvalue)


def verdict(test: tuple[float, float] | None, a: list[float], b: list[float], name_a: str, name_b: str) -> str:
    """What a paired test says, in words that do not overstate it."""
    if test is None or not a:
        return "undefined (identical or too few pairs)"
    if test[1] >= 0.05:
        return f"no significant difference (p = {test[1]:.2g} >= 0.05)"
    better = name_a if np.mean(a) < np.mean(b) else name_b
    return f"{better} has the lower PSNR (better privacy), p = {test[1]:.2g}"


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    return "—" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _per_image(cells: ResumableTable, setting: str, model: str, attack_names: tuple[str, ...]) -> dict[str, float]:
    """Per image, the best PSNR over the given attacks (the strongest attacker among them)."""
    best = best_per_image(cells.select(setting=setting, model=model), attack_names)
    return {image: float(r["psnr"]) for (image, _seed), r in best.items()}


def _winners(rows: list[Mapping[str, Any]]) -> str:
    wins: dict[str, int] = {}
    for r in rows:
        wins[r["attack"]] = wins.get(r["attack"], 0) + 1
    return ", ".join(f"`{a}` {n}" for a, n in sorted(wins.items(), key=lambda kv: (-kv[1], kv[0])))


def privacy_table(cells: ResumableTable, utility: Utility | None, settings: Mapping[str, DefenseSetting],
                  model: str, attack_list: tuple[str, ...]) -> list[str]:
    """The verdict table: per setting the naive attacker, the best adaptive one per image (and which attackers
    won), SSIM, label accuracy, utility from scratch, and the relative noise measured on both axes."""
    naive = tuple(a for a in attack_list if kind_of(a) == "naive")
    adaptive = tuple(a for a in attack_list if kind_of(a) == "adaptive")
    head = ["defense", "z (attack / utility)", f"naive ({', '.join(naive)})", "best adaptive, per image",
            "adaptive winners (images)", "SSIM naive / best adaptive", "label acc."]
    if utility is not None:
        head += ["utility from scratch", "noise/signal (attack / utility)"]
    else:
        head += ["noise/signal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, setting in settings.items():
        rows = list(cells.select(setting=label, model=model))
        if not rows:
            continue
        best_naive = list(best_per_image(rows, naive).values())
        best_adaptive = list(best_per_image(rows, adaptive).values())
        z_attack = mean_std([number(r["noise_rel"]) for r in rows])[0]
        cols = [label]
        if utility is not None:
            urows = list(utility.select(setting=label))
            z_util = mean_std([number(r["noise_rel"]) for r in urows])[0]
            cols.append(f"{_num(z_attack)} / {_num(z_util)}")
        else:
            cols.append(_num(z_attack))
        cols += [_fmt(*mean_std([float(r["psnr"]) for r in best_naive])),
                 _fmt(*mean_std([float(r["psnr"]) for r in best_adaptive])), _winners(best_adaptive) or "—",
                 f"{mean_std([float(r['ssim']) for r in best_naive])[0]:.3f} / "
                 f"{mean_std([float(r['ssim']) for r in best_adaptive])[0]:.3f}",
                 f"{mean_std([float(r['label_accuracy']) for r in best_naive])[0]:.2f}"]
        nsr_attack = mean_std([number(r["noise_to_signal"]) for r in rows])[0]
        if utility is not None:
            acc = mean_accuracy(utility, label)
            nsr_util = mean_std([number(r["noise_to_signal"]) for r in utility.select(setting=label)])[0]
            cols += [_fmt(*acc, digits=3), f"{_num(nsr_attack)} / {_num(nsr_util)}"]
        else:
            cols += [_num(nsr_attack)]
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def attacker_matrix(cells: ResumableTable, settings: Mapping[str, DefenseSetting], model: str,
                    attack_list: tuple[str, ...]) -> list[str]:
    lines = ["| defense | " + " | ".join(f"`{a}`" for a in attack_list) + " |", "|---|" + "---|" * len(attack_list)]
    for label in settings:
        rows = list(cells.select(setting=label, model=model))
        if rows:
            cols = [_fmt(*mean_std([float(r["psnr"]) for r in rows if r["attack"] == a]), digits=1) for a in attack_list]
            lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return lines


def detection_table(cells: ResumableTable, settings: Mapping[str, DefenseSetting], model: str,
                    flaggers: list[str]) -> list[str]:
    lines = ["| defense | " + " | ".join(f"`{a}` precision / recall" for a in flaggers) + " |",
             "|---|" + "---|" * len(flaggers)]
    for label in settings:
        cols = []
        for a in flaggers:
            rows = list(cells.select(setting=label, model=model, attack=a))
            p = mean_std([number(r["flag_precision"]) for r in rows])[0]
            rc = mean_std([number(r["flag_recall"]) for r in rows])[0]
            cols.append(f"{'—' if math.isnan(p) else f'{p:.2f}'} / {'—' if math.isnan(rc) else f'{rc:.2f}'}")
        if any(cells.select(setting=label, model=model)):
            lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return lines


def report(cfg: ReproduceConfig, cells: ResumableTable, utility: Utility,
           lenet_settings: Mapping[str, DefenseSetting], ig_settings: Mapping[str, DefenseSetting],
           matched_label: str, matched: DefenseSetting, reference: Mapping[str, float], *,
           command: str | None = None) -> str:
    import torch

    u, study = cfg.utility, cfg.study
    none_curves = [[float(v) for v in r["curve"].split()] for r in utility.select(setting=study.baseline)
                   if r["curve"]]
    converged = [converged_round(c) for c in none_curves]
    lines = ["# Reproduction report: TIP and the baselines, privacy and utility at the same noise", ""]
    lines += [f"Made by `{command or cfg.command()}` (this file, `cells.csv` beside it and the utility directory's "
              "`utility.csv`; rerunning resumes).",
              "", f"- Report written on: {platform.machine()}, {platform.system()}, {os.cpu_count()} CPU cores, "
              f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
              f"device {cfg.device}; Python {platform.python_version()}, torch {torch.__version__} (the cells may have "
              "been computed by earlier or parallel processes; each cell's compute time is its `seconds` column).",
              f"- Seed {cfg.seed} for the attack cells (model init, defense noise and attack start derive from it); "
              f"utility seeds {', '.join(map(str, u.seeds))}.",
              f"- Images: the first {cfg.images} gallery CIFAR-10 images (LeNet)"
              + (f"; the first {cfg.ig_images} for ResNet-18." if cfg.ig_attacks else "."),
              f"- Reference PSNR (nothing recovered): random-pixel image {reference['random_psnr']:.2f} dB, "
              f"constant grey guess {reference['grey_psnr']:.2f} dB.",
              f"- Compute time of the attack cells in cells.csv: {total_minutes(cells):.1f} min on this machine "
              "(their own wall time; utility runs not included).", "",
              "## One noise level per setting, on both axes", "",
              "Every noise defense is set by one unit-free strength, the relative noise z: the per-element standard "
              "deviation of the noise on the update divided by the clipped update's norm bound (C for the attack "
              "cell's gradient, T·η·C for a FedAvg client's T clipped steps; for DP-SGD's per-step noise, its "
              "accumulated std). A row's z is what its (ε = 5, δ = 1e-5) calibration gives where its privacy is "
              "measured (the LeNet attack cell: TIP's β = σ / n_cam / L with L = 3 and one Grad-CAM sample), and "
              "every client update of the utility run gets exactly that z. The column z (attack / utility) is read "
              "back from what each defense reported it ran with, in both cells.", "",
              f"Utility: {u.describe()}. "
              + (f"The undefended run reaches within 1 point of its final accuracy at round "
                 f"{', '.join(str(c) for c in converged)} (per seed) of {u.rounds}." if converged else ""),
              "Privacy and utility use the same model (DLG's LeNet) and the same z; the data differ (the attacks' "
              "CIFAR-10 images cannot be trained on: no CIFAR training set is bundled, so utility is on MNIST digits).",
              ""]
    naive = tuple(a for a in cfg.lenet_attacks if kind_of(a) == "naive")
    adaptive = tuple(a for a in cfg.lenet_attacks if kind_of(a) == "adaptive")
    settings = {**lenet_settings, matched_label: matched}
    lines += [f"## LeNet: DLG's LeNet (random init), FedSGD on one image, clip 5, {cfg.lenet_iters} L-BFGS steps", "",
              "PSNR (dB), mean ± std (population) over images. 'best adaptive' takes, per image, the highest PSNR "
              f"among the adaptive attackers ({', '.join(f'`{a}`' for a in adaptive)}): the evaluator's worst case "
              "for the defense, as a defense must be judged; the next column says which attacker gave it on how "
              "many images.", ""]
    lines += privacy_table(cells, utility, settings, ATTACK_MODEL, cfg.lenet_attacks)
    lines += ["", "Every attacker's mean PSNR (dB):", ""]
    lines += attacker_matrix(cells, settings, ATTACK_MODEL, cfg.lenet_attacks)
    flaggers = detection_attacks(cells, cfg.lenet_attacks)
    if flaggers:
        lines += ["", "Noised channels found from the update alone, scored against the defense's record by the "
                  "evaluator (precision / recall, mean over images; — where nothing was flagged or nothing noised):", ""]
        lines += detection_table(cells, settings, ATTACK_MODEL, flaggers)
    lines += ["", "## TIP against DP at matched utility", ""]
    headline = study.headline
    tip_acc, dp_acc = mean_accuracy(utility, headline)[0], mean_accuracy(utility, matched_label)[0]
    candidates = ", ".join(f"{setting.value:g} ({mean_accuracy(utility, label)[0]:.3f})"
                           for label, setting in study.matched_candidates())
    lines += [f"TIP ({headline}, z = {lenet_settings[headline].value:.3g}) reaches utility {tip_acc:.3f} from scratch; "
              f"among the paper's DP at z in {candidates}, `{matched_label}` is closest ({dp_acc:.3f}). Both utilities "
              "are measured at the same z as their privacy. Paired Wilcoxon signed-rank test over the LeNet images "
              "(two-sided), on PSNR:", "",
              "| attacker | TIP PSNR | DP PSNR | statistic | p-value | verdict |", "|---|---|---|---|---|---|"]
    for title, names in (("naive", naive), ("best adaptive", adaptive)):
        if not names:
            continue
        tip = _per_image(cells, headline, ATTACK_MODEL, names)
        dp = _per_image(cells, matched_label, ATTACK_MODEL, names)
        common = sorted(set(tip) & set(dp))
        a, b = [tip[i] for i in common], [dp[i] for i in common]
        test = wilcoxon(a, b)
        stat = "— | —" if test is None else f"{test[0]:.1f} | {test[1]:.2g}"
        lines.append(f"| {title} ({', '.join(names)}) | {_fmt(*mean_std(a))} | {_fmt(*mean_std(b))} | {stat} | "
                     f"{verdict(test, a, b, 'TIP', 'DP')} |")
    if ig_settings:
        lines += ["", f"## The paper's setting: CIFAR ResNet-18 (random init), FedAvg 4 local steps, lr 1e-3, clip 5", "",
                  f"Inverting Gradients with {cfg.ig_options()} on {cfg.ig_images} images, on {device_name(cfg.device)}; "
                  "the noise defenses at the z their ε = 5 calibration gives in this round (TIP: L = 20). Privacy only: "
                  "a from-scratch FedAvg run of ResNet-18 is a GPU job, so no utility is measured here.", ""]
        lines += privacy_table(cells, None, ig_settings, IG_MODEL, cfg.ig_attacks)
        lines += ["", "Every attacker's mean PSNR (dB):", ""]
        lines += attacker_matrix(cells, ig_settings, IG_MODEL, cfg.ig_attacks)
    lines += ["", "## Notes", "",
              "- Utility is the held-out accuracy after training from random init at the row's own z, so a noise "
              "level that protects the attacked update but stops the federation from learning shows up here.",
              "- `dp` is DP-SGD: per-example clipping, noise on every local step; its z counts the noise accumulated "
              "over the T steps (std η·sqrt(T)·z_dp·C/B on the update).",
              "- Attackers see only what the server sees (`ServerView` + `SharedUpdate`); the detection scores "
              "use the defense's record and are the evaluator's, never the attacker's.",
              "- A verdict with p >= 0.05 says 'no significant difference': it is not evidence that the two are equal."]
    if not cfg.ig_attacks or cfg.ig_preset != "paper":
        example = ",".join(("ig", *adaptive_attacks("ig")[:1]))  # the naive IG and a registered adaptive one
        lines += ["", "## The paper's IG budget", "",
                  f"Not run for this report (device: {device_name(cfg.device)}"
                  + (f"; {cfg.ig_options()['iterations']} IG iterations instead of 10,000" if cfg.ig_attacks else "")
                  + "). On a GPU: `python -m tipcore reproduce --ig-attacks ig,... --ig-preset paper --device cuda "
                  "--out DIR` (10,000 iterations, lr 0.004, decay 0.5). On a CPU the undefended attack needs about 500 "
                  "iterations to succeed in this setting (`python bench/ig_budget.py`; BENCHMARKS.md gives the time "
                  f"per iteration); `--ig-attacks {example},... --ig-iters 500` runs that version, resumably."]
    return "\n".join(lines)
