"""Privacy curves: attack quality against defense strength and utility, for the naive and the adaptive attacker.

``python -m tipcore sweep --out DIR`` runs a grid of defense settings (each defense's strength over several
decades) x images x seeds x attackers, and the same settings' utility from scratch, and writes:
- ``attacks.csv``: one row per (setting, image, seed, attacker): PSNR, SSIM, label accuracy, the relative noise
  the cell ran with, the noise-to-signal ratio on the perturbed slices, update cosine, and for attackers
  that flag channels their precision / recall against the defense's record;
- ``utility/utility.csv`` (or ``--utility-dir``, which the report can share): one row per (setting, seed):
  held-out accuracy after FedAvg from random init in which every client applies the same setting, at the same
  relative noise (``studies.cells.UtilityProtocol``), with the per-round curve;
- ``curves.json``: the points the explorer's frontier page draws (naive and best adaptive attacker);
- ``curves.html``: an interactive plotly page (self-contained, no CDN) of PSNR against the relative noise and
  against utility, one colour per defense, naive dashed and adaptive solid, with reference lines.
A noise defense's strength is the unit-free relative noise z (``tipcore.defenses.calibration.relative_noise``), so TIP's
and DP's curves share one x-axis. Finished cells are kept in the CSVs as they complete, so rerunning the
same command resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Mapping

from tipcore import attacks
from tipcore.studies.cells import (
    ATTACK_ROUND, DefenseSetting, UtilityProtocol, UtilityStore, adaptive_attacks, attack_cells, attack_config,
    best_per_image, chunks, cifar10_ids, mean_std, reference_psnr,
)
from tipcore.pipeline.experiment import strict_json
from tipcore.common.progress import Event, StopHook, Stopped, Stopwatch, never_stop
from tipcore.studies.resumable import ResumableTable, claim_directory, number

DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def default_grid() -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Every registered defense along its declared strength knob (``knobs.Knob(role="strength", grid=...)``),
    plus the undefended point; a defense with no strength grid (DP-SGD: its noise multiplier) is left out."""
    from tipcore import defenses

    grid: dict[str, tuple[str, tuple[Any, ...]]] = {defenses.BASELINE: ("", (None,))}
    for name, spec in defenses.DEFENSES.items():
        axis = spec.strength()
        if name != defenses.BASELINE and axis is not None and axis[1]:
            grid[name] = axis
    return grid


SETTING_COLUMNS = ("defense", "knob", "strength", "extra")
ATTACK_COLUMNS = (*SETTING_COLUMNS, "noise_scale", "image", "seed", "attack", "attacker", "psnr", "ssim",
                  "label_accuracy", "noise_rel", "noise_to_signal", "noise_to_signal_median", "update_cosine",
                  "flag_precision", "flag_recall", "flagged", "restarts", "seconds")
SWEEP_COMMAND = "python -m tipcore sweep"
BATCH = 16  # defense settings attacked together in one batched optimisation (LeNet)
# Fixed options per defense, in every cell of a study (both axes). Soteria scores every fc-input feature by a
# per-example input Jacobian (768 backward passes per example on LeNet): on a FedAvg client's 400 digits, its
# default 32 scored examples cost about a minute per client update (4 still cost 33 s per 10-client round,
# 22 min per 40-round utility run), so a study scores 1 (an attack cell's single image is scored whole either way).
STUDY_OPTIONS: dict[str, dict[str, Any]] = {"soteria": {"max_examples": 1}}


