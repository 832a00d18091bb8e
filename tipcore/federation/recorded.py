"""An update recorded elsewhere, read back as exactly what the server saw: ``ServerView`` + ``SharedUpdate``.

The project's update format (written by ``python -m tipcore update`` and by the Flower strategy
``tipcore.flower.RecordingFedAvg`` each round) is a directory with:

    global_weights.pt    θ_global the client started from, {name: tensor}
    update_defended.pt   what the client sent: θ_global − θ_local (FedAvg) or its gradient (FedSGD)
    defense.json         the public protocol (model, mode, num_examples, local_steps, lr, clip, num_classes)
                         and the defense's record (which the attack never reads; the evaluator may)

``python -m tipcore attack --update-dir DIR`` attacks such a directory. There is no private image to
compare with, so the run reports the reconstruction and what the attacker inferred, not PSNR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from tipcore.federation import models
from tipcore.federation.fl import MAX_BATCH, MODES, ServerView, SharedUpdate

GLOBAL_FILE = "global_weights.pt"
DEFENDED_FILE = "update_defended.pt"
RECORD_FILE = "defense.json"


@dataclass(frozen=True)
class RecordedUpdate:
    view: ServerView
    update: SharedUpdate
    record: Mapping[str, Any]  # defense.json as written (protocol and the defense's own record)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise ValueError(f"{path} is not a tensor file this project wrote ({type(exc).__name__})") from None
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a {{name: tensor}} mapping")
    return dict(loaded)


def load(directory: str | Path) -> RecordedUpdate:
    """Read a recorded update; every missing or inconsistent piece is a ValueError naming it."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"--update-dir {root} is not a directory")
    missing = [f for f in (GLOBAL_FILE, DEFENDED_FILE, RECORD_FILE) if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{root} lacks {', '.join(missing)} (written by `python -m tipcore update` or a Flower "
                         "run with RecordingFedAvg)")
    try:
        record = json.loads((root / RECORD_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{root / RECORD_FILE} is not valid JSON ({exc})") from None
    model = record.get("model")
    if model not in models.MODELS:
        raise ValueError(f"{RECORD_FILE} names model {model!r}; known: {', '.join(models.MODELS)}")
    mode = record.get("mode", "fedavg")
    if mode not in MODES:
        raise ValueError(f"{RECORD_FILE} names mode {mode!r}; known: {', '.join(MODES)}")
    num_examples = int(record.get("num_examples") or len(record.get("labels") or []) or 0)
    if not 1 <= num_examples <= MAX_BATCH:
        raise ValueError(f"the update averages {num_examples or 'an unknown number of'} examples; these attacks "
                         f"rebuild batches of 1 to {MAX_BATCH} images (a whole client shard is out of their reach)")
    global_weights, tensors = _tensors(root / GLOBAL_FILE), _tensors(root / DEFENDED_FILE)
    num_classes = int(record.get("num_classes") or 10)
    try:
        view = ServerView(model, num_classes, global_weights)
        template = view.build_model()
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{GLOBAL_FILE} does not fit model {model} with {num_classes} classes: {exc}") from None
    expected = {n for n, p in template.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise ValueError(f"{DEFENDED_FILE} has tensors for {len(set(tensors) & expected)} of {model}'s "
                         f"{len(expected)} parameters")
    update = SharedUpdate(mode=mode, tensors=tensors, num_examples=num_examples,
                          local_steps=int(record.get("local_steps") or 1), lr=float(record.get("lr") or 1e-3),
                          labels=None, clip=record.get("clip"))
    return RecordedUpdate(view, update, record)
