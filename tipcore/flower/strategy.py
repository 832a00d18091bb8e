"""FedAvg that also keeps, per round, what an honest-but-curious server could attack.

``RecordingFedAvg`` is Flower's message-based ``FedAvg`` (same sampling, same weighted average over
"num-examples") plus three things:

* before aggregating round r it writes one client's update, θ_global − θ_returned, the global weights it
  started from and the public protocol of that reply (model, lr, clip, batch size, local steps, number of
  examples, the defense's name and options) in the project's update format (``tipcore.flower.records``;
  the client with the lowest node id that replied, so the choice is stable);
* it keeps every client's public defense settings of the round (``public_defense.json``);
* it says which sampled nodes did not answer: a SuperNode that died mid-round is logged as missing and the
  round is aggregated over the others (Flower returns what arrived when the round timeout passes, or an
  error reply once the SuperLink has missed the node's heartbeats).

The server never holds a defense's private record (TIP's α, channels, masks, β): ``DefenseMod`` does not
send it. An evaluator who wants to score an attack against it must be handed a node's own audit log
(``audit-dir`` in that node's config) explicitly.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from tipcore.flower import records
from tipcore.flower.mods import RECORD_KEY
from tipcore.flower.settings import RoundSettings


def public_defense_of(reply: Message) -> dict[str, Any] | None:
    """The public defense settings a DefenseMod put in a reply: {"defense": name, "options": {...}}
    (None when the client runs no DefenseMod). Nothing else about the defense is in a reply."""
    config = reply.content.config_records.get(RECORD_KEY)
    if config is None or "defense" not in config:
        return None
    return {"defense": str(config["defense"]), "options": json.loads(str(config.get("options", "{}")))}


class NoAggregatedReply(AggregationError):
    """A round ended with no reply to aggregate: the run stops (the ServerApp exits with Flower's
    aggregation-error code, 202, and the run is marked failed) instead of going on with an unchanged model."""


class RecordingFedAvg(FedAvg):
    """FedAvg plus the per-round attack record. ``record_dir`` None: aggregate only.
    ``parameter_names``: which state_dict entries are parameters (buffers such as BatchNorm statistics
    are averaged but are not part of an update); None takes every floating-point entry.
    ``record_meta`` is merged into each defense.json (e.g. the model name an attacker needs)."""

    def __init__(self, *, record_dir: str | Path | None = None, parameter_names: Sequence[str] | None = None,
                 record_meta: Mapping[str, Any] | None = None, **fedavg_options: Any) -> None:
        super().__init__(**fedavg_options)
        self.record_dir = Path(record_dir) if record_dir else None
        self.parameter_names = list(parameter_names) if parameter_names is not None else None
        self.record_meta = dict(record_meta or {})
        self._sent: dict[int, list[Message]] = {}
        self._global: dict[int, ArrayRecord] = {}
        self._config: dict[int, ConfigRecord] = {}
        self.rounds: list[dict[str, Any]] = []  # per round: who was asked, who answered, who failed

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = messages  # the Grid fills in their message ids when it pushes them
        self._global[server_round] = arrays
        self._config[server_round] = config
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        sent = self._sent.pop(server_round, [])
        global_arrays = self._global.pop(server_round, None)
        config = self._config.pop(server_round, ConfigRecord())
        sampled = sorted(m.metadata.dst_node_id for m in sent)
        # A reply is matched to its node through the message it answers: error replies that the SuperLink
        # writes for a node it has lost carry the SuperLink's own id as sender.
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}

        def node(reply: Message) -> int:
            return node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

        answered = {node(m) for m in replies}
        failed = sorted((node(m), m.error.reason) for m in replies if m.has_error())
        valid = sorted((m for m in replies if not m.has_error()), key=node)
        missing = [n for n in sampled if n not in answered]
        if missing:
            log(WARNING, "round %d: no reply from node(s) %s before the round timeout (SuperNode gone or stalled); "
                "aggregating the %d of %d sampled nodes that replied", server_round,
                ", ".join(map(str, missing)), len(valid), len(sampled))
        for failed_node, reason in failed:
            log(WARNING, "round %d: node %d replied with an error, left out of the average: %s",
                server_round, failed_node, reason)
        self.rounds.append({"round": server_round, "sampled": sampled,
                            "aggregated": [node(m) for m in valid],
                            "missing": missing, "failed": [n for n, _ in failed]})
        if not valid:
            # FedAvg would go on with the unchanged model and the run would "succeed" at chance accuracy.
            raise NoAggregatedReply(
                f"round {server_round}: no reply to aggregate ({len(sampled)} node(s) sampled, {len(missing)} "
                f"did not reply within the round timeout, {len(failed)} replied with an error"
                + (f": {failed[0][1]}" if failed else "") + "); stopping the run")
        if global_arrays is not None and self.record_dir is not None:
            self._record(server_round, global_arrays, config, valid, node(valid[0]))
        return super().aggregate_train(server_round, replies)

    def _record(self, server_round: int, global_arrays: ArrayRecord, config: ConfigRecord,
                valid: list[Message], victim_node: int) -> None:
        global_state = global_arrays.to_torch_state_dict()
        names = self.parameter_names or [k for k, v in global_state.items() if torch.is_floating_point(v)]
        victim = valid[0]
        (_, returned), = victim.content.array_records.items()
        returned_state = returned.to_torch_state_dict()
        update = {n: global_state[n] - returned_state[n] for n in names}
        record = {**self._protocol(config, victim), **self.record_meta, "round": server_round,
                  "node_id": victim_node}
        out = records.write_server_round(self.record_dir, server_round, global_weights=global_state,
                                         defended_update=update, defense_record=record)
        every = {str(m.metadata.src_node_id): public_defense_of(m) for m in valid}
        (out / records.PUBLIC_DEFENSE_FILE).write_text(records.dumps(every), encoding="utf-8")
        log(INFO, "round %d: recorded node %d's update for attack studies in %s", server_round, victim_node, out)

    @staticmethod
    def _protocol(config: ConfigRecord, reply: Message) -> dict[str, Any]:
        """What the server knows of a reply's round: the settings it sent, the number of examples FedAvg
        weights by, the local steps they imply, and the defense's public settings."""
        public = public_defense_of(reply) or {"defense": "none", "options": {},
                                              "notes": "the client ran no DefenseMod"}
        protocol: dict[str, Any] = {"mode": "fedavg", **public}
        metrics = reply.content.metric_records
        num_examples = next((int(m["num-examples"]) for m in metrics.values() if "num-examples" in m), None)
        try:
            settings = RoundSettings.from_config(config)
        except ValueError:
            settings = None
        if settings is not None:
            protocol.update(lr=settings.lr, clip=settings.clip, batch_size=settings.batch_size,
                            local_epochs=settings.local_epochs)
        if num_examples is not None:
            protocol["num_examples"] = num_examples
            if settings is not None:
                protocol["local_steps"] = settings.steps(num_examples)
        return protocol


