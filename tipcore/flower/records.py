"""Per-round files in the project's update format, so the attack tools can be pointed at a Flower run.

The server side writes what an honest-but-curious server holds after a round (``write_server_round``):

    round-001/update_defended.pt   θ_global − θ_returned of one client, {param_name: tensor}
    round-001/global_weights.pt    θ_global the client started from (the attacker's ServerView)
    round-001/defense.json         the round's public protocol: model, lr, clip, batch size, local steps,
                                   number of examples, that client's defense name and options
    round-001/public_defense.json  {node_id: {"defense", "options"}} for every node that replied

``update_defended.pt`` and ``defense.json`` are what ``python -m tipcore update`` writes; the server never
has ``update_clean.pt`` nor the defense's private record (TIP's α, channels, masks, β), which no reply
carries. A client can keep its own audit copy (``write_client_audit``, opt-in per node through
``audit-dir``): ``update_clean.pt``, ``update_defended.pt`` and ``defense.json`` with the full private
record, exactly that command's three files, so anyone holding the node can check that the defense changed
only what its record says. When the round trained on at most 64 examples (``examples-per-round``) the audit
also holds them, ``private_batch.pt`` ({"images": [N, 3, H, W] in [0, 1], "labels": [N]}; their indices
into the shard are ``sample_indices`` in its defense.json), so an evaluator handed the audit can score an
attack on the server's record of that round (``python -m tipcore attack --update-dir SERVER_ROUND --truth
AUDIT_ROUND``). That copy never leaves the node unless its operator hands it over.
All tensors are saved on the CPU and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

CLEAN_FILE = "update_clean.pt"
DEFENDED_FILE = "update_defended.pt"
GLOBAL_FILE = "global_weights.pt"
DEFENSE_FILE = "defense.json"
PUBLIC_DEFENSE_FILE = "public_defense.json"  # server side: every replying node's public defense settings
PRIVATE_BATCH_FILE = "private_batch.pt"  # client audit only: the round's own examples {"images", "labels"}


def round_dir(root: str | Path, server_round: int) -> Path:
    return Path(root) / f"round-{server_round:03d}"


def _json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats become null (defense records can hold inf, e.g. an unset bound)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(_json_safe(record), allow_nan=False, sort_keys=True)


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)


def _write_round(root: str | Path, server_round: int, files: Mapping[str, Mapping[str, torch.Tensor]],
                 defense_record: Mapping[str, Any]) -> Path:
    out = round_dir(root, server_round)
    out.mkdir(parents=True, exist_ok=True)
    for name, tensors in files.items():
        _save_tensors(out / name, tensors)
    (out / DEFENSE_FILE).write_text(dumps(defense_record), encoding="utf-8")
    return out


def write_server_round(root: str | Path, server_round: int, *, global_weights: Mapping[str, torch.Tensor],
                       defended_update: Mapping[str, torch.Tensor], defense_record: Mapping[str, Any]) -> Path:
    return _write_round(root, server_round, {DEFENDED_FILE: defended_update, GLOBAL_FILE: global_weights},
                        defense_record)


def write_client_audit(root: str | Path, server_round: int, *, clean_update: Mapping[str, torch.Tensor],
                       defended_update: Mapping[str, torch.Tensor], defense_record: Mapping[str, Any],
                       private_batch: Mapping[str, torch.Tensor] | None = None) -> Path:
    files = {CLEAN_FILE: clean_update, DEFENDED_FILE: defended_update}
    if private_batch is not None:
        files[PRIVATE_BATCH_FILE] = private_batch
    return _write_round(root, server_round, files, defense_record)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def load_record(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
