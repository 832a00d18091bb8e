"""Precomputed results the app shows before any compute, and the README's results table.

Everything here is made by the same engine the app and CLI run, stored in assets/showcase with the
command that regenerates it:
- punchline: one gallery image attacked (iDLG on LeNet) with no defense, DP and TIP at the same budget;
- frontier: attack PSNR (iDLG on LeNet, two CIFAR-10 images) against utility (held-out accuracy of the
  digits ConvNet after two FedAvg rounds in which every client applies the defense) for each defense as
  its strength varies.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tipcore import data

if TYPE_CHECKING:
    from tipcore.experiment import ExperimentConfig

SHOWCASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "showcase"
Log = Callable[[str], None]

PUNCHLINE_IMAGE = "cifar10-00"
PUNCHLINE_DEFENSES = (("none", "No defense"), ("dp", "DP (ε = 5)"), ("tip", "TIP (ε = 5, p = 0.1, r = 0.5)"))
PUNCHLINE_COMMAND = "python -m tipcore showcase punchline"
FRONTIER_COMMAND = "python -m tipcore showcase frontier"


def _attack_config(image_id: str, defense: str, options: dict[str, Any], iterations: int, seed: int = 0,
                   epsilon: float = 5.0) -> ExperimentConfig:
    """The class-demo setting: LeNet, FedSGD on one image with clipping C = 5, iDLG."""
    from tipcore.experiment import ExperimentConfig, with_budget
    from tipcore.fl import RoundConfig

    opts = with_budget(defense, options, epsilon, 1e-5)
    return ExperimentConfig(seed=seed, model="lenet", image_ids=(image_id,), round=RoundConfig(clip=5.0),
                            defense=defense, defense_cfg=opts, attack="idlg", attack_cfg={"iterations": iterations})


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class PunchEntry:
    defense: str
    title: str
    image: np.ndarray
    psnr: float
    ssim: float
    label_true: int
    label_pred: int


@dataclass(frozen=True)
class Punchline:
    original: np.ndarray
    label_name: str
    entries: tuple[PunchEntry, ...]
    command: str
    settings: dict[str, Any]


def make_punchline(iterations: int = 300, log: Log = print) -> Path:
    from tipcore.experiment import run

    SHOWCASE_DIR.mkdir(parents=True, exist_ok=True)
    entries = []
    for defense, title in PUNCHLINE_DEFENSES:
        record = run(_attack_config(PUNCHLINE_IMAGE, defense, {}, iterations))
        _save_png(SHOWCASE_DIR / f"punchline_{defense}.png", record.result.images[0])
        entries.append({"defense": defense, "title": title, "file": f"punchline_{defense}.png",
                        "psnr": record.scores.psnr, "ssim": record.scores.ssim,
                        "label_true": record.prepared.labels[0], "label_pred": record.result.labels[0]})
        log(f"punchline {defense}: psnr {record.scores.psnr:.2f} ssim {record.scores.ssim:.3f}")
    _save_png(SHOWCASE_DIR / "punchline_original.png", record.prepared.images[0])
    meta = {"image_id": PUNCHLINE_IMAGE, "command": PUNCHLINE_COMMAND, "entries": entries,
            "settings": {**record.config.to_dict(), "defense": "see entries", "defense_cfg": "epsilon=5, delta=1e-5"}}
    path = SHOWCASE_DIR / "punchline.json"
    path.write_text(json.dumps(meta, indent=1, default=float) + "\n")
    return path


def load_punchline() -> Punchline | None:
    path = SHOWCASE_DIR / "punchline.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    sample = data.get_sample(meta["image_id"])
    entries = tuple(
        PunchEntry(e["defense"], e["title"], _load_png(SHOWCASE_DIR / e["file"]), e["psnr"], e["ssim"],
                   e["label_true"], e["label_pred"])
        for e in meta["entries"]
    )
    return Punchline(_load_png(SHOWCASE_DIR / "punchline_original.png"), sample.class_name, entries,
                     meta["command"], meta["settings"])


@dataclass(frozen=True)
class FrontierPoint:
    defense: str
    strength_name: str
    strength: float
    psnr: float
    ssim: float
    accuracy: float


@dataclass(frozen=True)
class Frontier:
    points: tuple[FrontierPoint, ...]
    command: str
    settings: dict[str, Any]


FRONTIER_GRID: dict[str, tuple[str, tuple[float, ...]]] = {
    "none": ("", (0.0,)),
    "dp_paper": ("epsilon", (100.0, 20.0, 5.0, 1.0)),
    "tip": ("epsilon", (100.0, 20.0, 5.0, 1.0)),
    "prune": ("ratio", (0.3, 0.7, 0.9, 0.99)),
    "soteria": ("ratio", (0.3, 0.6, 0.9)),
}


def make_frontier(quick: bool = False, log: Log = print) -> Path:
    from tipcore import flsim
    from tipcore.attacks import drive
    from tipcore.experiment import run, with_budget

    images = ("cifar10-00",) if quick else ("cifar10-00", "cifar10-01")
    iterations = 20 if quick else 150
    fl_rounds = 1 if quick else 2
    points = []
    for defense, (knob, values) in FRONTIER_GRID.items():
        for value in (values[:2] if quick else values):
            options: dict[str, Any] = {knob: value} if knob and knob != "epsilon" else {}
            epsilon = value if knob == "epsilon" else 5.0
            scores = [run(_attack_config(i, defense, options, iterations, epsilon=epsilon)).scores for i in images]
            fl_opts = with_budget(defense, options, epsilon, 1e-5)
            fl_cfg = flsim.FLConfig(weights="digits", rounds=fl_rounds, defense=defense, defense_cfg=fl_opts)
            fl = drive(flsim.simulate(fl_cfg))
            point = FrontierPoint(defense, knob, value, float(np.mean([s.psnr for s in scores])),
                                  float(np.mean([s.ssim for s in scores])), fl.rounds[-1].accuracy)
            points.append(point)
            log(f"frontier {defense} {knob}={value}: psnr {point.psnr:.2f} accuracy {point.accuracy:.3f}")
    settings = {"attack": f"idlg, {iterations} L-BFGS steps, LeNet random init, FedSGD with clip 5, images {list(images)}",
                "utility": f"held-out accuracy of the digits ConvNet after {fl_rounds} defended FedAvg rounds "
                           "(10 clients, defaults of FLConfig)",
                "quick": quick}
    path = SHOWCASE_DIR / ("frontier_quick.json" if quick else "frontier.json")
    SHOWCASE_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": FRONTIER_COMMAND + (" --quick" if quick else ""), "settings": settings,
                                "points": [p.__dict__ for p in points]}, indent=1) + "\n")
    return path


def load_frontier() -> Frontier | None:
    path = SHOWCASE_DIR / "frontier.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return Frontier(tuple(FrontierPoint(**p) for p in meta["points"]), meta["command"], meta["settings"])


def results_table(defense_names: list[str], *, images: int = 20, attack: str = "idlg", iterations: int = 300,
                  epsilon: float = 5.0, seed: int = 0, log: Log = print) -> tuple[str, bytes]:
    """Mean ± std of PSNR / SSIM and label accuracy per defense over the first N gallery CIFAR-10 images."""
    from tipcore.experiment import ExperimentConfig, run

    ids = [s.id for s in data.gallery() if s.dataset == "cifar10"][:images]
    if not ids:
        raise ValueError("no CIFAR-10 images in the gallery")
    rows = []
    for defense in defense_names:
        psnr, ssim, acc = [], [], []
        for image_id in ids:
            cfg = _attack_config(image_id, defense, {}, iterations, seed=seed, epsilon=epsilon)
            if attack != "idlg":
                cfg = ExperimentConfig(**{**cfg.__dict__, "attack": attack, "attack_cfg": {"iterations": iterations}})
            s = run(cfg).scores
            psnr.append(s.psnr), ssim.append(s.ssim), acc.append(s.label_accuracy)
        rows.append((defense, np.mean(psnr), np.std(psnr), np.mean(ssim), np.std(ssim), np.mean(acc)))
        log(f"table {defense}: psnr {np.mean(psnr):.2f} ± {np.std(psnr):.2f}")
    md = [f"| defense | PSNR (dB) | SSIM | label accuracy |", "|---|---|---|---|"]
    md += [f"| {d} | {p:.2f} ± {ps:.2f} | {s:.3f} ± {ss:.3f} | {a:.2f} |" for d, p, ps, s, ss, a in rows]
    md.append("")
    md.append(f"{attack}, {iterations} steps, LeNet (random init), FedSGD with clip 5, ε = {epsilon} for budgeted "
              f"defenses, seed {seed}, {len(ids)} gallery CIFAR-10 images.")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["defense", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "label_accuracy"])
    writer.writerows([[d, f"{p:.4f}", f"{ps:.4f}", f"{s:.4f}", f"{ss:.4f}", f"{a:.3f}"] for d, p, ps, s, ss, a in rows])
    return "\n".join(md) + "\n", buf.getvalue().encode()
