"""Privacy curves: attack quality against defense strength and utility, for the naive and adaptive attacker.

``python -m tipcore sweep --out DIR`` runs a grid of defense settings (each defense's strength over
several decades) x images x seeds x attackers, and writes:
- ``attacks.csv``: one row per (setting, image, seed, attacker): PSNR, SSIM, label accuracy, the
  noise-to-signal ratio on the perturbed slices, update cosine, noised-channel precision / recall;
- ``utility.csv``: one row per (setting, seed): held-out accuracy after defended FedAvg rounds;
- ``curves.json``: the points the explorer's frontier page draws (naive and best adaptive attacker);
- ``curves.html``: an interactive plotly page (self-contained, no CDN) of PSNR against noise scale and
  against utility, one colour per defense, naive dashed and adaptive solid, with reference lines.
Finished cells are kept in the CSVs as they complete, so rerunning the same command resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Mapping

from tipcore import attacks
from tipcore.experiment import strict_json
from tipcore.evaluation import (
    DefenseSetting, attack_cells, attack_config, chunks, cifar10_ids, mean_std, reference_psnr, utility_accuracy,
)
from tipcore.progress import Event, StopHook, Stopped, Stopwatch, never_stop
from tipcore.resumable import ResumableTable, claim_directory, number

DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def default_grid() -> dict[str, tuple[str, tuple[float, ...]]]:
    """Every registered defense along its declared strength knob (``knobs.Knob(role="strength", grid=...)``),
    plus the undefended point; a defense with no strength grid (DP-SGD: its noise multiplier) is left out."""
    from tipcore import defenses

    grid: dict[str, tuple[str, tuple[float, ...]]] = {"none": ("", (0.0,))}
    for name, spec in defenses.DEFENSES.items():
        axis = spec.strength()
        if name != "none" and axis is not None and axis[1]:
            grid[name] = axis
    return grid

ATTACK_COLUMNS = ("defense", "knob", "strength", "noise_scale", "image", "seed", "attack", "attacker", "psnr",
                  "ssim", "label_accuracy", "noise_to_signal", "noise_to_signal_median", "update_cosine",
                  "flag_precision", "flag_recall", "flagged", "restarts", "seconds")
UTILITY_COLUMNS = ("defense", "knob", "strength", "seed", "accuracy", "fl_rounds")
SWEEP_COMMAND = "python -m tipcore sweep"
BATCH = 16  # defense settings attacked together in one batched optimisation (LeNet)


@dataclass(frozen=True)
class SweepConfig:
    grid: Mapping[str, tuple[str, tuple[float, ...]]] = field(default_factory=default_grid)
    images: int = 2  # first N gallery CIFAR-10 images
    seeds: tuple[int, ...] = (0,)
    naive: str = "idlg"
    adaptive: tuple[str, ...] = ("idlg_drop", "idlg_noise_aware")
    iterations: int = 100
    fl_rounds: int = 2

    def __post_init__(self) -> None:
        from tipcore import defenses
        from tipcore.config import from_dict

        for name, (knob, values) in self.grid.items():
            if name not in defenses.DEFENSES:
                raise ValueError(f"unknown defense '{name}' in the grid; choose from: {', '.join(defenses.DEFENSES)}")
            if not values:
                raise ValueError(f"defense '{name}' has no strengths in the grid")
            for v in values:  # every setting's options are checked now, before any compute
                options = DefenseSetting(name, knob, float(v)).options()
                from_dict(defenses.DEFENSES[name].config_cls, defenses.bind_round(name, options, _demo_round()))
        for attack in (self.naive, *self.adaptive):
            if attack not in attacks.ATTACKS:
                raise ValueError(f"unknown attack '{attack}'; choose from: {', '.join(attacks.ATTACKS)}")
        cifar10_ids(self.images)
        if not self.seeds or any(not 0 <= s < 2**63 for s in self.seeds):
            raise ValueError("seeds must be a non-empty list of integers in [0, 2**63)")
        if not 1 <= self.iterations <= 100_000:
            raise ValueError(f"iterations must be in [1, 100000], got {self.iterations}")
        if not 1 <= self.fl_rounds <= 100:
            raise ValueError(f"fl_rounds must be in [1, 100], got {self.fl_rounds}")

    def manifest(self) -> dict[str, Any]:
        return {"job": "sweep", "grid": {k: [knob, list(v)] for k, (knob, v) in self.grid.items()},
                "images": self.images, "seeds": list(self.seeds), "naive": self.naive,
                "adaptive": list(self.adaptive), "iterations": self.iterations, "fl_rounds": self.fl_rounds}

    def settings(self) -> list[DefenseSetting]:
        return [DefenseSetting(name, knob, float(v)) for name, (knob, values) in self.grid.items() for v in values]

    def attackers(self) -> list[tuple[str, str]]:
        return [(self.naive, "naive")] + [(a, "adaptive") for a in self.adaptive]


def _demo_round():
    from tipcore.evaluation import DEMO_CLIP
    from tipcore.fl import RoundConfig

    return RoundConfig(clip=DEMO_CLIP)


def run(cfg: SweepConfig, out: str | Path, *, should_stop: StopHook = never_stop) -> Generator[Event, None, Path]:
    """Fill ``out`` cell by cell (resuming), yielding progress; then write curves.json and curves.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out, cfg.manifest())
    attack_table = ResumableTable(out / "attacks.csv", ATTACK_COLUMNS,
                                  ("defense", "knob", "strength", "image", "seed", "attack"))
    utility_table = ResumableTable(out / "utility.csv", UTILITY_COLUMNS, ("defense", "knob", "strength", "seed"))
    images = cifar10_ids(cfg.images)
    cells: list[tuple[str, Any]] = []
    for setting in cfg.settings():
        for seed in cfg.seeds:
            key = dict(defense=setting.defense, knob=setting.knob, strength=setting.strength, seed=seed)
            if not utility_table.has(key):
                cells.append(("utility", (setting, seed)))
    for seed in cfg.seeds:  # one batched optimisation per image and attacker, over the settings still to do
        for image in images:
            for attack, kind in cfg.attackers():
                todo = [s for s in cfg.settings() if not attack_table.has(dict(
                    defense=s.defense, knob=s.knob, strength=s.strength, seed=seed, image=image, attack=attack))]
                for group in chunks(todo, BATCH):
                    cells.append(("attack", (group, seed, image, attack, kind)))
    watch, total = Stopwatch(), sum(len(c[1][0]) if c[0] == "attack" else 1 for c in cells)
    done = 0

    def progress(message: str, stopped: bool = False) -> Event:
        return watch.event("sweep", done, total, "cell", message, stopped=stopped)

    for kind, cell in cells:
        if should_stop():
            yield progress("stopped", stopped=True)
            return out
        if kind == "utility":
            setting, seed = cell
            yield progress(f"utility {setting.label()} seed {seed}")
            accuracy = utility_accuracy(setting, rounds=cfg.fl_rounds, seed=seed, should_stop=should_stop)
            if accuracy is None:
                yield progress("stopped", stopped=True)
                return out
            utility_table.append(dict(defense=setting.defense, knob=setting.knob, strength=setting.strength,
                                      seed=seed, accuracy=accuracy, fl_rounds=cfg.fl_rounds))
            done += 1
        else:
            group, seed, image, attack, attacker = cell
            label = f"{attack} vs {len(group)} settings ({group[0].defense} ... {group[-1].defense}) on {image} seed {seed}"
            yield progress(label)
            try:
                rows = attack_cells([attack_config(image, s, attack, iterations=cfg.iterations, seed=seed)
                                     for s in group], should_stop=should_stop)
            except Stopped:  # during a client round, before any attack
                rows = None
            if rows is None or any(r["stopped"] for r in rows):
                yield progress("stopped", stopped=True)
                return out
            for setting, row in zip(group, rows):
                attack_table.append(dict(defense=setting.defense, knob=setting.knob, strength=setting.strength,
                                         noise_scale=setting.noise_scale(), image=image, seed=seed, attack=attack,
                                         attacker=attacker, **{k: row[k] for k in ATTACK_COLUMNS if k in row}))
            done += len(group)
    yield progress("done")
    summary = summarise(attack_table, utility_table, cfg, reference_psnr(images))
    (out / "curves.json").write_bytes(strict_json(summary) + b"\n")
    (out / "curves.html").write_text(curves_html(summary))
    return out


