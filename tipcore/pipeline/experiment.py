"""One experiment end to end: image → client round → defense → attack → metrics → one artifact format.

Only this layer holds both the private images and the reconstruction (to score them). ``stream`` is a
generator of progress events (the client round's stages, then the attack's snapshots as payloads)
returning a ``RunRecord``; the CLI and the app both consume it, and both write or offer the same bytes
from ``artifact_files``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator, Mapping

import numpy as np
import torch

from tipcore import __version__, attacks, defenses
from tipcore.federation import data, models
from tipcore.pipeline import metrics, update_stats
from tipcore.attacks.base import AttackResult, Snapshot, flagged_channels, flags_channels
from tipcore.common.config import from_dict
from tipcore.defenses.base import DefenseDiagnostics
from tipcore.common.files import read_json, read_regular
from tipcore.common.pictures import image_grid, png_bytes
from tipcore.federation.fl import MAX_BATCH, AttackerCapabilities, RoundConfig, ServerView, SharedUpdate, client_update
from tipcore.pipeline.outputs import StagedOutput
from tipcore.pipeline.runspec import SCHEMA_VERSION, RunSpec, pixel_digest, validate_pixels
from tipcore.common.progress import Event, StopHook, Stopwatch, check_stop, drive, never_stop
from tipcore.common.seeding import generator, pick_device



@dataclass(frozen=True)
class PreparedRound:
    """Everything up to the attack: what the client computed and what it sent."""

    config: RunSpec
    images: np.ndarray  # (B, 32, 32, 3) private images in [0, 1]
    labels: tuple[int, ...]
    num_classes: int
    clean: SharedUpdate
    defended: SharedUpdate
    diagnostics: DefenseDiagnostics
    view: ServerView
    round_seconds: float
    defense_seconds: float


@dataclass(frozen=True)
class RunRecord:
    prepared: PreparedRound
    result: AttackResult
    scores: metrics.Scores
    environment: Mapping[str, str]
    analysis: Mapping[str, Any] = field(default_factory=dict)  # update statistics and noised-channel detection

    @property
    def config(self) -> RunSpec:
        return self.prepared.config


def torchvision_version() -> str:
    """``torchvision.__version__`` (local tag included, e.g. +cu130) read from its version.py without importing
    torchvision, which would load torch._dynamo (about 1 s a run) for one string; the engine uses no
    torchvision itself. The distribution's version when that file cannot be read."""
    import ast
    import importlib.util
    from importlib.metadata import version

    try:
        spec = importlib.util.find_spec("torchvision")
        source = Path(spec.origin).with_name("version.py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
                return str(ast.literal_eval(node.value))
    except Exception:  # noqa: BLE001 - an unusual install: fall back to the distribution's metadata
        pass
    try:
        return version("torchvision")
    except Exception:  # noqa: BLE001 - a missing distribution only means "unknown"
        return "unknown"


def environment(device: torch.device) -> dict[str, str]:
    versions = {"tipcore": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision_version(), "numpy": np.__version__}
    try:  # the heatmaps' library (TIP's α is computed by the engine itself, to the same values)
        from importlib.metadata import version

        versions["grad-cam"] = version("grad-cam")
    except Exception:  # noqa: BLE001 - a missing distribution only means "unknown"
        versions["grad-cam"] = "unknown"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return {**versions, "device": name, "threads": str(torch.get_num_threads())}


def resolve_images(cfg: RunSpec, images: np.ndarray | None) -> tuple[np.ndarray, tuple[int, ...], int]:
    """The private batch, its labels and the model's class count."""
    if images is None:
        samples = [data.get_sample(i) for i in cfg.image_ids]
        if not samples:
            raise ValueError("no image given: pass at least one gallery id or image")
        arrays = np.stack([data.sample_image(s.id) for s in samples])
        labels = tuple(cfg.labels) if cfg.labels is not None else tuple(s.label for s in samples)
        needed = max(s.num_classes for s in samples)
    else:
        arrays = validate_pixels(images)
        if cfg.upload_sha256 is not None and pixel_digest(arrays) != cfg.upload_sha256:
            raise ValueError("these pixels are not the upload the RunSpec names (sha256 differs)")
        if cfg.labels is None:
            raise ValueError("labels are required for images that are not from the gallery")
        labels = tuple(cfg.labels)
        needed = 10
    if len(labels) != len(arrays):
        raise ValueError(f"got {len(arrays)} images but {len(labels)} labels")
    if len(arrays) != cfg.round.batch_size:
        raise ValueError(f"the round's batch_size is {cfg.round.batch_size} but {len(arrays)} images were given")
    if cfg.num_classes is not None:
        num_classes = cfg.num_classes
    elif cfg.weights == "digits":
        num_classes = 10
    else:
        num_classes = max(needed, 10)  # the images' label space; a bigger label is refused, not grown into
    bad = [lab for lab in labels if not 0 <= lab < num_classes]
    if bad:
        raise ValueError(f"label {bad[0]} is out of range for a {num_classes}-class model (labels must be in [0, {num_classes - 1}])")
    return arrays, labels, num_classes


PrepareStream = Generator[Event, None, PreparedRound]


def prepare_stream(cfg: RunSpec, images: np.ndarray | None = None, *,
                   should_stop: StopHook = never_stop) -> PrepareStream:
    """Run the client's round and its defense; build the server's view. Yields a start and an end event per
    stage ("client round", "Grad-CAM" for the TIP family, "defense") and raises ``Stopped`` when told to stop
    between them: with nothing defended yet there is nothing to attack."""
    device = pick_device(cfg.device)
    arrays, labels, num_classes = resolve_images(cfg, images)
    if images is not None and cfg.upload_sha256 is None:  # record what ran: the upload, not a gallery id
        cfg = cfg.for_upload(arrays)
    model = models.build(cfg.model, num_classes=num_classes, weights=cfg.weights, seed=cfg.seed).to(device).eval()
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.tensor(labels, dtype=torch.long, device=device)
    defense = defenses.create(cfg.defense, cfg.defense_options())
    defenses.check_model(defense, model)  # e.g. TIP's layer names, before the round computes anything
    watch = Stopwatch()

    def stage(name: str, done: int) -> Event:  # a log keeps the end of each stage, a bar shows its start too
        return watch.event(name, done, 1, "pass", f"{cfg.defense} on {cfg.model}", minor=done == 0)

    check_stop(should_stop, "before the client round")
    yield stage("client round", 0)
    t0 = time.perf_counter()
    clean, ctx = client_update(model, x, y, cfg.round, generator=generator(cfg.seed, "defense"),
                               share_labels=cfg.labels_known)
    t1 = time.perf_counter()
    yield stage("client round", 1)
    # The defense's own client-side stages (TIP: "Grad-CAM", then "defense"), each reported and stoppable.
    stages = defenses.protect_in_stages(defense, clean, ctx)
    current = None
    while True:
        try:
            name = next(stages)
        except StopIteration as finished:
            defended, diagnostics = finished.value
            break
        if current is not None:
            yield stage(current, 1)
        check_stop(should_stop, f"before {name}")
        yield stage(name, 0)
        current = name
    t2 = time.perf_counter()
    if current is not None:
        yield stage(current, 1)
    view = ServerView(cfg.model, num_classes, {k: v.detach().clone() for k, v in model.state_dict().items()},
                      AttackerCapabilities(labels_known=cfg.labels_known))
    return PreparedRound(cfg, arrays, labels, num_classes, clean, defended, diagnostics, view, t1 - t0, t2 - t1)


def prepare(cfg: RunSpec, images: np.ndarray | None = None, *, should_stop: StopHook = never_stop,
            on_event: Callable[[Event], None] | None = None) -> PreparedRound:
    """``prepare_stream`` driven to its end."""
    return drive(prepare_stream(cfg, images, should_stop=should_stop), on_event)


def stream(cfg: RunSpec, images: np.ndarray | None = None, *,
           should_stop: StopHook = never_stop) -> Generator[Event, None, RunRecord]:
    """The whole run as one stream: the client round's stages, then the attack's snapshots (payload)."""
    prepared = yield from prepare_stream(cfg, images, should_stop=should_stop)
    attack = attacks.create(cfg.attack, cfg.attack_cfg)
    result = yield from attack.reconstruct(
        prepared.view, prepared.defended, generator=generator(cfg.seed, "attack"),
        should_stop=should_stop, report_every=cfg.report_every,
    )
    scores = metrics.score(prepared.images, result.images, prepared.labels, result.labels)
    return RunRecord(prepared, result, scores, environment(pick_device(cfg.device)), analyse(prepared, result))


def analyse(prepared: PreparedRound, result: AttackResult) -> dict[str, Any]:
    """What the defense did to the update, and how well an adaptive attacker found it (experimenter's view)."""
    clean, defended = dict(prepared.clean.tensors), dict(prepared.defended.tensors)
    out: dict[str, Any] = {"update_cosine": update_stats.update_cosine(clean, defended),
                           **update_stats.noise_to_signal(clean, defended), "match": result.match}
    if flags_channels(result):  # the matcher's spec says so (tipcore.attacks.registry), whatever its name
        out["detection"] = update_stats.detection(result.flagged, prepared.diagnostics)
        out["flagged"] = flagged_channels(result)
    if result.notes:  # what the matcher found or could not do, from the update alone
        out["matcher_notes"] = list(result.notes)
    return out


def comparable(cfgs: list[RunSpec]) -> bool:
    """Whether runs differ only in their defense, so one batched optimisation can attack them all."""
    if len(cfgs) < 2:
        return False
    spec = attacks.create(cfgs[0].attack, cfgs[0].attack_cfg)
    recipe = spec.recipe() if hasattr(spec, "recipe") else None
    if recipe is None or recipe.labels == "soft" or recipe.trials != 1:
        return False
    first = replace(cfgs[0], defense="none", defense_cfg={})
    return all(replace(c, defense="none", defense_cfg={}) == first for c in cfgs[1:])


def stream_comparison(cfgs: list[RunSpec], images: np.ndarray | None = None, *,
                      should_stop: StopHook = never_stop) -> Generator[Any, None, list[RunRecord]]:
    """Runs that differ only in their defense, attacked as one batched optimisation where the attack allows
    it (``tipcore.attacks.speed.batched``), else one after another. Each record is what ``stream`` would give,
    up to float rounding of the batched kernels."""
    from tipcore.attacks.speed.batched import BatchedComparison

    if not comparable(cfgs):
        records = []
        for cfg in cfgs:
            records.append((yield from stream(cfg, images, should_stop=should_stop)))
        return records
    prepared = []
    for cfg in cfgs:
        prepared.append((yield from prepare_stream(cfg, images, should_stop=should_stop)))
    cfg = cfgs[0]
    comparison = BatchedComparison(attacks.create(cfg.attack, cfg.attack_cfg))
    results = yield from comparison.reconstruct(
        prepared[0].view, [p.defended for p in prepared],
        generators=[generator(c.seed, "attack") for c in cfgs], should_stop=should_stop,
        report_every=cfg.report_every)
    env = environment(pick_device(cfg.device))
    return [RunRecord(p, r, metrics.score(p.images, r.images, p.labels, r.labels), env, analyse(p, r))
            for p, r in zip(prepared, results)]


def run(cfg: RunSpec, images: np.ndarray | None = None, *, should_stop: StopHook = never_stop,
        on_event: Callable[[Event], None] | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None) -> RunRecord:
    """``stream`` driven to its end. ``on_snapshot`` is a shortcut that sees only the attack's snapshots."""

    def handle(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        if on_snapshot is not None and isinstance(event.payload, Snapshot):
            on_snapshot(event.payload)

    return drive(stream(cfg, images, should_stop=should_stop), handle)


# ---------------------------------------------------------------- artifacts (one format for CLI and app)

def result_dict(record: RunRecord) -> dict[str, Any]:
    p, r, s = record.prepared, record.result, record.scores
    return {
        "psnr": s.psnr, "ssim": s.ssim, "mse": s.mse, "lpips": s.lpips, "lpips_note": s.lpips_note,
        "label_accuracy": s.label_accuracy, "per_image_psnr": list(s.per_image_psnr),
        "label_true": list(p.labels), "label_pred": list(r.labels),
        "iterations": r.iterations, "evaluations": r.evaluations, "restarts": r.restarts,
        "diverged": r.diverged, "stopped": r.stopped, "final_loss": r.final_loss, "seconds": r.seconds,
        "round_seconds": p.round_seconds, "defense_seconds": p.defense_seconds,
        "model": p.config.model, "weights": p.config.weights, "num_classes": p.num_classes,
        "attack": p.config.attack, "defense": p.config.defense, "seed": p.config.seed,
        "defense_summary": dict(p.diagnostics.summary),
        "schema_version": SCHEMA_VERSION, "spec": p.config.to_dict(), "resolved": p.config.resolved(),
        "update": dict(record.analysis),
        "versions": {k: v for k, v in record.environment.items() if k not in ("device", "threads")},
        "device": record.environment.get("device"), "threads": record.environment.get("threads"),
    }


def metrics_csv(records: list[RunRecord]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["defense", "attack", "model", "seed", "psnr", "ssim", "mse", "label_accuracy",
                     "iterations", "restarts", "seconds"])
    for rec in records:
        d = result_dict(rec)
        writer.writerow([d["defense"], d["attack"], d["model"], d["seed"], f"{d['psnr']:.4f}", f"{d['ssim']:.4f}",
                         f"{d['mse']:.6g}", f"{d['label_accuracy']:.3f}", d["iterations"], d["restarts"],
                         f"{d['seconds']:.2f}"])
    return buf.getvalue().encode()


def progress_picture(record: RunRecord, max_frames: int = 8) -> np.ndarray:
    history = record.result.history
    if not history:
        return image_grid([record.result.images[:1]])
    idx = np.unique(np.linspace(0, len(history) - 1, min(max_frames, len(history))).round().astype(int))
    return image_grid([np.stack([history[i].images[0] for i in idx])])


def strict_json(obj: Any, indent: int = 1) -> bytes:
    """JSON that strict parsers accept: NaN and ±inf (e.g. a diverged loss) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) or isinstance(value, np.floating):
            return float(value) if np.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), indent=indent, allow_nan=False).encode()


def artifact_files(record: RunRecord) -> dict[str, bytes]:
    """The files a run produces, as bytes: written by the CLI, offered for download by the app."""
    return {
        "result.json": strict_json(result_dict(record), indent=2),
        "defense.json": strict_json(record.prepared.diagnostics.as_dict()),
        "metrics.csv": metrics_csv([record]),
        "original.png": png_bytes(image_grid([record.prepared.images])),
        "reconstruction.png": png_bytes(image_grid([record.result.images[list(record.scores.order)]])),
        "progress.png": png_bytes(progress_picture(record)),
        **({UPLOAD_FILE: npy_bytes(record.prepared.images)} if record.config.upload_sha256 else {}),
    }


UPLOAD_FILE = "images.npy"  # an uploaded batch's pixels, next to the result that names their sha256
# What a rerun reads at most. A result.json is a few kB (a 64-image batch with a TIP record: well under 1 MB);
# images.npy holds at most MAX_BATCH images of 32x32x3 float32 (786 kB), float64 in a hand-made one.
MAX_RESULT_BYTES = 16 * 2**20
MAX_UPLOAD_BYTES = 2 * MAX_BATCH * 32 * 32 * 3 * 4 + 4096


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def read_result(result_path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """A result.json (or the one in a directory) as its path and JSON object, read with a size bound."""
    path = Path(result_path)
    if path.is_dir():
        path = path / "result.json"
    result = read_json(path, MAX_RESULT_BYTES, what="result.json")
    if not isinstance(result, dict):
        raise ValueError(f"{path} is not a result.json (expected a JSON object)")
    return path, result


def recorded_threads(result_path: str | os.PathLike) -> int | None:
    """The torch thread count a result.json's run computed with (its ``threads``; None if not recorded)."""
    from tipcore.common.runtime import check_threads

    path, result = read_result(result_path)
    value = result.get("threads")
    return None if value is None else check_threads(value, f"{path}: threads")


def load_run(result_path: str | os.PathLike) -> tuple[RunSpec, np.ndarray | None]:
    """The RunSpec of a result.json and, for an upload, its pixels (checked against the recorded sha256)."""
    from tipcore.pipeline.runspec import spec_from_result

    path, result = read_result(result_path)
    try:
        spec = spec_from_result(result)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if spec.upload_sha256 is None:
        return spec, None
    pixels_path = path.with_name(UPLOAD_FILE)
    if not os.path.lexists(pixels_path):
        raise ValueError(f"the run was on an uploaded image, but {pixels_path} is missing")
    raw = read_regular(pixels_path, MAX_UPLOAD_BYTES, what="the upload's pixels")
    try:
        pixels = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{pixels_path} is not a readable .npy file ({exc})") from None
    if pixel_digest(pixels) != spec.upload_sha256:
        raise ValueError(f"{pixels_path} does not hold the pixels result.json names (sha256 differs)")
    return spec, pixels


def write_artifacts(out: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Write into a fresh sibling directory, then rename it over ``out``: never half-written, and nothing
    left behind on an error (``tipcore.pipeline.outputs``; the CLI stages its output before computing instead)."""
    return StagedOutput(out).commit(files)


def with_budget(defense: str, options: Mapping[str, Any], epsilon: float, delta: float) -> dict[str, Any]:
    """The same (ε, δ) for every defense of a comparison that takes a budget."""
    options = dict(options)
    if defenses.DEFENSES[defense].uses_budget:
        options.update(epsilon=epsilon, delta=delta)
    return options


def variant(cfg: RunSpec, **changes: Any) -> RunSpec:
    return replace(cfg, **changes)
