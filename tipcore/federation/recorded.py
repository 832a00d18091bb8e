"""An update recorded elsewhere, read back as exactly what the server saw: ``ServerView`` + ``SharedUpdate``.

The project's update format (written by ``python -m tipcore update`` and by the Flower strategy
``tipcore.flower.RecordingFedAvg`` each round) is a directory with:

    global_weights.pt    θ_global the client started from, {name: tensor}
    update_defended.pt   what the client sent: θ_global − θ_local (FedAvg) or its gradient (FedSGD)
    defense.json         the public protocol (model, mode, num_examples, local_steps, lr, clip, num_classes)
                         and the defense's record (which the attack never reads; the evaluator may)

``python -m tipcore attack --update-dir DIR`` attacks such a directory. The server holds no private image
to compare with, so the run reports the reconstruction and what the attacker inferred; an evaluator handed
the recorded client's own audit copy of that round (a Flower node's ``audit-dir/round-NNN`` with
``private_batch.pt``, see ``tipcore.flower.records``) adds ``--truth AUDIT_DIR`` and gets PSNR, SSIM, label
accuracy and, for a channel-flagging attacker, the detection precision/recall against the audit's record
(``load_truth``: the audit must hold the very update the server recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from tipcore.common.files import read_json
from tipcore.common.parsing import parse_record
from tipcore.federation import models
from tipcore.federation.fl import MAX_BATCH, Mode, RoundConfig, ServerView, SharedUpdate

GLOBAL_FILE = "global_weights.pt"
DEFENDED_FILE = "update_defended.pt"
RECORD_FILE = "defense.json"
PRIVATE_BATCH_FILE = "private_batch.pt"  # a client's audit only (tipcore.flower.records): the round's examples
# A TIP record of a 64-image ResNet-18 batch (per-image α of 20 layers) is about 15 MB; the rest a few kB.
MAX_RECORD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Protocol:
    """The public protocol fields of defense.json, typed: read by the parser that reads the CLI's flags and
    a result.json's RunSpec (``tipcore.common.parsing.parse_record``), so a list where a count belongs, a
    string learning rate or an infinite clip is a one-line error, not a crash deep in the attack. The
    record's other keys are the defense's own record, which the attack never reads."""

    model: str
    mode: Mode = "fedavg"
    num_examples: int | None = None  # None: the number of labels recorded
    labels: tuple[int, ...] | None = None
    local_steps: int = 1
    lr: float = 1e-3
    clip: float | None = None
    num_classes: int = 10


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
    record = read_json(root / RECORD_FILE, MAX_RECORD_BYTES, what=RECORD_FILE)
    if not isinstance(record, Mapping):
        raise ValueError(f"{root / RECORD_FILE} holds {type(record).__name__}, not an object of the round's protocol")
    # Only the protocol's keys (a null one takes its default); the rest is the defense's record.
    given = {k: record[k] for k in Protocol.__dataclass_fields__ if record.get(k) is not None}
    if "model" not in given:
        raise ValueError(f"{root / RECORD_FILE} names no model; known: {', '.join(models.MODELS)}")
    try:
        protocol = Protocol(**parse_record(Protocol, given, name=RECORD_FILE))
    except ValueError as exc:
        raise ValueError(f"{root}: {exc}") from None
    model, mode = protocol.model, protocol.mode
    if model not in models.MODELS:
        raise ValueError(f"{RECORD_FILE} names model {model!r}; known: {', '.join(models.MODELS)}")
    num_examples = protocol.num_examples if protocol.num_examples is not None else len(protocol.labels or ())
    if not 1 <= num_examples <= MAX_BATCH:
        raise ValueError(f"the update averages {num_examples or 'an unknown number of'} examples; these attacks "
                         f"rebuild batches of 1 to {MAX_BATCH} images (a whole client shard is out of their reach)")
    num_classes = protocol.num_classes
    if not 2 <= num_classes <= models.MAX_CLASSES:
        raise ValueError(f"{RECORD_FILE} declares {num_classes} classes; a model has 2 to {models.MAX_CLASSES}")
    try:  # the round's own checks: local steps, learning rate and clip in range
        RoundConfig(mode=mode, batch_size=num_examples, local_steps=protocol.local_steps, lr=protocol.lr,
                    clip=protocol.clip)
    except ValueError as exc:
        raise ValueError(f"{RECORD_FILE}: {exc}") from None
    global_weights, tensors = _tensors(root / GLOBAL_FILE), _tensors(root / DEFENDED_FILE)
    try:
        view = ServerView(model, num_classes, global_weights)
        template = view.build_model()
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{GLOBAL_FILE} does not fit model {model} with {num_classes} classes: {exc}") from None
    expected = {n for n, p in template.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise ValueError(f"{DEFENDED_FILE} has tensors for {len(set(tensors) & expected)} of {model}'s "
                         f"{len(expected)} parameters")
    update = SharedUpdate(mode=mode, tensors=tensors, num_examples=num_examples, local_steps=protocol.local_steps,
                          lr=protocol.lr, labels=None, clip=protocol.clip)
    return RecordedUpdate(view, update, record)


@dataclass(frozen=True)
class Truth:
    """The recorded client's private examples of the round, from its audit copy: the evaluator's only."""

    images: np.ndarray  # (N, H, W, 3) in [0, 1], as the attacks return reconstructions
    labels: tuple[int, ...]
    noised: dict[str, set[int]] | None  # the channels the defense noised per conv layer (None: not by channel)


def load_truth(directory: str | Path, update_dir: str | Path, rec: RecordedUpdate) -> Truth:
    """A client's audit of the round ``rec`` was read from; ValueError (one line) when it is not that round's."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"--truth {root} is not a directory (give a node's audit-dir/round-NNN)")
    missing = [f for f in (PRIVATE_BATCH_FILE, DEFENDED_FILE, RECORD_FILE) if not (root / f).is_file()]
    if missing:
        raise ValueError(f"--truth {root} lacks {', '.join(missing)} (a Flower node's audit of a round trained on "
                         f"at most {MAX_BATCH} examples: examples-per-round)")
    audited = _tensors(root / DEFENDED_FILE)
    sent = rec.update.tensors
    if set(audited) != set(sent) or not all(torch.equal(audited[n], sent[n]) for n in sent):
        raise ValueError(f"--truth {root} is not the audit of the update in {update_dir}: its update_defended.pt "
                         "differs from the server's (another node or another round?)")
    batch = _tensors(root / PRIVATE_BATCH_FILE)
    images, labels = batch.get("images"), batch.get("labels")
    n = rec.update.num_examples
    if images is None or labels is None or tuple(images.shape) != (n, *rec.view.input_shape) or \
            tuple(labels.shape) != (n,):
        raise ValueError(f"--truth {root / PRIVATE_BATCH_FILE} must hold images [{n}, "
                         f"{', '.join(map(str, rec.view.input_shape))}] and {n} labels for this {n}-example update")
    record = read_json(root / RECORD_FILE, MAX_RECORD_BYTES, what=RECORD_FILE)
    layers = record.get("layers") if isinstance(record, Mapping) else None
    noised = None
    if layers:
        noised = {str(layer["name"]): {int(c) for sample in layer["selected"] for c in sample}
                  for layer in layers if float(layer.get("effective_std") or 0) > 0}
    return Truth(images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).numpy(),
                 tuple(int(v) for v in labels.tolist()), noised)