@dataclass(frozen=True)
class SweepConfig:
    grid: Mapping[str, tuple[str, tuple[Any, ...]]] = field(default_factory=default_grid)
    images: int = 2  # first N gallery CIFAR-10 images
    seeds: tuple[int, ...] = (0,)  # of the attack cells (the utility protocol has its own)
    naive: str = "idlg"
    adaptive: tuple[str, ...] | None = None  # None: every registered adaptive attacker built on ``naive``
    iterations: int = 100
    utility: UtilityProtocol = field(default_factory=UtilityProtocol)
    fixed: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(STUDY_OPTIONS))

    def __post_init__(self) -> None:
        if self.naive not in attacks.ATTACKS:
            raise ValueError(f"unknown attack '{self.naive}'; choose from: {', '.join(attacks.ATTACKS)}")
        if self.adaptive is None:
            object.__setattr__(self, "adaptive", adaptive_attacks(self.naive))
        for name, (knob, values) in self.grid.items():
            if not values:
                raise ValueError(f"defense '{name}' has no strengths in the grid")
        for setting in self.settings():  # every setting's options are checked now, before any compute
            from tipcore import defenses
            from tipcore.common.config import from_dict

            for round_cfg in (ATTACK_ROUND, self.utility.round_config()):
                options = defenses.bind_round(setting.defense, setting.options(round_cfg), round_cfg)
                from_dict(defenses.DEFENSES[setting.defense].config_cls, options)
        for attack in (self.naive, *self.adaptive):
            if attack not in attacks.ATTACKS:
                raise ValueError(f"unknown attack '{attack}'; choose from: {', '.join(attacks.ATTACKS)}")
        cifar10_ids(self.images)
        if not self.seeds or any(not 0 <= s < 2**63 for s in self.seeds):
            raise ValueError("seeds must be a non-empty list of integers in [0, 2**63)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if not 1 <= self.iterations <= 100_000:
            raise ValueError(f"iterations must be in [1, 100000], got {self.iterations}")

    def manifest(self) -> dict[str, Any]:
        return {"job": "sweep", "grid": {k: [knob, list(v)] for k, (knob, v) in self.grid.items()},
                "images": self.images, "seeds": list(self.seeds), "naive": self.naive,
                "adaptive": list(self.adaptive), "iterations": self.iterations, "utility": self.utility.manifest(),
                "fixed": {k: dict(v) for k, v in self.fixed.items()}}

    def settings(self) -> list[DefenseSetting]:
        return [DefenseSetting(name, knob, None if not knob else v, dict(self.fixed.get(name, {})))
                for name, (knob, values) in self.grid.items() for v in values]

    def attackers(self) -> list[tuple[str, str]]:
        return [(self.naive, "naive")] + [(a, "adaptive") for a in self.adaptive]


def run(cfg: SweepConfig, out: str | Path, *, should_stop: StopHook = never_stop,
        utility_dir: str | Path | None = None) -> Generator[Event, None, Path]:
    """Fill ``out`` cell by cell (resuming), yielding progress; then write curves.json and curves.html. Utility
    cells go to ``utility_dir`` (default ``out/utility``), which another job of the same protocol may share."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out, cfg.manifest())
    attack_table = ResumableTable(out / "attacks.csv", ATTACK_COLUMNS, (*SETTING_COLUMNS, "image", "seed", "attack"))
    store = UtilityStore(Path(utility_dir) if utility_dir is not None else out / "utility", cfg.utility)
    images = cifar10_ids(cfg.images)
    cells: list[tuple[str, Any]] = []
    for seed in cfg.seeds:  # one batched optimisation per image and attacker, over the settings still to do
        for image in images:
            for attack, kind in cfg.attackers():
                todo = [s for s in cfg.settings()
                        if not attack_table.has({**s.key(), "seed": seed, "image": image, "attack": attack})]
                for group in chunks(todo, BATCH):
                    cells.append(("attack", (group, seed, image, attack, kind)))
    # Utility after the attacks: another job sharing the utility directory may be filling it meanwhile.
    for setting in cfg.settings():
        for seed in cfg.utility.seeds:
            if not store.has(setting, seed):
                cells.append(("utility", (setting, seed)))
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
            if not store.run(setting, seed, should_stop=should_stop):
                yield progress("stopped", stopped=True)
                return out
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
                attack_table.append({**setting.key(), "noise_scale": setting.relative_noise(), "image": image,
                                     "seed": seed, "attack": attack, "attacker": attacker,
                                     **{k: row[k] for k in ATTACK_COLUMNS if k in row}})
            done += len(group)
    yield progress("done")
    summary = summarise(attack_table, store, cfg, reference_psnr(images))
    (out / "curves.json").write_bytes(strict_json(summary) + b"\n")
    (out / "curves.html").write_text(curves_html(summary))
    return out


def summarise(attack_table: ResumableTable, store: UtilityStore, cfg: SweepConfig,
              reference: Mapping[str, float]) -> dict[str, Any]:
    """Per setting: the naive attacker's mean scores, and the adaptive attacker's, taking for every image the
    best of the adaptive attackers (the strongest attacker we have, as a defense must be judged), with the
    utility from scratch and the relative noise measured on both axes."""
    points = []
    for setting in cfg.settings():
        key = setting.key()
        rows = [r for r in attack_table.select(**key) if int(r["seed"]) in cfg.seeds]
        utility = store.rows(setting)
        accuracy = mean_std([number(r["accuracy"]) for r in utility])
        for kind, names in (("naive", (cfg.naive,)), ("adaptive", cfg.adaptive)):
            chosen = list(best_per_image(rows, names).values())
            if not chosen:
                continue
            psnr = mean_std([float(r["psnr"]) for r in chosen])
            wins: dict[str, int] = {}
            for r in chosen:
                wins[r["attack"]] = wins.get(r["attack"], 0) + 1
            points.append({
                # A knob-less setting (no defense) sits at strength 0 on the curves' strength axis.
                "defense": setting.defense, "knob": setting.knob, "strength": setting.value if setting.knob else 0.0,
                "noise_scale": setting.relative_noise(), "attacker": kind,
                "attack": "/".join(sorted(wins, key=lambda a: (-wins[a], a))),
                "psnr": psnr[0], "psnr_std": psnr[1], "ssim": mean_std([float(r["ssim"]) for r in chosen])[0],
                "label_accuracy": mean_std([float(r["label_accuracy"]) for r in chosen])[0],
                "accuracy": None if accuracy[0] != accuracy[0] else accuracy[0],
                "accuracy_std": None if accuracy[1] != accuracy[1] else accuracy[1],
                "update_cosine": mean_std([number(r["update_cosine"]) for r in chosen])[0],
                "noise_to_signal": mean_std([number(r["noise_to_signal"]) for r in chosen])[0],
                "noise_rel_attack": _mean_or_none(number(r["noise_rel"]) for r in chosen),
                "noise_rel_utility": _mean_or_none(number(r["noise_rel"]) for r in utility),
                "noise_to_signal_utility": _mean_or_none(number(r["noise_to_signal"]) for r in utility),
                "images": len(chosen),
            })
    settings = {"attack": f"naive {cfg.naive}; adaptive: best of {', '.join(cfg.adaptive)} per image; "
                          f"{cfg.iterations} optimisation steps, LeNet (random init), FedSGD on one image, clip 5",
                "images": f"first {cfg.images} gallery CIFAR-10 images", "seeds": list(cfg.seeds),
                "strength": "noise defenses: relative noise z (per-element noise std / the clipped update's norm "
                            "bound), the same z in the attack cell and in every client update of the utility run",
                "utility": cfg.utility.describe()}
    return {"command": SWEEP_COMMAND, "settings": settings, "reference": dict(reference), "points": points}


def _mean_or_none(values) -> float | None:
    mean = mean_std(list(values))[0]
    return None if mean != mean else mean


def curves_html(summary: Mapping[str, Any]) -> str:
    """Two plotly panels, self-contained (plotly.js inlined: nothing is fetched when the page opens)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Attack PSNR vs relative noise z (unit-free)",
                                                        "Attack PSNR vs utility from scratch (held-out accuracy)"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    defenses_seen = list(dict.fromkeys(p["defense"] for p in summary["points"]))
    for i, defense in enumerate(defenses_seen):
        colour = palette[i % len(palette)]
        for kind, dash in (("naive", "dash"), ("adaptive", "solid")):
            pts = [p for p in summary["points"] if p["defense"] == defense and p["attacker"] == kind]
            if not pts:
                continue
            name = f"{defense} — {kind}"
            hover = [f"{p['knob']}={p['strength']}<br>{p['attack']}<br>PSNR {p['psnr']:.1f} dB" for p in pts]
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
                     title_text="relative noise z: per-element noise std / clipped update's norm bound")
    fig.update_xaxes(title_text="held-out accuracy after FedAvg from random init at the same z", row=1, col=2)
    fig.update_yaxes(title_text="PSNR of the reconstruction (dB)")
    fig.update_layout(title=f"Privacy curves — {summary['settings']['attack']}", height=560, width=1300,
                      legend=dict(font=dict(size=10)))
    return fig.to_html(include_plotlyjs=True, full_html=True)