def summarise(attack_table: ResumableTable, utility_table: ResumableTable, cfg: SweepConfig,
              reference: Mapping[str, float]) -> dict[str, Any]:
    """Per setting: the naive attacker's mean scores, and the adaptive attacker's, taking for every image the
    best of the adaptive attackers (the strongest attacker we have, as a defense must be judged)."""
    points = []
    for setting in cfg.settings():
        key = dict(defense=setting.defense, knob=setting.knob, strength=setting.strength)
        rows = [r for r in attack_table.select(**key) if int(r["seed"]) in cfg.seeds]
        accuracy = [number(r["accuracy"]) for r in utility_table.select(**key)]
        acc = mean_std([a for a in accuracy if a is not None])[0] if accuracy else None
        for kind in ("naive", "adaptive"):
            best: dict[tuple[str, str], dict[str, str]] = {}
            for r in rows:
                if r["attacker"] != kind:
                    continue
                cell = (r["image"], r["seed"])
                if cell not in best or float(r["psnr"]) > float(best[cell]["psnr"]):
                    best[cell] = r
            if not best:
                continue
            chosen = list(best.values())
            psnr = mean_std([float(r["psnr"]) for r in chosen])
            names = sorted({r["attack"] for r in chosen})
            points.append({
                "defense": setting.defense, "knob": setting.knob, "strength": setting.strength,
                "noise_scale": setting.noise_scale(), "attacker": kind, "attack": "/".join(names),
                "psnr": psnr[0], "psnr_std": psnr[1], "ssim": mean_std([float(r["ssim"]) for r in chosen])[0],
                "label_accuracy": mean_std([float(r["label_accuracy"]) for r in chosen])[0],
                "accuracy": acc if acc is None or acc == acc else None,
                "update_cosine": mean_std([number(r["update_cosine"]) for r in chosen])[0],
                "noise_to_signal": mean_std([number(r["noise_to_signal"]) for r in chosen])[0],
                "images": len(chosen),
            })
    settings = {"attack": f"naive {cfg.naive}; adaptive: best of {', '.join(cfg.adaptive)} per image; "
                          f"{cfg.iterations} optimisation steps, LeNet (random init), FedSGD on one image, clip 5",
                "images": f"first {cfg.images} gallery CIFAR-10 images", "seeds": list(cfg.seeds),
                "utility": f"held-out accuracy of the digits ConvNet after {cfg.fl_rounds} defended FedAvg rounds "
                           "(10 clients); direct noise scales converted to FedAvg units (x T·η)"}
    return {"command": SWEEP_COMMAND, "settings": settings, "reference": dict(reference), "points": points}