class ScaledRoundTimeout:
    """A Grid for ``Strategy.start`` whose round timeout follows the rounds' measured time.

    Round 1 waits up to ``ceiling_s`` (the run config's ``round-timeout``). From then on a round waits
    ``factor`` times the slowest complete round so far (every sampled node replied without error), at
    least ``floor_s`` and at most ``ceiling_s``: a node that died costs a few round-lengths, not the
    ceiling, and a machine that got slower keeps its nodes in (its rounds raise the bound). ``factor`` 0
    keeps ``ceiling_s`` for every round. Everything else is the wrapped Grid's.
    """

    def __init__(self, grid: Grid, *, ceiling_s: float, factor: float = 3.0, floor_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not ceiling_s > 0:
            raise ValueError(f"round-timeout must be > 0 s, got {ceiling_s}")
        if factor != 0 and not factor >= 1:
            raise ValueError(f"round-timeout-factor must be 0 (fixed timeout) or >= 1, got {factor}")
        self._grid = grid
        self.ceiling_s, self.factor = float(ceiling_s), float(factor)
        self.floor_s = min(float(floor_s), self.ceiling_s)
        self._clock = clock
        self.history: list[dict[str, Any]] = []  # per exchange with nodes: timeout, seconds, complete

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def timeout(self) -> float:
        complete = [h["seconds"] for h in self.history if h["complete"]]
        if not complete or self.factor == 0:
            return self.ceiling_s
        return min(self.ceiling_s, max(self.floor_s, self.factor * max(complete)))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:  # e.g. no federated evaluation: nothing to time
            return self._grid.send_and_receive(messages, timeout=timeout)
        limit = self.timeout()
        started = self._clock()
        replies = list(self._grid.send_and_receive(messages, timeout=limit))
        seconds = self._clock() - started
        complete = len(replies) == len(messages) and not any(r.has_error() for r in replies)
        self.history.append({"timeout_s": limit, "seconds": seconds, "complete": complete})
        log(INFO, "round exchange: %d of %d replies in %.1f s (timeout %.0f s; next %.0f s)",
            len(replies), len(messages), seconds, limit, self.timeout())
        return replies
