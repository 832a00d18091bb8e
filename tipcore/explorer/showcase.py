"""Precomputed results the app shows before any compute, and the README's results table.

Everything here is made by the same engine the app and CLI run, stored in assets/showcase with the
command that regenerates it:
- punchline: one gallery image attacked (iDLG on LeNet) with no defense, DP and TIP at the same budget, and
  TIP once more against every adaptive attacker built on iDLG (``tipcore.studies.cells.adaptive_attacks``), of
  which the entry keeps the best by PSNR, naming it and recording every candidate's PSNR (the strongest
  attacker we can build is the one a defense is judged by); the channel views come from an attacker that
  flags channels (the winner when it does);
- privacy curves (``load_privacy_curves``): attack PSNR against defense strength and utility for the naive
  and the best adaptive attacker, written by the sweep into assets/showcase/privacy_curves.json;
- frontier: attack PSNR (iDLG and every adaptive iDLG on LeNet, two CIFAR-10 images) against utility from
  scratch (held-out accuracy after FedAvg from random init in which every client applies the same setting at
  the same relative noise) for each defense as its strength varies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

import numpy as np

from tipcore.federation import data
from tipcore.common import bundle
from tipcore.common.pictures import load_png, save_png
from tipcore.common.progress import Event, StopHook, Stopped, Stopwatch, drive, never_stop, within

if TYPE_CHECKING:
    from tipcore.pipeline.runspec import RunSpec

SHOWCASE_DIR = bundle.ASSETS_DIR / "showcase"

PUNCHLINE_IMAGE = "cifar10-00"
PUNCHLINE_NAIVE = "idlg"
# The attack column's value for "every adaptive attacker built on PUNCHLINE_NAIVE, the best one by PSNR kept".
BEST_ADAPTIVE = "best adaptive"
# (defense, attack, title): the naive iDLG against each defense, then TIP against the best adaptive iDLG.
PUNCHLINE_ENTRIES = (
    ("none", PUNCHLINE_NAIVE, "No defense"),
    ("dp", PUNCHLINE_NAIVE, "DP (ε = 5)"),
    ("tip", PUNCHLINE_NAIVE, "TIP (ε = 5, p = 0.1, r = 0.5)"),
    ("tip", BEST_ADAPTIVE, "TIP vs the best adaptive iDLG"),
)
PUNCHLINE_DEFENSES = tuple((d, title) for d, _, title in PUNCHLINE_ENTRIES)  # (defense, title) per entry
PUNCHLINE_COMMAND = "python -m tipcore showcase punchline"
FRONTIER_COMMAND = "python -m tipcore showcase frontier"
PRIVACY_CURVES_FILE = "privacy_curves.json"
PRIVACY_CURVES_COMMAND = FRONTIER_COMMAND


def _attack_config(image_id: str, defense: str, options: dict[str, Any], iterations: int, seed: int = 0,
                   epsilon: float = 5.0, attack: str = "idlg") -> RunSpec:
    """The class-demo setting: LeNet, FedSGD on one image with clipping C = 5, iDLG (or a variant of it)."""
    from tipcore.pipeline.experiment import with_budget
    from tipcore.pipeline.runspec import RunSpec
    from tipcore.federation.fl import RoundConfig

    opts = with_budget(defense, options, epsilon, 1e-5)
    return RunSpec(seed=seed, model="lenet", image_ids=(image_id,), round=RoundConfig(clip=5.0),
                            defense=defense, defense_cfg=opts, attack=attack, attack_cfg={"iterations": iterations})


def _punch_file(defense: str, attack: str) -> str:
    """The entry's picture; the best adaptive entry's name does not depend on which attacker won."""
    if attack == PUNCHLINE_NAIVE:
        return f"punchline_{defense}.png"
    return f"punchline_{defense}_adaptive.png" if attack == BEST_ADAPTIVE else f"punchline_{defense}_{attack}.png"


@dataclass(frozen=True)
class PunchEntry:
    defense: str
    title: str
    image: np.ndarray
    psnr: float
    ssim: float
    label_true: int
    label_pred: int
    attack: str = PUNCHLINE_NAIVE
    analysis: dict[str, Any] = field(default_factory=dict)  # RunRecord.analysis (noise-to-signal, detection)
    # An adaptive entry: the PSNR of every adaptive attacker it was the best of (the winner's included).
    candidates: dict[str, float] = field(default_factory=dict)
    label: str = ""  # the engine's display name of the attack when the punchline was made ("iDLG + drop")


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
    channels_attack: str = ""  # the attacker whose flags ``channels`` show

    def entry(self, defense: str, attack: str = PUNCHLINE_NAIVE) -> PunchEntry | None:
        for e in self.entries:
            if e.defense == defense and e.attack == attack:
                return e
        return None

    def best_adaptive(self, defense: str = "tip") -> PunchEntry | None:
        """The entry of the strongest adaptive attacker against ``defense``: any entry whose attack is not the
        naive iDLG (a punchline made before the best was kept holds one adaptive attacker, idlg_drop)."""
        return next((e for e in self.entries if e.defense == defense and e.attack != PUNCHLINE_NAIVE), None)


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
    """Per conv layer of the defended update: the roughness score per output channel (computed from the
    update alone, as the attacker does), TIP's true selection and the attacker's flags."""
    from tipcore.pipeline import update_stats
    from tipcore.attacks.channels import layer_scores
    from tipcore.attacks.registry import matcher_config

    truth = update_stats.true_selection(record.prepared.diagnostics) or {}
    flagged = dict(record.result.flagged)
    # The r the attacker assumes (its matcher's knob), not the defense's record.
    cutoff = getattr(matcher_config(record.result.match, record.config.attack_config()), "assumed_cutoff", 0.5)
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


def _adaptive_choice(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Of the adaptive attackers' runs on one update: the best by PSNR (the entry), and the run whose
    channel flags the page draws: the winner's when it flags channels, else the best flagging run's (an
    attacker that does not flag, e.g. a low-pass one, has nothing to outline on the channel chart), or None."""
    from tipcore.studies.cells import best_per_image

    rows = [{"image": PUNCHLINE_IMAGE, "attack": r["attack"], "psnr": r["psnr"], "run": r} for r in runs]
    winner = best_per_image(rows, [r["attack"] for r in runs])[(PUNCHLINE_IMAGE, "")]["run"]
    if winner["flags"]:
        return winner, winner
    flagging = [row for row in rows if row["run"]["flags"]]
    best_flagging = best_per_image(flagging, [row["attack"] for row in flagging]) if flagging else {}
    return winner, (best_flagging[(PUNCHLINE_IMAGE, "")]["run"] if best_flagging else None)


