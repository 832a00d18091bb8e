"""Precomputed results the app shows before any compute, and the README's results table.

Everything here is made by the same engine the app and CLI run, stored in assets/showcase with the
command that regenerates it:
- punchline: one gallery image attacked (iDLG on LeNet) with no defense, DP and TIP at the same budget, and
  TIP once more against the adaptive iDLG that finds TIP's noised channels and leaves them out (idlg_drop);
- privacy curves (``load_privacy_curves``): attack PSNR against defense strength and utility for the naive
  and the best adaptive attacker, written by the sweep into assets/showcase/privacy_curves.json;
- frontier: attack PSNR (iDLG on LeNet, two CIFAR-10 images) against utility (held-out accuracy of the
  digits ConvNet after two FedAvg rounds in which every client applies the defense) for each defense as
  its strength varies.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tipcore import data

if TYPE_CHECKING:
    from tipcore.experiment import ExperimentConfig

SHOWCASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "showcase"
Log = Callable[[str], None]

PUNCHLINE_IMAGE = "cifar10-00"
# (defense, attack, title): the naive iDLG against each defense, then TIP against the adaptive iDLG.
PUNCHLINE_ENTRIES = (
    ("none", "idlg", "No defense"),
    ("dp", "idlg", "DP (ε = 5)"),
    ("tip", "idlg", "TIP (ε = 5, p = 0.1, r = 0.5)"),
    ("tip", "idlg_drop", "TIP vs adaptive iDLG"),  # drops the channels it finds noised
)
PUNCHLINE_DEFENSES = tuple((d, title) for d, _, title in PUNCHLINE_ENTRIES)  # (defense, title) per entry
PUNCHLINE_COMMAND = "python -m tipcore showcase punchline"
FRONTIER_COMMAND = "python -m tipcore showcase frontier"
PRIVACY_CURVES_FILE = "privacy_curves.json"
PRIVACY_CURVES_COMMAND = FRONTIER_COMMAND


def _attack_config(image_id: str, defense: str, options: dict[str, Any], iterations: int, seed: int = 0,
                   epsilon: float = 5.0, attack: str = "idlg") -> ExperimentConfig:
    """The class-demo setting: LeNet, FedSGD on one image with clipping C = 5, iDLG (or a variant of it)."""
    from tipcore.experiment import ExperimentConfig, with_budget
    from tipcore.fl import RoundConfig

    opts = with_budget(defense, options, epsilon, 1e-5)
    return ExperimentConfig(seed=seed, model="lenet", image_ids=(image_id,), round=RoundConfig(clip=5.0),
                            defense=defense, defense_cfg=opts, attack=attack, attack_cfg={"iterations": iterations})


def _punch_file(defense: str, attack: str) -> str:
    return f"punchline_{defense}.png" if attack == "idlg" else f"punchline_{defense}_{attack}.png"


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
    attack: str = "idlg"
    analysis: dict[str, Any] = field(default_factory=dict)  # RunRecord.analysis (noise-to-signal, detection)


@dataclass(frozen=True)
class ChannelView:
    """What an adaptive attacker sees in one conv layer of the defended update: each output channel's
    high-to-low-frequency energy ratio, the channels the defense really noised and those the attacker flagged."""

    layer: str
    roughness: tuple[float, ...]
    noised: tuple[int, ...]
    flagged: tuple[int, ...]


@dataclass(frozen=True)
class Punchline:
    original: np.ndarray
    label_name: str
    entries: tuple[PunchEntry, ...]
    command: str
    settings: dict[str, Any]
    channels: tuple[ChannelView, ...] = ()  # the TIP update the adaptive entry attacked

    def entry(self, defense: str, attack: str = "idlg") -> PunchEntry | None:
        for e in self.entries:
            if e.defense == defense and e.attack == attack:
                return e
        return None


def _plain(value: Any) -> Any:
    """JSON-ready copy of an analysis dict (tuples to lists, numpy scalars to floats)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _channel_views(record: Any) -> list[dict[str, Any]]:
    """Per conv layer of the defended update: the drop matcher's roughness score per output channel (computed
    from the update alone, as the attacker does), TIP's true selection and the attacker's flags."""
    from tipcore import update_stats
    from tipcore.attacks.matching import MatchOptions, layer_scores

    truth = update_stats.true_selection(record.prepared.diagnostics) or {}
    flagged = dict(record.result.flagged)
    cutoff = MatchOptions().assumed_cutoff  # the r the attacker assumes, not the defense's record
    out = []
    for layer in truth:
        weight = record.prepared.defended.tensors.get(f"{layer}.weight")
        if weight is None or weight.ndim != 4 or weight.shape[-1] * weight.shape[-2] <= 1:
            continue
        scores = layer_scores(layer, weight, cutoff)
        out.append({"layer": layer, "roughness": [float(v) for v in scores.roughness.tolist()],
                    "noised": sorted(int(c) for c in truth[layer]),
                    "flagged": sorted(int(c) for c in flagged.get(layer, ()))})
    return out


