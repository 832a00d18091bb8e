"""The "How TIP works" page's precomputed reconstructions: TIP over a small grid of p, r and ε.

``python -m tipcore showcase tip-grid`` attacks the first gallery images in the class-demo round (DLG's
LeNet, random init, FedSGD on one image, clip 5, seed 0) under TIP at every (p, r, ε) of the grid, and once
without a defense, with the naive iDLG and every adaptive attacker built on it (100 L-BFGS steps); the
settings of one image and attacker run as batched optimisations. Finished cells are kept in
``runs/showcase-tip-grid`` (a resumable table plus one PNG per cell, keyed by attacker, so an interrupted
build resumes and one with more attackers runs only theirs); at the end the scores go to
``assets/showcase/tip_grid.json`` and the reconstructions, as uint8 pixels, to ``tip_grid.npz``.

``load()`` reads them back without running anything, and ``TipGrid.find`` answers for a slider setting with
the naive attacker's cell and the best adaptive one's: per image and setting the highest PSNR among the
adaptive attackers (``tipcore.studies.cells.best_per_image``), as a defense must be judged.
Two settings that give the same defense are the same grid point: TIP noises k = max(1, floor(p · C_out))
channels per layer and the bins of the high-frequency mask M_r, so every p with the same k per layer and
every r with the same masks produce bit for bit the same defended update (same seed, same random draws).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Mapping, Sequence

import numpy as np

from tipcore.common.progress import Event, StopHook, Stopped, Stopwatch, drive, never_stop
from tipcore.studies.resumable import ResumableTable, claim_directory

TIP_GRID_COMMAND = "python -m tipcore showcase tip-grid"
GRID_JSON = "tip_grid.json"
GRID_NPZ = "tip_grid.npz"
WORK_DIR = Path("runs") / "showcase-tip-grid"

# The class-demo round the grid is made in (tipcore.pipeline.presets "demo"): what a slider setting must match.
MODEL, WEIGHTS, CLIP = "lenet", "random", 5.0
ROUND = {"mode": "fedsgd", "local_steps": 1, "batch_size": 1, "clip": CLIP}
VARIANT = "tip"
TOLERANCE = 1e-9  # relative: ε read from a URL or a number box is the grid's ε within float rounding

COLUMNS = ("image", "attack", "attacker", "defense", "ratio", "cutoff", "epsilon", "beta", "psnr", "ssim",
           "label_accuracy", "flag_precision", "flag_recall", "steps", "seconds", "file")
KEY = ("image", "attack", "defense", "ratio", "cutoff", "epsilon")




def default_points() -> tuple[tuple[float, float, float], ...]:
    """(p, r, ε) of the grid: every p x r x ε of p = 0.1, 0.3, 0.6 (k = 1, 3, 7 of LeNet's 12 channels per
    layer), r = 0.25, 0.5, 0.75 (three different masks on its 5 x 5 kernels) and ε = 1, 5, 20."""
    return tuple((p, r, e) for p in (0.1, 0.3, 0.6) for r in (0.25, 0.5, 0.75) for e in (1.0, 5.0, 20.0))


@dataclass(frozen=True)
class TipGridConfig:
    images: tuple[str, ...] = ("cifar10-00", "cifar10-01")  # the page's default image and the next one
    points: tuple[tuple[float, float, float], ...] = field(default_factory=default_points)  # (p, r, ε)
    delta: float = 1e-5
    naive: str = "idlg"
    adaptive: tuple[str, ...] | None = None  # None: every registered adaptive attacker built on ``naive``
    iterations: int = 100
    seed: int = 0
    batch: int = 14  # settings per batched optimisation

    def __post_init__(self) -> None:
        from tipcore import attacks
        from tipcore.federation import data
        from tipcore.studies.cells import adaptive_attacks

        ids = {s.id for s in data.gallery()}
        if not self.images or len(set(self.images)) != len(self.images):
            raise ValueError("images must be a non-empty list of distinct gallery ids")
        for image in self.images:
            if image not in ids:
                raise ValueError(f"unknown gallery image '{image}'")
        if not self.points or len(set(self.points)) != len(self.points):
            raise ValueError("points must be a non-empty list of distinct (p, r, ε)")
        for point in self.points:
            if len(point) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in point):
                raise ValueError(f"a point is (p, r, ε), three finite numbers; got {point!r}")
            p, r, e = point
            if not (0.0 <= p <= 1.0 and 0.0 <= r <= 1.0 and 0.0 < e <= 1e6):
                raise ValueError(f"point {point}: p and r must lie in [0, 1] and ε in (0, 1e6]")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.naive not in attacks.ATTACKS:
            raise ValueError(f"unknown attack '{self.naive}'; choose from: {', '.join(attacks.ATTACKS)}")
        if isinstance(self.adaptive, str):
            raise ValueError(f"adaptive is a list of attack names, got the string '{self.adaptive}'")
        adaptive = adaptive_attacks(self.naive) if self.adaptive is None else tuple(self.adaptive)
        object.__setattr__(self, "adaptive", adaptive)
        if not adaptive or len(set(adaptive)) != len(adaptive):
            raise ValueError("adaptive must be a non-empty list of distinct attack names")
        for attack in adaptive:
            if attack not in attacks.ATTACKS:
                raise ValueError(f"unknown attack '{attack}'; choose from: {', '.join(attacks.ATTACKS)}")
            if not attacks.is_adaptive(attack):
                raise ValueError(f"'{attack}' does not know the defense; adaptive attackers are: "
                                 f"{', '.join(adaptive_attacks(self.naive))}")
        if not 1 <= self.iterations <= 100_000:
            raise ValueError(f"iterations must be in [1, 100000], got {self.iterations}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if not 1 <= self.batch <= 64:
            raise ValueError(f"batch must be in [1, 64], got {self.batch}")

    def manifest(self) -> dict[str, Any]:
        """What every cell shares. The images, points and adaptive attackers are left out: a cell is keyed by
        them (its image, setting and attack), so a grid with more points, images or attackers resumes from the
        cells an earlier build finished; the written settings list them."""
        return {"job": "tip-grid", "delta": self.delta, "naive": self.naive,
                "iterations": self.iterations, "seed": self.seed, "model": MODEL, "weights": WEIGHTS,
                "round": ROUND, "variant": VARIANT}

    def settings(self) -> list[dict[str, Any]]:
        """The undefended reference, then TIP at every (p, r, ε): one row key each (defense, ratio, cutoff, ε)."""
        out: list[dict[str, Any]] = [{"defense": "none", "ratio": None, "cutoff": None, "epsilon": None}]
        out += [{"defense": VARIANT, "ratio": float(p), "cutoff": float(r), "epsilon": float(e)}
                for p, r, e in self.points]
        return out

    def attackers(self) -> list[tuple[str, str]]:
        return [(self.naive, "naive")] + [(a, "adaptive") for a in self.adaptive]


def _experiment(cfg: TipGridConfig, image: str, setting: Mapping[str, Any], attack: str):
    from tipcore.pipeline.runspec import RunSpec
    from tipcore.federation.fl import RoundConfig

    options: dict[str, Any] = {}
    if setting["defense"] != "none":
        options = {"ratio": setting["ratio"], "cutoff": setting["cutoff"], "noise": "calibrated",
                   "epsilon": setting["epsilon"], "delta": cfg.delta}
    return RunSpec(seed=cfg.seed, model=MODEL, weights=WEIGHTS, image_ids=(image,),
                            round=RoundConfig(**ROUND), defense=setting["defense"], defense_cfg=options,
                            attack=attack, attack_cfg={"iterations": cfg.iterations}, device="cpu")


def _cell_file(image: str, attack: str, setting: Mapping[str, Any]) -> str:
    if setting["defense"] == "none":
        return f"{image}_{attack}_none.png"
    return f"{image}_{attack}_tip_p{setting['ratio']:g}_r{setting['cutoff']:g}_e{setting['epsilon']:g}.png"


def _balanced(items: list, size: int) -> list[list]:
    """``items`` in ceil(n / size) groups of nearly equal length (lockstep L-BFGS waits for the slowest)."""
    groups = max(1, math.ceil(len(items) / size))
    return [items[i::groups] for i in range(groups)] if items else []


def build(cfg: TipGridConfig, work_dir: str | Path = WORK_DIR, out_dir: str | Path | None = None, *,
          should_stop: StopHook = never_stop) -> Generator[Event, None, Path | None]:
    """Attack every cell still missing from ``work_dir`` (resuming), then write ``tip_grid.json`` and
    ``tip_grid.npz`` into ``out_dir`` (assets/showcase by default). Stopped: finished cells are kept, nothing
    is written to ``out_dir`` and None is returned."""
    from tipcore.pipeline.experiment import stream_comparison
    from tipcore.common.pictures import save_png
    from tipcore.explorer.showcase import SHOWCASE_DIR

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    claim_directory(work, cfg.manifest())
    (work / "cells").mkdir(exist_ok=True)
    table = ResumableTable(work / "cells.csv", COLUMNS, KEY)
    groups = []
    for image in cfg.images:  # one image's settings run together, one attacker at a time
        for attack, kind in cfg.attackers():
            todo = [s for s in cfg.settings() if not table.has({"image": image, "attack": attack, **s})]
            groups += [(image, attack, kind, group) for group in _balanced(todo, cfg.batch)]
    watch, total, done = Stopwatch(), sum(len(g[3]) for g in groups), 0
    for image, attack, kind, group in groups:
        if should_stop():
            yield watch.event("tip-grid", done, total, "cell", "stopped", stopped=True)
            return None
        yield watch.event("tip-grid", done, total, "cell", f"{attack} vs {len(group)} settings on {image}")
        t0 = time.perf_counter()
        try:
            records = drive(stream_comparison([_experiment(cfg, image, s, attack) for s in group],
                                              should_stop=should_stop))
        except Stopped:
            records = None
        if records is None or any(r.result.stopped for r in records):
            yield watch.event("tip-grid", done, total, "cell", "stopped", stopped=True)
            return None
        share = (time.perf_counter() - t0) / len(records)
        for setting, record in zip(group, records):
            name = _cell_file(image, attack, setting)
            save_png(work / "cells" / name, record.result.images[0])
            detection = record.analysis.get("detection") or {}
            table.append({"image": image, "attack": attack, "attacker": kind, **setting,
                          "beta": record.prepared.diagnostics.summary.get("beta"),
                          "psnr": record.scores.psnr, "ssim": record.scores.ssim,
                          "label_accuracy": record.scores.label_accuracy,
                          "flag_precision": detection.get("precision"), "flag_recall": detection.get("recall"),
                          "steps": record.result.iterations, "seconds": round(share, 3), "file": name})
        done += len(group)
        yield watch.event("tip-grid", done, total, "cell",
                          f"{attack} on {image}: {len(group)} settings in {share * len(group):.1f} s")
    return write(cfg, table, work, Path(out_dir) if out_dir is not None else SHOWCASE_DIR)


def _layers() -> list[dict[str, Any]]:
    """The conv layers TIP targets in the grid's model: what decides which settings are the same defense."""
    from tipcore.federation import models

    model = models.build(MODEL, weights=WEIGHTS)
    return [{"name": n, "out_channels": int(m.out_channels), "kernel_size": [int(v) for v in m.kernel_size]}
            for n, m in models.conv_layers(model)]


