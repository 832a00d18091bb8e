"""The TIP explorer's command line: ``python -m tipcore COMMAND --help`` explains each command.

Every failure the user can cause (bad flag value, unknown name, missing or broken image, an output path
that cannot or must not be written) ends with one line ``error: ...`` on stderr and exit code 2, before
any compute where the value is known up front; nothing is half-written in ``--out`` and nothing the user
already has there is deleted without ``--overwrite`` (``tipcore.pipeline.outputs``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from tipcore.pipeline.outputs import StagedOutput, job_directory
from tipcore.common.parsing import describe, parse_assignments, parse_field, parse_typed

# Only light modules above: `python -m tipcore --help` must not import torch. Each command's flags (whose
# choices come from the engine's registries) and modules are loaded when that command is chosen.

EXIT_USAGE = 2


class CLIError(ValueError):
    pass


def typed(hint: Any, minimum: int | None = None) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses with ``tipcore.common.parsing`` (finite numbers, integers stay integers)."""
    expected = describe(hint) + (f" >= {minimum}" if minimum is not None else "")

    def convert(text: str) -> Any:
        try:
            value = parse_typed(hint, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = expected
    return convert


NUMBER = typed(float)
INTEGER = typed(int)  # range checked by the config it fills, whose message names the real range
COUNT = typed(int, minimum=1)
NON_NEGATIVE = typed(int, minimum=0)


def parse_options(pairs: Sequence[str] | None, flag: str, config_cls: type) -> dict[str, Any]:
    """``--defense-opt`` / ``--attack-opt`` KEY=VALUE pairs, typed by the config's fields."""
    try:
        return parse_assignments(config_cls, pairs, flag)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


# ------------------------------------------------------------------------------------------ arguments

def add_round_args(p: argparse.ArgumentParser) -> None:
    from tipcore.federation.specs import MODELS, MODES, WEIGHTS  # torch-free (models.py and fl.py re-export them)

    g = p.add_argument_group("the victim's round")
    g.add_argument("--model", default="lenet", choices=list(MODELS), help="architecture the client trains")
    g.add_argument("--weights", default="random", choices=list(WEIGHTS),
                   help="random: seeded init; digits: the bundled checkpoint trained on MNIST digits")
    g.add_argument("--image", action="append", metavar="PATH",
                   help="private image file (any format PIL reads; centre-cropped, resized to 32x32); repeat for a batch")
    g.add_argument("--image-id", action="append", metavar="ID",
                   help="gallery image id (see assets/samples/index.json), e.g. cifar10-00; repeat for a batch")
    g.add_argument("--label", action="append", type=INTEGER, metavar="N",
                   help="true label of each image (default: the gallery label; 0 for files)")
    g.add_argument("--mode", default="fedsgd", choices=list(MODES), help="fedsgd: send one gradient; fedavg: local SGD steps, send θ_g − θ")
    g.add_argument("--local-steps", type=COUNT, default=None, help="FedAvg local SGD steps (default 4 in fedavg, 1 in fedsgd)")
    g.add_argument("--lr", type=NUMBER, default=1e-3, help="client learning rate (FedAvg)")
    g.add_argument("--clip", type=NUMBER, default=None, help="global L2 clip norm of each step's gradient (default: none; 5 with dp, dp_paper and tip*, "
                        "whose noise is calibrated for this very C)")
    g.add_argument("--seed", type=NON_NEGATIVE, default=0, help="one seed for model init, defense noise and attack start")
    g.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda[:N]")


def defense_flags() -> dict[str, list[tuple[str, Any]]]:
    """Every knob the registered defenses declare (their clip excepted: it is the round's --clip), as
    flag dest -> [(defense, Knob)]: the defense flags are generated from these declarations."""
    from tipcore import defenses
    from tipcore.common import knobs

    flags: dict[str, list[tuple[str, Any]]] = {}
    for name, spec in defenses.DEFENSES.items():
        for field_name, knob in knobs.knobs(spec.config_cls).items():
            if knob.role != "clip":
                flags.setdefault(field_name, []).append((name, knob))
    return flags


def add_defense_args(p: argparse.ArgumentParser) -> None:
    from tipcore import defenses
    from tipcore.common import knobs

    g = p.add_argument_group("defense (each option flag names the defenses it applies to)")
    g.add_argument("--defense", default="none", choices=list(defenses.DEFENSES),
                   help="; ".join(f"{n}: {s.summary}" for n, s in defenses.DEFENSES.items()))
    g.add_argument("--defense-opt", action="append", metavar="KEY=VALUE",
                   help="any option of the defense's config, e.g. ratio=0.3 (the same names as the flags below)")
    for dest, users in defense_flags().items():
        groups: dict[str, list[str]] = {}  # one description -> the defenses that share it
        for name, _ in users:
            groups.setdefault(knobs.describe(defenses.DEFENSES[name].config_cls, dest), []).append(name)
        text = "; ".join(f"{', '.join(names)}: {desc}" for desc, names in groups.items())
        g.add_argument(f"--{dest.replace('_', '-')}", dest=f"knob_{dest}", metavar="VALUE", help=text.replace("%", "%%"))
    g.add_argument("--abs-alpha", action="store_true", help="tip*: rank channels by |α| (the same as --signed false)")


def defense_options(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen defense's options from --defense-opt and the generated flags, each parsed by the type and
    range its config declares; a flag the defense does not take is an error, not silently ignored."""
    from tipcore import defenses
    from tipcore.common import knobs

    spec = defenses.DEFENSES[args.defense]
    declared = knobs.knobs(spec.config_cls)
    opts: dict[str, Any] = {}
    if getattr(args, "preset", None):
        from tipcore.pipeline import presets

        chosen = presets.get(args.preset)
        opts.update(chosen.defense_options.get(args.defense, {}))
        if spec.uses_budget:
            opts.update(epsilon=chosen.epsilon, delta=chosen.delta)
    opts.update(parse_options(args.defense_opt, "--defense-opt", spec.config_cls))
    given = {dest: getattr(args, f"knob_{dest}") for dest in defense_flags()
             if getattr(args, f"knob_{dest}", None) is not None}
    if args.abs_alpha:
        given["signed"] = "false"
    for key, text in given.items():
        flag = f"--{key.replace('_', '-')}"
        if key not in declared:
            raise CLIError(f"{flag} does not apply to defense '{args.defense}' "
                           f"(its options: {', '.join(declared) or 'none'})")
        try:
            opts[key] = parse_field(spec.config_cls, key, text)
        except ValueError as exc:
            raise CLIError(f"{flag}: {exc}") from None
        for implied, value in declared[key].implies:  # e.g. --beta switches TIP to noise=direct
            opts.setdefault(implied, value)
    return opts


DEFAULT_CLIP = 5.0  # the paper's C, taken when a clip-calibrated defense runs and --clip is not given


def round_config(args: argparse.Namespace, batch: int):
    from tipcore import defenses
    from tipcore.federation.fl import RoundConfig

    steps = args.local_steps if args.local_steps is not None else (4 if args.mode == "fedavg" else 1)
    clip = args.clip
    if clip is None and defenses.takes_clip(args.defense):
        clip = DEFAULT_CLIP
    elif clip is not None and clip <= 0:
        raise CLIError(f"--clip must be > 0, got {clip} (leave it out for no clipping)")
    return RoundConfig(mode=args.mode, batch_size=batch, local_steps=steps, lr=args.lr, clip=clip)


def load_batch(args: argparse.Namespace):
    """(image_ids, images or None, labels or None) from --image / --image-id / --label."""
    import numpy as np

    from tipcore.federation import data

    if args.image and args.image_id:
        raise CLIError("give either --image or --image-id, not both")
    if args.image:
        arrays = [data.load_image(Path(p)) for p in args.image]
        labels = args.label or [0] * len(arrays)
        if not args.label:
            print("note: no --label given, assuming label 0 for each image", file=sys.stderr)
        if len(labels) != len(arrays):
            raise CLIError(f"got {len(arrays)} --image but {len(labels)} --label")
        return (), np.stack(arrays), tuple(labels)
    ids = tuple(args.image_id or ["cifar10-00"])
    for i in ids:
        data.get_sample(i)
    labels = tuple(args.label) if args.label else None
    if labels is not None and len(labels) != len(ids):
        raise CLIError(f"got {len(ids)} --image-id but {len(labels)} --label")
    return ids, None, labels


def experiment_config(args: argparse.Namespace, attack: str = "idlg", attack_cfg: dict | None = None):
    """The run's config and private images, every value checked (labels against the model's classes
    included) before anything is computed or written."""
    from tipcore.pipeline.experiment import resolve_images
    from tipcore.pipeline.runspec import RunSpec

    ids, images, labels = load_batch(args)
    batch = len(images) if images is not None else len(ids)
    cfg = RunSpec(
        seed=args.seed, model=args.model, weights=args.weights, image_ids=ids or ("cifar10-00",), labels=labels,
        round=round_config(args, batch), defense=args.defense, defense_cfg=defense_options(args),
        attack=attack, attack_cfg=attack_cfg or {}, labels_known=getattr(args, "labels_known", False),
        report_every=getattr(args, "report_every", 10), device=args.device,
    )
    resolve_images(cfg, images)
    if images is not None:  # the spec names an upload by its pixels, which go next to result.json
        cfg = cfg.for_upload(images)
    return cfg, images


def staged(args: argparse.Namespace, kind: str) -> StagedOutput:
    """The output directory, checked and reserved before any compute (``tipcore.pipeline.outputs``)."""
    return StagedOutput(args.out, kind, overwrite=getattr(args, "overwrite", False))


# ------------------------------------------------------------------------------------------ commands

def cmd_attack(args: argparse.Namespace) -> int:
    from tipcore import attacks
    from tipcore.pipeline import presets
    from tipcore.pipeline.experiment import artifact_files, run

    config_cls = attacks.ATTACKS[args.attack].config_cls
    attack_cfg = {}
    if args.preset and attacks.base_attack(args.attack) == presets.get(args.preset).attack:
        attack_cfg.update(presets.get(args.preset).attack_options)  # the preset's attack budget
    if args.attack_preset:
        attack_cfg.update(attacks.preset_options(args.attack, args.attack_preset))
    attack_cfg.update(parse_options(args.attack_opt, "--attack-opt", config_cls))
    if args.iters is not None:
        attack_cfg["iterations"] = args.iters
    if args.truth and not args.update_dir:
        raise CLIError("--truth scores an attack on a recorded update: give --update-dir too")
    if args.update_dir:
        return attack_recorded(args, attack_cfg)
    cfg, images = experiment_config(args, args.attack, attack_cfg)
    with staged(args, "attack") as output:
        with progress_display(args) as show:
            record = run(cfg, images, on_event=show)
        out = output.commit(artifact_files(record))
    s = record.scores
    print(f"psnr {s.psnr:.2f} dB  ssim {s.ssim:.4f}  mse {s.mse:.3g}  labels true {list(record.prepared.labels)} "
          f"predicted {list(record.result.labels)}  iterations {record.result.iterations}  restarts {record.result.restarts}  "
          f"{record.result.seconds:.1f}s  -> {out}")
    found = record.analysis.get("detection")
    if found:
        pr = "—" if found["precision"] is None else f"{found['precision']:.2f}"
        rc = "—" if found["recall"] is None else f"{found['recall']:.2f}"
        print(f"{args.attack} flagged {found['flagged']} conv channels as noised from the update alone "
              f"(the defense noised {found['noised']}): precision {pr}, recall {rc}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """Repeat the run a result.json describes (its RunSpec; an upload's pixels from images.npy beside it)."""
    from dataclasses import replace

    from tipcore.common.runtime import configure_threads
    from tipcore.pipeline.experiment import artifact_files, load_run, recorded_threads, run

    spec, images = load_run(args.result)
    if args.device is not None:
        spec = replace(spec, device=args.device)
    # The recorded thread count, not TIP_THREADS: another count rounds differently (tipcore.common.runtime).
    threads = args.threads if args.threads is not None else recorded_threads(args.result)
    configure_threads(threads)  # None (an older result.json): TIP_THREADS, else the default
    source = Path(args.result)
    recorded = (source if source.is_dir() else source.parent) / "reconstruction.png"
    before = recorded.read_bytes() if recorded.exists() else None  # --out may be the same directory
    with staged(args, "attack") as output:
        with progress_display(args) as show:
            record = run(spec, images, on_event=show)
        files = artifact_files(record)
        out = output.commit(files)
    verdict = ("no recorded reconstruction.png to compare with" if before is None else
               "reconstruction identical to the recorded one, byte for byte" if before == files["reconstruction.png"]
               else "reconstruction DIFFERS from the recorded one (another device, CPU, thread count, library or "
               "tipcore version?)")
    print(f"psnr {record.scores.psnr:.2f} dB  ssim {record.scores.ssim:.4f}  {verdict}  -> {out}")
    return 0


def rerun_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("result", metavar="RESULT", help="result.json of an earlier `attack` run (or its directory)")
    p.add_argument("--device", default=None, help="override the recorded device (the result may then differ)")
    p.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                   help="override the recorded torch thread count (result.json's threads; the result may then "
                        "differ). TIP_THREADS does not apply to a rerun")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_out_args(p)
    p.set_defaults(func=cmd_rerun)


def attack_recorded(args: argparse.Namespace, attack_cfg: dict[str, Any]) -> int:
    """Attack an update recorded elsewhere (``tipcore update``, a Flower run): no private image to score."""
    import time

    from tipcore import attacks
    from tipcore.federation import recorded
    from tipcore.attacks.base import flagged_channels, flags_channels
    from tipcore.pipeline import metrics, update_stats
    from tipcore.common.pictures import image_grid, png_bytes
    from tipcore.pipeline.experiment import environment, strict_json
    from tipcore.common.progress import drive
    from tipcore.common.seeding import generator, pick_device

    given = [f for f in ("image", "image_id", "label") if getattr(args, f)]
    if given:
        raise CLIError(f"--update-dir brings its own update: drop --{given[0].replace('_', '-')}")
    rec = recorded.load(args.update_dir)
    truth = recorded.load_truth(args.truth, args.update_dir, rec) if args.truth else None
    attack = attacks.create(args.attack, attack_cfg)
    with staged(args, "attack") as output:  # from here to the commit, any error removes the staged directory
        t0 = time.perf_counter()
        with progress_display(args) as show:
            result = drive(attack.reconstruct(rec.view, rec.update, generator=generator(args.seed, "attack"),
                                              report_every=args.report_every), show)
        payload = {"source": str(Path(args.update_dir).resolve()), "attack": args.attack, "attack_cfg": attack_cfg,
                   "seed": args.seed, "model": rec.view.model_name, "mode": rec.update.mode,
                   "num_examples": rec.update.num_examples, "label_pred": list(result.labels),
                   "iterations": result.iterations, "restarts": result.restarts, "diverged": result.diverged,
                   "final_loss": result.final_loss, "seconds": time.perf_counter() - t0, "match": result.match,
                   **({"flagged": flagged_channels(result)} if flags_channels(result) else {}),
                   **({"matcher_notes": list(result.notes)} if result.notes else {}),
                   **environment(pick_device("cpu"))}
        files = {}
        if truth is None:
            payload["note"] = "no private image: reconstruction only, no PSNR (--truth AUDIT_ROUND scores it)"
            files["reconstruction.png"] = png_bytes(image_grid([result.images]))
        else:  # the evaluator's view: the node's audit copy of this round, handed over by its operator
            scores = metrics.score(truth.images, result.images, truth.labels, result.labels)
            payload.update(truth=str(Path(args.truth).resolve()), labels_true=list(truth.labels), **scores.as_dict())
            if flags_channels(result) and truth.noised is not None:
                payload["detection"] = update_stats.detection_against(result.flagged, truth.noised)
            files["original.png"] = png_bytes(image_grid([truth.images]))
            files["reconstruction.png"] = png_bytes(image_grid([result.images[list(scores.order)]]))
        out = output.commit({"result.json": strict_json(payload, indent=2), **files})
    flagged = sum(len(v) for v in result.flagged.values())
    scored = ""
    if truth is not None:
        scored = (f", psnr {payload['psnr']:.2f} dB  ssim {payload['ssim']:.4f}  labels true {list(truth.labels)}"
                  f" (label accuracy {payload['label_accuracy']:.2f})")
    print(f"{args.attack} on {args.update_dir}: labels {list(result.labels)}, {result.iterations} steps"
          + (f", flagged {flagged} channels as noised" if flags_channels(result) else "") + scored + f"  -> {out}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    import io

    import torch

    from tipcore.pipeline.experiment import prepare, strict_json

    def tensor_bytes(tensors) -> bytes:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buf)
        return buf.getvalue()

    cfg, images = experiment_config(args)
    with staged(args, "update") as output:  # from here to the commit, any error removes the staged directory
        with progress_display(args) as show:
            prepared = prepare(cfg, images, on_event=show)
        diag = prepared.diagnostics.as_dict()
        diag.update(mode=cfg.round.mode, model=cfg.model, seed=cfg.seed, labels=list(prepared.labels),
                    num_examples=prepared.clean.num_examples, local_steps=prepared.clean.local_steps,
                    lr=prepared.clean.lr, clip=prepared.clean.clip, num_classes=prepared.num_classes)
        out = output.commit({"update_clean.pt": tensor_bytes(prepared.clean.tensors),
                             "update_defended.pt": tensor_bytes(prepared.defended.tensors),
                             "global_weights.pt": tensor_bytes(prepared.view.global_weights),
                             "defense.json": strict_json(diag)})
    print(f"defense {cfg.defense}: {json.dumps(dict(prepared.diagnostics.summary), default=float)} -> {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tipcore.federation import models, training
    from tipcore.common.progress import drive

    with progress_display(args) as show:
        trained = drive(training.train(args.model, args.epochs, lr=args.lr, seed=args.seed), show)
    model, last = trained.model, trained.history[-1]
    meta = {"model": args.model, "epochs": last.epochs, "lr": args.lr, "seed": args.seed,
            "test_accuracy": last.test_accuracy, "seconds": round(last.elapsed_s, 1),
            "command": f"python -m tipcore train --model {args.model} --epochs {last.epochs} --seed {args.seed}",
            "data": "assets/digits/mnist5k.npz (4000 train / 1000 held out)"}
    training.save_checkpoint(args.model, model, meta)
    print(f"{args.model}: held-out accuracy {last.test_accuracy:.3f} -> {models.checkpoint_path(args.model)}")
    return 0


def cmd_fl(args: argparse.Namespace) -> int:
    from tipcore import defenses
    from tipcore.studies import flsim
    from tipcore.pipeline.experiment import strict_json
    from tipcore.common.progress import drive

    names = known_names(args.defenses, "--defenses", defenses.DEFENSES, "defense")
    configs = []  # every run's config built (and so validated) before the first run starts
    for name in names:
        opts = {}
        if defenses.DEFENSES[name].uses_budget:
            opts = {"epsilon": args.epsilon, "delta": args.delta}
        configs.append(flsim.FLConfig(
            model=args.model, weights=args.weights, clients=args.clients, rounds=args.rounds, local_epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, clip=args.clip, defense=name, defense_cfg=opts, seed=args.seed))
    results = []
    with staged(args, "fl") as output:  # from here to the commit, any error removes the staged directory
        for cfg in configs:
            with progress_display(args) as show:
                results.append(drive(flsim.simulate(cfg), show))
        table = ["round," + ",".join(names)]
        for i in range(args.rounds):
            table.append(f"{i + 1}," + ",".join(f"{r.rounds[i].accuracy:.4f}" for r in results))
        payload = {"defenses": names, "runs": [r.as_dict() for r in results]}
        out = output.commit({"fl.json": strict_json(payload), "fl.csv": ("\n".join(table) + "\n").encode()})
    print("\n".join(table))
    print(f"-> {out}")
    return 0


def cmd_utility(args: argparse.Namespace) -> int:
    from tipcore import defenses
    from tipcore.studies import utility

    names = known_names(args.defenses, "--defenses", defenses.DEFENSES, "defense")
    with staged(args, "utility") as output:
        rows = utility.compare(args.model, list(names), batch=args.batch, local_steps=args.local_steps, lr=args.lr,
                               clip=args.clip, epsilon=args.epsilon, delta=args.delta, seed=args.seed)
        out = output.commit({"utility.json": json.dumps([r.as_dict() for r in rows], indent=1).encode()})
    for r in rows:
        print(f"{r.defense:13s} accuracy {r.accuracy:.4f} (clean update {r.clean_accuracy:.4f})  "
              f"Grad-CAM similarity {r.heatmap_similarity:.3f}  update cosine {r.update_cosine:.3f}")
    print(f"-> {out}")
    return 0


def cmd_showcase(args: argparse.Namespace) -> int:
    from tipcore.explorer import showcase

    if args.what in ("punchline", "all"):
        with progress_display(args) as show:
            showcase.make_punchline(on_event=show)
    if args.what in ("frontier", "all"):
        with progress_display(args) as show:
            showcase.make_frontier(quick=args.quick, on_event=show, utility_dir=args.utility_dir)
    if args.what in ("tip-grid", "all"):
        from tipcore.explorer import tip_grid

        with progress_display(args) as show:
            tip_grid.make(on_event=show)
    print(f"-> {showcase.SHOWCASE_DIR}")
    return 0


def _seeds(text: str, flag: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in _names(text, flag))
    except ValueError:
        raise CLIError(f"{flag} must be comma-separated integers, got '{text}'") from None
    if len(set(seeds)) != len(seeds):
        raise CLIError(f"{flag} must not repeat a seed, got '{text}'")
    return seeds


def utility_protocol(args: argparse.Namespace):
    """The utility-from-scratch protocol of sweep and reproduce (``studies.cells.UtilityProtocol``)."""
    from tipcore.studies.cells import UtilityProtocol

    return UtilityProtocol(rounds=args.utility_rounds, seeds=_seeds(args.utility_seeds, "--utility-seeds"),
                           model=args.utility_model, lr=args.utility_lr)


def add_utility_args(p: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from tipcore.studies.cells import UtilityProtocol

    # The declared defaults, read without building a protocol (whose check imports the FedAvg simulation).
    d = argparse.Namespace(**{f.name: f.default for f in fields(UtilityProtocol)})
    g = p.add_argument_group("utility from scratch (FedAvg from random init; every client at the setting's "
                             "relative noise z, as the attacked update)")
    g.add_argument("--utility-rounds", type=INTEGER, default=d.rounds, help="FedAvg rounds behind the utility column")
    g.add_argument("--utility-seeds", default=",".join(map(str, d.seeds)), help="comma-separated seeds (mean taken)")
    g.add_argument("--utility-model", default=d.model, help="the federation's model (default: the attack cell's)")
    g.add_argument("--utility-lr", type=NUMBER, default=d.lr, help="clients' SGD learning rate")
    g.add_argument("--utility-dir", default=None, help="where utility cells are kept (default: OUT/utility); "
                   "sweep and reproduce with the same utility protocol can share one, so no cell runs twice")


def _names(text: str, flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise CLIError(f"{flag} needs at least one name")
    return names


def known_names(text: str, flag: str, registry: Any, kind: str) -> tuple[str, ...]:
    """A comma-separated list, every name checked before the first run starts."""
    names = _names(text, flag)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise CLIError(f"unknown {kind} '{unknown[0]}' in {flag}; choose from: {', '.join(registry)}")
    return names


def progress_display(args: argparse.Namespace):
    """The progress of a long command on stderr: a redrawn bar on a terminal, one line per event otherwise
    (``--quiet``: nothing). A context manager, so the bar's line is ended before the result or an error."""
    from tipcore.common.progress import TerminalProgress

    return TerminalProgress(sys.stderr, quiet=getattr(args, "quiet", False))


def cmd_sweep(args: argparse.Namespace) -> int:
    from tipcore.studies import sweep
    from tipcore.common.progress import drive

    grid = sweep.default_grid()
    if args.defenses:
        chosen = _names(args.defenses, "--defenses")
        unknown = [d for d in chosen if d not in grid]
        if unknown:
            raise CLIError(f"--defenses: no strength axis for {', '.join(unknown)}; the grid has: {', '.join(grid)}")
        grid = {d: grid[d] for d in chosen}
    if args.quick:  # two strengths per defense: a smoke run
        grid = {d: (knob, values[::max(1, len(values) - 1)][:2]) for d, (knob, values) in grid.items()}
    seeds = _seeds(args.seeds, "--seeds")
    adaptive = _names(args.adaptive, "--adaptive") if args.adaptive else None
    cfg = sweep.SweepConfig(grid=grid, images=args.images, seeds=seeds, naive=args.naive, adaptive=adaptive,
                            iterations=args.iters, utility=utility_protocol(args))
    out_dir = job_directory(args.out)
    with progress_display(args) as show:
        out = drive(sweep.run(cfg, out_dir, utility_dir=args.utility_dir), show)
    if (Path(out) / "curves.json").exists():
        print(f"-> {out}/attacks.csv, curves.json, curves.html; utility cells in {args.utility_dir or Path(out) / 'utility'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from tipcore.studies import reproduce
    from tipcore.common.progress import drive

    lenet = _names(args.lenet_attacks, "--lenet-attacks") if args.lenet_attacks else None
    cfg = reproduce.ReproduceConfig(
        images=args.images, lenet_attacks=lenet, lenet_iters=args.lenet_iters,
        ig_attacks=tuple(n.strip() for n in args.ig_attacks.split(",") if n.strip()), ig_images=args.ig_images,
        ig_iters=args.ig_iters, ig_lr=args.ig_lr, ig_preset=args.ig_preset or "", utility=utility_protocol(args),
        seed=args.seed, device=args.device)
    out_dir = job_directory(args.out)
    with progress_display(args) as show:
        out = drive(reproduce.run(cfg, out_dir, utility_dir=args.utility_dir, shard=args.shard), show)
    if (Path(out) / "REPORT.md").exists():
        print(f"-> {out}/REPORT.md, cells.csv; utility cells in {args.utility_dir or Path(out) / 'utility'}")
    return 0


class OneLineErrors(argparse.ArgumentParser):
    """argparse prints the whole usage block on a bad flag; one line says more."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


OUT_HELP = ("output directory, written whole or not at all; an existing one is replaced only if it holds an "
            "earlier result of this command (else see --overwrite)")
OVERWRITE_HELP = "replace --out even if it holds other files (they are deleted)"


def add_out_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    if default is None:
        p.add_argument("--out", required=True, help=OUT_HELP)
    else:
        p.add_argument("--out", default=default, help=OUT_HELP + f" (default {default})")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def add_preset_arg(p: argparse.ArgumentParser) -> None:
    from tipcore.pipeline import presets

    p.add_argument("--preset", choices=list(presets.PRESETS), metavar="NAME",
                   help="named settings shared with the app (flags given override them): "
                        + "; ".join(f"{n}: {pr.description}" for n, pr in presets.PRESETS.items()))


def preset_defaults(name: str) -> dict[str, Any]:
    """The flag defaults a preset sets (model, round, attack, threat model)."""
    from tipcore.pipeline import presets

    chosen = presets.get(name)
    r = chosen.round
    return {"model": chosen.model, "weights": chosen.weights, "mode": r.mode, "local_steps": r.local_steps,
            "lr": r.lr, "clip": r.clip, "attack": chosen.attack, "labels_known": chosen.labels_known}


def attack_args(p: argparse.ArgumentParser) -> None:
    from tipcore import attacks

    add_preset_arg(p)
    add_round_args(p)
    add_defense_args(p)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="idlg", choices=list(attacks.ATTACKS),
                   help="; ".join(f"{n}: {s.summary}" for n, s in attacks.ATTACKS.items()))
    g.add_argument("--iters", type=COUNT, help="optimisation steps (L-BFGS outer steps for dlg/idlg)")
    g.add_argument("--attack-opt", action="append", metavar="KEY=VALUE", help="any field of the attack's config, e.g. tv=1e-3")
    g.add_argument("--attack-preset", metavar="NAME", help="named options, e.g. paper for ig / ig_*: the TIP paper's "
                                                           "IG protocol (10000 iterations, lr 0.004, decay 0.5)")
    g.add_argument("--labels-known", action="store_true", help="threat model: the server is told the labels")
    g.add_argument("--update-dir", metavar="DIR", help="attack an update recorded elsewhere instead of running a round: "
                                                       "a directory from `tipcore update` or a Flower run "
                                                       "(global_weights.pt, update_defended.pt, defense.json)")
    g.add_argument("--truth", metavar="AUDIT_DIR", help="with --update-dir: the recorded client's own audit copy of "
                                                        "that round (a Flower node's audit-dir/round-NNN, with "
                                                        "private_batch.pt), to score the reconstruction (PSNR, SSIM, "
                                                        "labels, noised-channel detection)")
    g.add_argument("--report-every", type=COUNT, default=10, help="progress update and snapshot every N steps")
    g.add_argument("--quiet", action="store_true", help="no progress bar (or lines, when stderr is not a terminal)")
    add_out_args(p)
    p.set_defaults(func=cmd_attack)


def update_args(p: argparse.ArgumentParser) -> None:
    add_preset_arg(p)
    add_round_args(p)
    add_defense_args(p)
    add_out_args(p)
    p.set_defaults(func=cmd_update)


def train_args(p: argparse.ArgumentParser) -> None:
    from tipcore.federation.specs import MODELS  # torch-free

    p.add_argument("--model", default="lenet", choices=list(MODELS))
    p.add_argument("--epochs", type=COUNT, default=None, help="default: lenet 30, convnet 10, resnet18 1")
    p.add_argument("--lr", type=NUMBER, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.set_defaults(func=cmd_train)


def fl_args(p: argparse.ArgumentParser) -> None:
    from tipcore.federation.specs import MODELS, WEIGHTS  # torch-free

    p.add_argument("--model", default="convnet", choices=list(MODELS))
    p.add_argument("--weights", default="random", choices=list(WEIGHTS), help="start from random init or the digits checkpoint")
    p.add_argument("--defenses", default="none,dp_paper,tip", help="comma-separated defenses, run one after another")
    p.add_argument("--clients", type=INTEGER, default=10)
    p.add_argument("--rounds", type=INTEGER, default=10)
    p.add_argument("--epochs", type=INTEGER, default=1, help="local epochs per round")
    p.add_argument("--batch-size", type=INTEGER, default=32)
    p.add_argument("--lr", type=NUMBER, default=0.2)
    p.add_argument("--clip", type=NUMBER, default=5.0)
    p.add_argument("--epsilon", type=NUMBER, default=5.0, help="the same ε for every budgeted defense")
    p.add_argument("--delta", type=NUMBER, default=1e-5)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    add_out_args(p, "runs/fl")
    p.set_defaults(func=cmd_fl)


def utility_args(p: argparse.ArgumentParser) -> None:
    from tipcore.federation.specs import MODELS  # torch-free

    p.add_argument("--model", default="convnet", choices=list(MODELS))
    p.add_argument("--defenses", default="none,dp,dp_paper,prune,soteria,tip,tip_random,tip_fullband")
    p.add_argument("--batch", type=COUNT, default=32, help="private digits in the client's batch")
    p.add_argument("--local-steps", type=COUNT, default=4)
    p.add_argument("--lr", type=NUMBER, default=0.05)
    p.add_argument("--clip", type=NUMBER, default=5.0)
    p.add_argument("--epsilon", type=NUMBER, default=5.0)
    p.add_argument("--delta", type=NUMBER, default=1e-5)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    add_out_args(p, "runs/utility")
    p.set_defaults(func=cmd_utility)


def showcase_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["punchline", "frontier", "tip-grid", "all"],
                   help="tip-grid: the How TIP works page's reconstructions over a grid of p, r and ε "
                        "(resumes from runs/showcase-tip-grid)")
    p.add_argument("--quick", action="store_true", help="frontier: a two-point smoke grid (for tests)")
    p.add_argument("--utility-dir", default=None, help="frontier: where utility cells are kept (default: the sweep "
                   "directory's utility/); the report's (reproduce --utility-dir) can be shared, so no cell runs twice")
    p.set_defaults(func=cmd_showcase)


def sweep_args(p: argparse.ArgumentParser) -> None:
    from tipcore import attacks

    p.add_argument("--out", default="runs/sweep", help="directory of the sweep's tables; rerunning resumes there")
    p.add_argument("--defenses", help="subset of the grid's defenses (default: all of "
                                      "none, tip, tip_random, tip_fullband, dp_paper, prune, soteria)")
    p.add_argument("--images", type=INTEGER, default=2, help="first N gallery CIFAR-10 images")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--naive", default="idlg", choices=list(attacks.ATTACKS), help="the attacker that ignores the defense")
    p.add_argument("--adaptive", default="",
                   help="attackers that know the defense (default: every adaptive attacker built on --naive); "
                        "per image the best of them counts")
    p.add_argument("--iters", type=INTEGER, default=100, help="L-BFGS steps per attack")
    add_utility_args(p)
    p.add_argument("--quick", action="store_true", help="two strengths per defense (a smoke run)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_sweep)


def reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/reproduce", help="directory of the report; rerunning resumes there")
    p.add_argument("--images", type=INTEGER, default=20, help="first N gallery CIFAR-10 images (LeNet attacks)")
    p.add_argument("--lenet-attacks", default="", help="attacks on LeNet (default: idlg and every adaptive "
                                                        "attacker built on it)")
    p.add_argument("--lenet-iters", type=INTEGER, default=100, help="L-BFGS steps of the LeNet attacks")
    p.add_argument("--ig-attacks", default="", help="Inverting Gradients attacks on ResNet-18, e.g. ig,ig_drop "
                                                     "(default: none, the ResNet-18 part is left out)")
    p.add_argument("--ig-images", type=COUNT, default=5, help="images for the ResNet-18 attacks")
    p.add_argument("--ig-iters", type=INTEGER, default=24, help="IG iterations (CPU budget; the paper: 10000 on a GPU)")
    p.add_argument("--ig-lr", type=NUMBER, default=0.1, help="IG learning rate (the paper: 0.004 over 10000 iterations)")
    p.add_argument("--ig-preset", metavar="NAME", help="paper: the TIP paper's IG protocol (10000 iterations, lr 0.004, "
                                                       "decay 0.5; for a GPU), instead of --ig-iters / --ig-lr")
    add_utility_args(p)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="cpu", help="cpu, auto or cuda[:N]")
    p.add_argument("--shard", type=shard_of, default=(0, 1), metavar="I/N",
                   help="attack only the images whose index is I modulo N: N processes with the same flags and "
                        "--out split the work; the last to finish writes REPORT.md")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_reproduce)


def threads_arg(text: str) -> int:
    from tipcore.common.runtime import check_threads

    try:
        return check_threads(text, "N")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def shard_of(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 0 <= int(parts[0]) < int(parts[1]):
        raise argparse.ArgumentTypeError(f"a shard is I/N with 0 <= I < N, got '{text}'")
    return int(parts[0]), int(parts[1])


# The OpenMP policy the user set, read before main() sets the batch default: the explorer's server is not a
# batch job, so unless the user chose a policy app/main.py sets its own (PASSIVE).
_GIVEN_OMP_POLICY = os.environ.get("OMP_WAIT_POLICY")


def cmd_explorer(args: argparse.Namespace) -> int:
    """``streamlit run`` of this installation's app/main.py (the checkout's, or the wheel's copy)."""
    import importlib.util

    from tipcore.common import bundle

    if not bundle.APP_MAIN.is_file():
        raise CLIError(f"the explorer app is missing: {bundle.APP_MAIN} (reinstall: pip install .)")
    if importlib.util.find_spec("streamlit") is None:
        raise CLIError("streamlit is not installed (pip install -r requirements.txt)")
    # -P (Python 3.11+): the working folder stays off sys.path, so a tipcore/ or app/ folder in it cannot
    # stand in for the installed one.
    isolated = ["-P"] if sys.version_info >= (3, 11) else []
    command = [sys.executable, *isolated, "-m", "streamlit", "run", str(bundle.APP_MAIN), *args.streamlit_args]
    env = dict(os.environ)
    if _GIVEN_OMP_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name != "posix":  # no exec there: the server runs as a child
        import subprocess

        try:
            return subprocess.call(command, env=env)
        except KeyboardInterrupt:
            return 130
    # streamlit takes over this process (no torch loaded yet): Ctrl-C and SIGTERM reach the server itself.
    os.execve(sys.executable, command, env)
    return 0  # not reached: execve does not return


def explorer_args(p: argparse.ArgumentParser) -> None:
    # No flags of its own: main() passes every other argument on to `streamlit run`, in order.
    p.usage = "python -m tipcore explorer [-h] [STREAMLIT_OPTION ...]"
    p.epilog = ("Every other argument goes to `streamlit run` after the app, e.g. --server.port 8502 "
                "--server.headless true (see streamlit run --help).")
    p.set_defaults(func=cmd_explorer, streamlit_args=[])


# name -> (one-line help, the function that adds its flags). The flags, and the engine modules their
# choices come from, are built only for the command that runs, so the top-level help needs no torch.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "attack": ("run one client round, a defense and an attack; write result.json and PNGs", attack_args),
    "rerun": ("repeat the run a result.json describes (gallery image or upload), bit for bit", rerun_args),
    "update": ("write the clean and defended updates and defense.json", update_args),
    "train": ("train a digits checkpoint into assets/checkpoints", train_args),
    "fl": ("multi-round FedAvg on the bundled digits: accuracy per round per defense", fl_args),
    "utility": ("accuracy and Grad-CAM similarity of a digits checkpoint after clean vs defended updates",
                utility_args),
    "showcase": ("regenerate the app's precomputed results in assets/showcase", showcase_args),
    "sweep": ("privacy curves: attack PSNR vs defense strength and utility, naive and adaptive attacker "
              "(CSV + interactive HTML; resumes)", sweep_args),
    "reproduce": ("the 20-image reproduction report (REPORT.md + per-image CSV; resumes)", reproduce_args),
    "explorer": ("start the explorer app (streamlit run of the installed app/main.py; options go to streamlit)",
                 explorer_args),
}
EVERY_COMMAND = "*"
# Every command is a batch job that owns its machine: OpenMP threads spin between parallel regions, the
# fastest policy there. The explorer's server and its workers share a machine and wait passively instead
# (app/main.py). OMP_WAIT_POLICY in the environment overrides either.
BATCH_OPENMP_POLICY = "ACTIVE"


def build_parser(only: str | None = EVERY_COMMAND, preset: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: the one command whose flags are built (``EVERY_COMMAND``: all; None: none,
    enough for the top-level help and for naming the commands)."""
    parser = OneLineErrors(prog="python -m tipcore", description="The TIP explorer's command line: "
                           "gradient-inversion attacks, the TIP defense and its baselines.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors, metavar="COMMAND")
    for name, (help_text, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only in (EVERY_COMMAND, name):
            add_args(p)
            if preset and any(a.dest == "preset" for a in p._actions):
                p.set_defaults(**{dest: value for dest, value in preset_defaults(preset).items()
                                  if any(a.dest == dest for a in p._actions)})
    return parser


def chosen_preset(argv: Sequence[str]) -> str | None:
    """The --preset NAME in argv, if it names a preset (else argparse reports the bad name)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--preset=") else (
            argv[i + 1] if arg == "--preset" and i + 1 < len(argv) else None)
        if value is not None:
            from tipcore.pipeline import presets

            return value if value in presets.PRESETS else None
    return None


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def import_torch_uncollected() -> None:
    """Import torch with Python's cycle collector paused, then freeze what exists (for a process of its own).

    The collector walks the objects torch's import creates (hundreds of thousands) again and again while it
    runs, about a quarter of the import on 2 cores, and again at every full collection of the run and at the
    interpreter's exit (about 0.6 s there). Frozen objects are never walked; they are torch's and the
    engine's modules, which live as long as the process anyway."""
    import gc

    gc.disable()
    try:
        import torch  # noqa: F401
    finally:
        gc.enable()
    gc.freeze()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (a BaseException, so no
    ``except Exception`` swallows it): the staged ``--out`` is removed on the way out, as on any error."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM: what a shell reports for a process SIGTERM ended


def _terminate(signum: int, frame: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: a second must not cut the clean-up short
    raise Terminated()


FULL_EXIT_ENV = "TIPCORE_FULL_EXIT"  # =1: exit through the interpreter's teardown (probes that catch SystemExit)


def exit_process(code: int | None) -> NoReturn:
    """End this process with ``code`` once a command has answered. Every file is written and closed by then;
    what the interpreter's own teardown would add is freeing every module and torch's C++ destructors (0.2 s
    of each command, bench/cli_startup.py), so the exit handlers run (atexit, weakref finalizers, logging's
    flush), the streams are flushed, and the process leaves without it. With TIPCORE_FULL_EXIT=1 it is a
    plain ``sys.exit``."""
    if os.environ.get(FULL_EXIT_ENV) == "1":
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can be said
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def console_main() -> NoReturn:
    """The ``tipcore`` console script (pyproject [project.scripts]): ``main()``, then ``exit_process``."""
    code = main()
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C while exiting would only add a traceback
    exit_process(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0, 2 for anything the user can fix, 130 when interrupted,
    143 when terminated) instead of exiting, so tests can drive many commands in one process."""
    own_process = argv is None  # python -m tipcore or the console script (pyproject [project.scripts])
    if own_process:  # before torch loads: no module above imports it (tests/test_cli.py checks the help)
        import signal

        os.environ.setdefault("OMP_WAIT_POLICY", BATCH_OPENMP_POLICY)
        # SIGTERM's default kills the process where it stands, leaving the staged .OUT.tmp-* directory.
        signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # Ctrl-C while the parser imports the engine (the registries name the choices) is one line too
        chosen = next((a for a in argv if not a.startswith("-")), None)
        parser = build_parser(chosen if chosen in COMMANDS else None, preset=chosen_preset(argv))
        try:
            args, passed_on = parser.parse_known_args(argv)
            if args.command == "explorer":  # what the explorer does not know is streamlit's
                args.streamlit_args = passed_on
            elif passed_on:
                parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
        except SystemExit as exc:  # --help (0) or a bad flag, its one line already printed
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if args.command != "explorer":  # the server sets its own threads; no torch before it starts
            if own_process:
                import_torch_uncollected()
            from tipcore.common.runtime import configure_threads

            configure_threads()
        return args.func(args)
    except (ValueError, OSError) as exc:  # CLIError, the configs' and data's checks, unwritable paths
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if own_process:  # the process ends next: its exit need not walk what the command built either
            import gc

            gc.freeze()