def curves_html(summary: Mapping[str, Any]) -> str:
    """Two plotly panels, self-contained (plotly.js inlined: nothing is fetched when the page opens)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Attack PSNR vs the knob's noise scale (gradient units)",
                                                        "Attack PSNR vs utility (held-out accuracy)"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    defenses_seen = list(dict.fromkeys(p["defense"] for p in summary["points"]))
    for i, defense in enumerate(defenses_seen):
        colour = palette[i % len(palette)]
        for kind, dash in (("naive", "dash"), ("adaptive", "solid")):
            pts = [p for p in summary["points"] if p["defense"] == defense and p["attacker"] == kind]
            if not pts:
                continue
            name = f"{defense} — {kind}"
            hover = [f"{p['knob']}={p['strength']:g}<br>{p['attack']}<br>PSNR {p['psnr']:.1f} dB" for p in pts]
            scaled = [p for p in pts if p["noise_scale"]]
            if scaled:
                fig.add_trace(go.Scatter(x=[p["noise_scale"] for p in scaled], y=[p["psnr"] for p in scaled],
                                         mode="lines+markers", name=name, legendgroup=name,
                                         line=dict(color=colour, dash=dash),
                                         hovertext=[h for p, h in zip(pts, hover) if p["noise_scale"]]), row=1, col=1)
            useful = [p for p in pts if p["accuracy"] is not None]
            if useful:
                fig.add_trace(go.Scatter(x=[p["accuracy"] for p in useful], y=[p["psnr"] for p in useful],
                                         mode="lines+markers", name=name, legendgroup=name, showlegend=not scaled,
                                         line=dict(color=colour, dash=dash),
                                         hovertext=[h for p, h in zip(pts, hover) if p["accuracy"] is not None]),
                              row=1, col=2)
    for key, label in (("random_psnr", "random image"), ("grey_psnr", "constant grey guess")):
        value = summary["reference"].get(key)
        if value is not None:
            for col in (1, 2):
                fig.add_hline(y=value, line=dict(color="grey", dash="dot"), row=1, col=col,
                              annotation_text=f"{label} ({value:.1f} dB)" if col == 1 else None)
    fig.update_xaxes(type="log", exponentformat="power", row=1, col=1,
                     title_text="noise scale: TIP's β (on p of the channels' high bins), DP's σ (everywhere)")
    fig.update_xaxes(title_text="held-out accuracy after defended FedAvg rounds", row=1, col=2)
    fig.update_yaxes(title_text="PSNR of the reconstruction (dB)")
    fig.update_layout(title=f"Privacy curves — {summary['settings']['attack']}", height=560, width=1300,
                      legend=dict(font=dict(size=10)))
    return fig.to_html(include_plotlyjs=True, full_html=True)