def write(cfg: TipGridConfig, table: ResumableTable, work: Path, out: Path) -> Path:
    from tipcore.common.pictures import load_png

    cells, pixels, seconds = [], [], 0.0
    for image in cfg.images:
        for attack, kind in cfg.attackers():
            for setting in cfg.settings():
                row = table.select(image=image, attack=attack, **setting)[0]
                seconds += float(row["seconds"])
                picture = load_png(work / "cells" / row["file"])
                pixels.append(np.round(picture * 255).astype(np.uint8))
                cells.append({"image": image, "attack": attack, "attacker": kind, **setting,
                              "beta": _num(row["beta"]), "psnr": float(row["psnr"]), "ssim": float(row["ssim"]),
                              "label_accuracy": float(row["label_accuracy"]),
                              "flag_precision": _num(row["flag_precision"]), "flag_recall": _num(row["flag_recall"]),
                              "steps": int(row["steps"]), "index": len(pixels) - 1})
    settings = {**cfg.manifest(), "adaptive": list(cfg.adaptive), "images": list(cfg.images),
                "points": [list(p) for p in cfg.points], "attack_seconds": round(seconds, 1)}
    meta = {"command": TIP_GRID_COMMAND, "settings": settings,
            "layers": _layers(), "cells": cells}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / GRID_NPZ, reconstructions=np.stack(pixels))
    (out / GRID_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    return out / GRID_JSON


def _num(text: str) -> float | None:
    return float(text) if text not in ("", "None") else None


def make(cfg: TipGridConfig | None = None, work_dir: str | Path = WORK_DIR, out_dir: str | Path | None = None,
         on_event: Callable[[Event], None] | None = None) -> Path | None:
    return drive(build(cfg or TipGridConfig(), work_dir, out_dir), on_event)


# ------------------------------------------------------------------------------------------ reading it back


@dataclass(frozen=True)
class GridQuery:
    """What the "How TIP works" page is set to, in the terms the grid is keyed by."""

    image_id: str | None  # None for an upload
    model: str
    weights: str
    round: Mapping[str, Any]  # mode, local_steps, lr, clip (as the app's round_dict)
    seed: int
    variant: str
    noise: str  # "calibrated" | "direct"
    epsilon: float
    delta: float
    ratio: float
    cutoff: float


@dataclass(frozen=True)
class GridCell:
    attack: str
    attacker: str  # "naive" | "adaptive"
    image: np.ndarray  # (32, 32, 3) float32 in [0, 1]
    psnr: float
    ssim: float
    label_accuracy: float
    beta: float | None
    flag_precision: float | None = None
    flag_recall: float | None = None


@dataclass(frozen=True)
class GridMatch:
    ratio: float  # the grid's own p and r that give the same defense as the query's
    cutoff: float
    epsilon: float
    channels: tuple[int, ...]  # k per conv layer
    naive: GridCell
    adaptive: GridCell  # the best adaptive attacker's cell at this point (highest PSNR among the grid's)
    undefended: tuple[GridCell, GridCell]  # the naive and the best adaptive attacker without a defense
    exact: bool  # the query's p and r are the grid's own values (not only the same defense)
    candidates: Mapping[str, float] = field(default_factory=dict)  # every adaptive attacker's PSNR at this point


@dataclass(frozen=True)
class TipGrid:
    command: str
    settings: Mapping[str, Any]
    layers: tuple[Mapping[str, Any], ...]
    cells: tuple[Mapping[str, Any], ...]
    pixels: np.ndarray = field(repr=False)  # (N, 32, 32, 3) uint8

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(self.settings["images"])

    @property
    def adaptive(self) -> tuple[str, ...]:
        """The grid's adaptive attackers (a grid built before it held several names one: idlg_drop)."""
        names = self.settings["adaptive"]
        return (names,) if isinstance(names, str) else tuple(names)

    def strongest_adaptive(self, image: str | None = None) -> str:
        """The adaptive attacker that is the best one at the most TIP points (of ``image``, else of every
        image; a tie goes to the higher mean PSNR): the one to run where the grid has no cell."""
        from tipcore.studies.cells import best_per_image

        wins = {a: 0 for a in self.adaptive}
        psnrs: dict[str, list[float]] = {a: [] for a in self.adaptive}
        by_point: dict[tuple, list[Mapping[str, Any]]] = {}
        for c in self.cells:
            if c["attack"] in wins and c["defense"] != "none" and (image is None or c["image"] == image):
                by_point.setdefault((c["image"], c["ratio"], c["cutoff"], c["epsilon"]), []).append(c)
                psnrs[c["attack"]].append(float(c["psnr"]))
        for rows in by_point.values():
            for best in best_per_image(rows, self.adaptive).values():
                wins[best["attack"]] += 1
        return max(self.adaptive, key=lambda a: (wins[a], float(np.mean(psnrs[a])) if psnrs[a] else -math.inf))

    def signature(self, ratio: float, cutoff: float) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        """What TIP does at (p, r) on this model: k per conv layer and each layer's noised-bin mask."""
        from tipcore.signals import spectral
        from tipcore.defenses.tip import TipConfig

        tip = TipConfig(ratio=float(ratio), cutoff=float(cutoff))
        ks = tuple(tip.channels(int(layer["out_channels"])) for layer in self.layers)
        masks = tuple(spectral.highfreq_mask(*layer["kernel_size"], float(cutoff)).numpy().astype(bool).tobytes()
                      for layer in self.layers)
        return ks, masks

    def _cell(self, image: str, attack: str, **setting: Any) -> GridCell:
        for c in self.cells:
            if c["image"] == image and c["attack"] == attack and all(c[k] == v for k, v in setting.items()):
                return GridCell(c["attack"], c["attacker"], self.pixels[c["index"]].astype(np.float32) / 255.0,
                                float(c["psnr"]), float(c["ssim"]), float(c["label_accuracy"]), c.get("beta"),
                                c.get("flag_precision"), c.get("flag_recall"))
        raise KeyError(f"the grid file has no cell for {image}, {attack}, {setting}")

    def find(self, q: GridQuery) -> tuple[GridMatch | None, str]:
        """The grid point with the same defense as ``q``, or None and one sentence saying why there is none."""
        s = self.settings
        off = _off_grid_reason(q, s, self.images)
        if off:
            return None, off
        points = [tuple(float(v) for v in point) for point in s["points"]]
        epsilons = sorted({e for _, _, e in points})
        epsilon = next((e for e in epsilons if math.isclose(q.epsilon, e, rel_tol=TOLERANCE)), None)
        if epsilon is None:
            return None, f"ε = {q.epsilon:g} is not on the grid (it holds ε = {_list(epsilons)})"
        wanted = self.signature(q.ratio, q.cutoff)
        found = next(((p, r) for p, r, e in points if e == epsilon and self.signature(p, r) == wanted), None)
        if found is None:
            return None, (f"p = {q.ratio:g} (k = {wanted[0][0]} of {self.layers[0]['out_channels']} channels per "
                          f"layer) with r = {q.cutoff:g} at ε = {epsilon:g} is not on the grid")
        ratio, cutoff = found
        naive = s["naive"]
        point = {"defense": VARIANT, "ratio": ratio, "cutoff": cutoff, "epsilon": epsilon}
        none = {"defense": "none"}
        adaptive, candidates = self._best_adaptive(q.image_id, **point)
        match = GridMatch(ratio, cutoff, epsilon, wanted[0], self._cell(q.image_id, naive, **point), adaptive,
                          (self._cell(q.image_id, naive, **none), self._best_adaptive(q.image_id, **none)[0]),
                          exact=math.isclose(ratio, q.ratio) and math.isclose(cutoff, q.cutoff),
                          candidates=candidates)
        return match, ""

    def _best_adaptive(self, image: str, **setting: Any) -> tuple[GridCell, dict[str, float]]:
        """The best adaptive attacker's cell at a setting (highest PSNR), and every adaptive attacker's PSNR."""
        from tipcore.studies.cells import best_per_image

        cells = {a: self._cell(image, a, **setting) for a in self.adaptive}
        rows = [{"image": image, "attack": a, "psnr": cell.psnr} for a, cell in cells.items()]
        best = best_per_image(rows, self.adaptive)[(image, "")]["attack"]
        return cells[best], {a: cell.psnr for a, cell in cells.items()}


def _list(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _off_grid_reason(q: GridQuery, s: Mapping[str, Any], images: Sequence[str]) -> str:
    if q.image_id is None:
        return "uploaded images are not in the precomputed grid"
    if q.image_id not in images:
        return f"the grid holds the gallery images {', '.join(images)}, not {q.image_id}"
    if (q.model, q.weights) != (s["model"], s["weights"]):
        return f"the grid was made with LeNet ({s['weights']} weights), not {q.model} ({q.weights} weights)"
    grid_round = s["round"]
    if q.round.get("mode") != grid_round["mode"] or q.round.get("clip") != grid_round["clip"]:
        return (f"the grid was made in the class-demo round (FedSGD on one image, clip {grid_round['clip']:g}), "
                "not this one")
    if q.seed != s["seed"]:
        return f"the grid was made with seed {s['seed']}, not {q.seed}"
    if q.variant != s["variant"]:
        return f"the grid holds TIP itself, not the {q.variant} ablation"
    if q.noise != "calibrated":
        return "the grid holds noise calibrated from ε, not a direct β"
    if not math.isclose(q.delta, s["delta"], rel_tol=TOLERANCE):
        return f"the grid was made at δ = {s['delta']:.0e}, not {q.delta:.0e}"
    return ""


def load(directory: str | Path | None = None) -> TipGrid | None:
    """The grid in ``directory`` (assets/showcase by default), or None when it has not been built; raises
    ValueError when its files do not fit together."""
    from tipcore.explorer.showcase import SHOWCASE_DIR

    base = Path(directory) if directory is not None else SHOWCASE_DIR
    meta_path, npz_path = base / GRID_JSON, base / GRID_NPZ
    if not meta_path.is_file() or not npz_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(npz_path) as npz:
            pixels = npz["reconstructions"]
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(f"{GRID_JSON}/{GRID_NPZ} cannot be read: {exc}") from None
    cells = meta.get("cells") or []
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (32, 32, 3):
        raise ValueError(f"{GRID_NPZ}: expected uint8 pixels of shape (N, 32, 32, 3), got {pixels.shape}")
    if any(not 0 <= int(c.get("index", -1)) < len(pixels) for c in cells):
        raise ValueError(f"{GRID_JSON} names a reconstruction {GRID_NPZ} does not hold")
    return TipGrid(meta["command"], meta["settings"], tuple(meta["layers"]), tuple(cells), pixels)