def make_punchline(iterations: int = 300, log: Log = print) -> Path:
    from tipcore.experiment import run

    SHOWCASE_DIR.mkdir(parents=True, exist_ok=True)
    entries, channels = [], []
    for defense, attack, title in PUNCHLINE_ENTRIES:
        record = run(_attack_config(PUNCHLINE_IMAGE, defense, {}, iterations, attack=attack))
        name = _punch_file(defense, attack)
        _save_png(SHOWCASE_DIR / name, record.result.images[0])
        entries.append({"defense": defense, "attack": attack, "title": title, "file": name,
                        "psnr": record.scores.psnr, "ssim": record.scores.ssim,
                        "label_true": record.prepared.labels[0], "label_pred": record.result.labels[0],
                        "analysis": _plain(dict(record.analysis))})
        if record.result.match == "drop" and defense.startswith("tip"):
            channels = _channel_views(record)
        log(f"punchline {defense}/{attack}: psnr {record.scores.psnr:.2f} ssim {record.scores.ssim:.3f}")
    _save_png(SHOWCASE_DIR / "punchline_original.png", record.prepared.images[0])
    settings = {**record.config.to_dict(), "defense": "see entries", "attack": "see entries",
                "defense_cfg": "epsilon=5, delta=1e-5"}
    meta = {"image_id": PUNCHLINE_IMAGE, "command": PUNCHLINE_COMMAND, "entries": entries,
            "channels": channels, "settings": settings}
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
                   e["label_true"], e["label_pred"], e.get("attack", "idlg"), dict(e.get("analysis") or {}))
        for e in meta["entries"]
    )
    channels = tuple(ChannelView(c["layer"], tuple(float(v) for v in c["roughness"]), tuple(c["noised"]),
                                 tuple(c["flagged"])) for c in meta.get("channels", ()))
    return Punchline(_load_png(SHOWCASE_DIR / "punchline_original.png"), sample.class_name, entries,
                     meta["command"], meta["settings"], channels)


# ------------------------------------------------------------------------------------------ privacy curves

_CURVE_FIELDS: dict[str, tuple[type, ...]] = {
    "defense": (str,), "knob": (str,), "strength": (int, float), "attacker": (str,), "attack": (str,),
    "psnr": (int, float), "psnr_std": (int, float), "ssim": (int, float), "label_accuracy": (int, float),
    "update_cosine": (int, float), "noise_to_signal": (int, float), "images": (int,),
}
_CURVE_OPTIONAL = ("noise_scale", "accuracy")  # float or null
ATTACKER_KINDS = ("naive", "adaptive")


def load_privacy_curves(path: str | Path | None = None) -> dict[str, Any] | None:
    """The sweep's privacy curves (``assets/showcase/privacy_curves.json``) as the sweep wrote them, checked,
    or None when the file is missing. Raises ValueError when the file is malformed.

    Schema: {"command": str, "settings": {...}, "reference": {"random_psnr": float, "grey_psnr": float},
    "points": [{"defense", "knob", "strength", "noise_scale" (float|null), "attacker" ("naive"|"adaptive"),
    "attack", "psnr", "psnr_std", "ssim", "label_accuracy", "accuracy" (float|null), "update_cosine",
    "noise_to_signal", "images"}, ...]}.
    """
    path = Path(path) if path is not None else SHOWCASE_DIR / PRIVACY_CURVES_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name}: expected a JSON object")
    for key, kind in (("command", str), ("settings", dict), ("reference", dict), ("points", list)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{path.name}: '{key}' is missing or not a {kind.__name__}")
    for key in ("random_psnr", "grey_psnr"):
        value = meta["reference"].get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path.name}: reference.{key} is missing or not a number")
    for i, point in enumerate(meta["points"]):
        if not isinstance(point, dict):
            raise ValueError(f"{path.name}: points[{i}] is not an object")
        for key, kinds in _CURVE_FIELDS.items():
            value = point.get(key)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"{path.name}: points[{i}].{key} is missing or has the wrong type")
        for key in _CURVE_OPTIONAL:
            value = point.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{path.name}: points[{i}].{key} must be a number or null")
        if point["attacker"] not in ATTACKER_KINDS:
            raise ValueError(f"{path.name}: points[{i}].attacker must be one of {', '.join(ATTACKER_KINDS)}")
    return meta


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