def _punch_runs(adaptive: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(entry, defense, attack) of every attack the punchline runs: one per entry, and for the best adaptive
    entry one per adaptive attacker."""
    return [(i, defense, a) for i, (defense, attack, _) in enumerate(PUNCHLINE_ENTRIES)
            for a in (adaptive if attack == BEST_ADAPTIVE else (attack,))]


def punchline(iterations: int = 300, *, adaptive: tuple[str, ...] | None = None, out_dir: str | Path | None = None,
              should_stop: StopHook = never_stop) -> Generator[Event, None, Path]:
    """Attack the punchline image once per entry, and once per adaptive attacker for the best adaptive entry
    (``adaptive``: every adaptive attacker built on iDLG by default); each run is relayed as ``punchline i/n ·
    stage`` events, and a "punchline" event per finished run carries its scores. The files go to ``out_dir``
    (assets/showcase by default), replacing any earlier punchline picture. Stopped: nothing is written."""
    from tipcore import attacks
    from tipcore.attacks.base import flags_channels
    from tipcore.pipeline.experiment import stream
    from tipcore.studies.cells import adaptive_attacks

    adaptive = tuple(adaptive) if adaptive is not None else adaptive_attacks(PUNCHLINE_NAIVE)
    if not adaptive or len(set(adaptive)) != len(adaptive):
        raise ValueError("adaptive must be a non-empty list of distinct attack names")
    for name in adaptive:
        if name not in attacks.ATTACKS or not attacks.is_adaptive(name):
            raise ValueError(f"'{name}' is not a registered adaptive attack; choose from: "
                             f"{', '.join(adaptive_attacks(PUNCHLINE_NAIVE))}")
    runs: dict[int, list[dict[str, Any]]] = {}
    watch = Stopwatch()
    plan = _punch_runs(adaptive)
    total = len(plan)
    for n, (i, defense, attack) in enumerate(plan):
        cfg = _attack_config(PUNCHLINE_IMAGE, defense, {}, iterations, attack=attack)
        record = yield from within(stream(cfg, should_stop=should_stop), f"punchline {n + 1}/{total}")
        if record.result.stopped:
            yield watch.event("punchline", n, total, "entry", "stopped: nothing written", stopped=True)
            raise Stopped("stopped: the punchline was not written")
        flags = flags_channels(record.result)
        runs.setdefault(i, []).append({
            "attack": attack, "label": attacks.ATTACKS[attack].label, "psnr": record.scores.psnr,
            "ssim": record.scores.ssim, "label_true": record.prepared.labels[0],
            "label_pred": record.result.labels[0], "analysis": _plain(dict(record.analysis)),
            "image": record.result.images[0], "flags": flags,
            # the views need the defense's record of what it noised (TIP's) and the attacker's flags
            "channels": _channel_views(record) if flags else []})
        yield watch.event("punchline", n + 1, total, "entry",
                          f"{defense}/{attack}: psnr {record.scores.psnr:.2f} ssim {record.scores.ssim:.3f}")
    entries, channels, channels_attack = [], [], ""
    for i, (defense, attack, title) in enumerate(PUNCHLINE_ENTRIES):
        run, extra = runs[i][0], {}
        if attack == BEST_ADAPTIVE:
            run, flagged = _adaptive_choice(runs[i])
            extra = {"candidates": {r["attack"]: r["psnr"] for r in runs[i]}}
            if flagged is not None and flagged["channels"]:
                channels, channels_attack = flagged["channels"], flagged["attack"]
        entries.append({"defense": defense, "attack": run["attack"], "label": run["label"], "title": title,
                        "file": _punch_file(defense, attack), "image": run["image"],
                        **{k: run[k] for k in ("psnr", "ssim", "label_true", "label_pred", "analysis")}, **extra})
    out = Path(out_dir) if out_dir is not None else SHOWCASE_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = {"punchline_original.png"}
    for entry in entries:
        save_png(out / entry["file"], entry.pop("image"))
        written.add(entry["file"])
    save_png(out / "punchline_original.png", record.prepared.images[0])
    for stale in out.glob("punchline_*.png"):  # an earlier punchline's pictures (an adaptive winner's old name)
        if stale.name not in written:
            stale.unlink()
    settings = {**record.config.to_dict(), "defense": "see entries",
                "attack": f"see entries; the adaptive entry is the best by PSNR of {', '.join(adaptive)}",
                "defense_cfg": "epsilon=5, delta=1e-5"}
    meta = {"image_id": PUNCHLINE_IMAGE, "command": PUNCHLINE_COMMAND, "entries": entries,
            "channels": channels, "channels_attack": channels_attack, "settings": settings}
    path = out / "punchline.json"
    path.write_text(json.dumps(meta, indent=1, default=float) + "\n")
    return path


def make_punchline(iterations: int = 300, on_event: Callable[[Event], None] | None = None, *,
                   adaptive: tuple[str, ...] | None = None, out_dir: str | Path | None = None) -> Path:
    return drive(punchline(iterations, adaptive=adaptive, out_dir=out_dir), on_event)


def load_punchline(directory: str | Path | None = None) -> Punchline | None:
    """The punchline in ``directory`` (assets/showcase by default), or None when it has not been made. A file
    made before the best adaptive attacker was kept (one adaptive entry, idlg_drop, no candidates) loads with
    that attacker as its only candidate."""
    base = Path(directory) if directory is not None else SHOWCASE_DIR
    path = base / "punchline.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    sample = data.get_sample(meta["image_id"])
    entries = []
    for e in meta["entries"]:
        attack = e.get("attack", PUNCHLINE_NAIVE)
        candidates = e.get("candidates") or ({attack: e["psnr"]} if attack != PUNCHLINE_NAIVE else {})
        entries.append(PunchEntry(e["defense"], e["title"], load_png(base / e["file"]), e["psnr"], e["ssim"],
                                  e["label_true"], e["label_pred"], attack, dict(e.get("analysis") or {}),
                                  {str(k): float(v) for k, v in candidates.items()}, str(e.get("label", ""))))
    channels = tuple(ChannelView(c["layer"], tuple(float(v) for v in c["roughness"]), tuple(c["noised"]),
                                 tuple(c["flagged"])) for c in meta.get("channels", ()))
    # An older file's channel views came from its one adaptive attacker, the one that flags (idlg_drop).
    channels_attack = meta.get("channels_attack") or (
        next((e.attack for e in entries if e.attack != PUNCHLINE_NAIVE), "") if channels else "")
    return Punchline(load_png(base / "punchline_original.png"), sample.class_name, tuple(entries),
                     meta["command"], meta["settings"], channels, channels_attack)


# ------------------------------------------------------------------------------------------ privacy curves

_CURVE_FIELDS: dict[str, tuple[type, ...]] = {
    "defense": (str,), "knob": (str,), "attacker": (str,), "attack": (str,),
    "psnr": (int, float), "psnr_std": (int, float), "ssim": (int, float), "label_accuracy": (int, float),
    "update_cosine": (int, float), "noise_to_signal": (int, float), "images": (int,),
}
# float or null: the relative noise z (noise defenses), utility, and the noise measured on both axes
_CURVE_OPTIONAL = ("noise_scale", "accuracy", "accuracy_std", "noise_rel_attack", "noise_rel_utility",
                   "noise_to_signal_utility")
ATTACKER_KINDS = ("naive", "adaptive")


def load_privacy_curves(path: str | Path | None = None) -> dict[str, Any] | None:
    """The sweep's privacy curves (``assets/showcase/privacy_curves.json``) as the sweep wrote them, checked,
    or None when the file is missing. Raises ValueError when the file is malformed.

    Schema: {"command": str, "settings": {...}, "reference": {"random_psnr": float, "grey_psnr": float},
    "points": [{"defense", "knob", "strength" (number|string|null), "noise_scale" (float|null: relative noise z),
    "attacker" ("naive"|"adaptive"), "attack", "psnr", "psnr_std", "ssim", "label_accuracy",
    "accuracy" (float|null: utility from scratch), "accuracy_std", "update_cosine", "noise_to_signal",
    "noise_rel_attack", "noise_rel_utility", "noise_to_signal_utility" (float|null), "images"}, ...]}.
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
        strength = point.get("strength")  # the knob's value: a number, a choice, or null (no knob)
        if isinstance(strength, bool) or not (strength is None or isinstance(strength, (int, float, str))):
            raise ValueError(f"{path.name}: points[{i}].strength must be a number, a string or null")
        for key in _CURVE_OPTIONAL:
            value = point.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{path.name}: points[{i}].{key} must be a number or null")
        if point["attacker"] not in ATTACKER_KINDS:
            raise ValueError(f"{path.name}: points[{i}].attacker must be one of {', '.join(ATTACKER_KINDS)}")
    return meta


SHOWCASE_SWEEP_DIR = Path("runs") / "showcase-sweep"


def frontier(quick: bool = False, *, should_stop: StopHook = never_stop,
             utility_dir: str | Path | None = None) -> Generator[Event, None, Path | None]:
    """The frontier page's curves: the sweep's default grid (``--quick``: two strengths per defense, one image,
    a short budget), run in runs/showcase-sweep (resumable), its curves.json copied into assets/showcase.
    Stopped: the sweep keeps its finished cells, nothing is copied, None is returned."""
    from tipcore.studies import sweep
    from tipcore.pipeline.experiment import strict_json

    cfg = sweep.SweepConfig()
    if quick:
        grid = {d: (knob, values[::max(1, len(values) - 1)][:2]) for d, (knob, values) in cfg.grid.items()}
        from tipcore.studies.cells import UtilityProtocol

        cfg = sweep.SweepConfig(grid=grid, images=1, iterations=20, utility=UtilityProtocol(rounds=2, seeds=(0,)))
    run = sweep.run(cfg, SHOWCASE_SWEEP_DIR / ("quick" if quick else "default"), should_stop=should_stop,
                    utility_dir=utility_dir)
    stopped = False
    while True:  # relay the sweep's events, noting a stop (its directory may hold an older curves.json)
        try:
            event = next(run)
        except StopIteration as end:
            out = end.value
            break
        stopped = stopped or event.stopped
        yield event
    if stopped or not (out / "curves.json").exists():
        return None
    summary = json.loads((out / "curves.json").read_text())
    summary["command"] = FRONTIER_COMMAND + (" --quick" if quick else "")
    summary["settings"]["made_by"] = (f"{FRONTIER_COMMAND}: {sweep.SWEEP_COMMAND} with its default grid "
                                      f"({sweep.SWEEP_COMMAND} --help)") if not quick else "quick smoke grid"
    path = SHOWCASE_DIR / ("privacy_curves_quick.json" if quick else PRIVACY_CURVES_FILE)
    path.write_bytes(strict_json(summary) + b"\n")
    return path


def make_frontier(quick: bool = False, on_event: Callable[[Event], None] | None = None,
                  utility_dir: str | Path | None = None) -> Path | None:
    return drive(frontier(quick, utility_dir=utility_dir), on_event)
