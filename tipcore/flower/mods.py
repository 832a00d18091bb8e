"""tipcore's defenses as Flower client mods: the defense runs on the ClientApp's reply, inside the client.

A mod wraps the ClientApp the way Flower's own ``LocalDpMod`` does (``mod(msg, context, call_next)``). On a
train message it lets the ClientApp train, then turns the returned parameters θ_local into the update
U = θ_global − θ_local that FedAvg effectively sends, runs ``defense.protect(U, ctx)`` with the client's own
data as private context (TIP: its own Grad-CAM pass), and replies θ_local − (U′ − U): the parameters whose
update is the defended U′. Wherever the defense left U untouched the reply holds θ_local bit for bit, so
"the update changed only where the record says" can be checked exactly.

What leaves the node: the defended parameters, the ClientApp's metrics plus the time the defense took,
and the ConfigRecord ``RECORD_KEY`` with only the public part of the defense (``public_record``): its name
and the option values it was built with (the knobs anyone running the protocol may know). The defense's
private record (``DefenseDiagnostics.as_dict()``: for TIP the Grad-CAM α of the node's own samples, the
selected channels, β and the frequency mask per layer) never goes into the reply: the node keeps it in
its audit log under ``audit-dir`` (node config, opt-in; ``records.write_client_audit``) or drops it.

Two message layouts are defended: the Message API's (one ArrayRecord of named parameters, the round
settings in one ConfigRecord) and Flower's legacy fit layout (``fitins.parameters`` by position,
``fitins.config``, a ``fitres.*`` reply), which flwr 1.42's SecAgg+ workflow sends; under SecAgg+ list
``secaggplus_mod`` (or ``secaggplus_when_asked``) before the DefenseMod, so it masks the defended update
(``check_mod_order``).

The mod needs two things the ClientApp already has, passed as callables of the Flower ``Context``: a
fresh model of the architecture (``build_model``) and the node's private training data (``private_data``).
The round's public settings (lr, clip, batch size, local epochs, examples per round) come from the train
message's ConfigRecord (see ``RoundSettings``), as the ServerApp announced them; with examples-per-round N
the mod defends with the same seeded sample of N examples the ClientApp trained on
(``settings.round_sample``), and a node's audit then also keeps those examples (``private_batch.pt``).
"""

from __future__ import annotations

import json
import time
from logging import ERROR, INFO
from typing import Any, Callable, Mapping, Sequence

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from torch import nn

from tipcore.federation.fl import MAX_BATCH, ClientContext, RoundConfig, SharedUpdate, trainable_names
from tipcore.flower import policy, records
from tipcore.flower.settings import RoundSettings, check_defense, round_sample
from tipcore.common.seeding import generator

RECORD_KEY = "tipcore-defense"  # ConfigRecord in the reply: {"defense": name, "options": JSON}, public only
PUBLIC_KEYS = ("defense", "options")  # everything RECORD_KEY may hold
DEFENSE_SECONDS_KEY = "defense-seconds"  # added to the reply's MetricRecord
AUDIT_DIR_KEY = "audit-dir"  # node config: where this node keeps its own clean/defended copies (opt-in)

BuildModel = Callable[[Context], nn.Module]
PrivateData = Callable[[Context], tuple[torch.Tensor, torch.Tensor]]


def _error_reply(msg: Message, reason: str) -> Message:
    log(ERROR, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def public_record(name: str, options: Mapping[str, Any]) -> dict[str, str]:
    """What a reply may say about its defense: the name and the option values it was built with."""
    return {"defense": name, "options": records.dumps(dict(options))}


def _single(records: Mapping[str, Any], kind: str) -> tuple[str, Any]:
    if len(records) != 1:
        raise ValueError(f"DefenseMod expects exactly one {kind} in the message, found {len(records)}")
    return next(iter(records.items()))


# Flower's Message-API clipping mods read their norm under this key of the train config (set by the
# server-side DifferentialPrivacyClientSide*Clipping wrappers).
FLOWER_CLIPPING_KEY = "clipping_norm"
SECAGG_CONFIGS_KEY = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS


def _flower_mods() -> tuple[set[Any], tuple[type, ...], set[Any]]:
    """(clipping mods, LocalDpMod classes, secure-aggregation mods) of the installed flwr, legacy and new."""
    from flwr.client import mod as legacy
    from flwr.clientapp import mod as current

    clipping = {current.fixedclipping_mod, current.adaptiveclipping_mod, legacy.fixedclipping_mod,
                legacy.adaptiveclipping_mod}
    return clipping, (current.LocalDpMod, legacy.LocalDpMod), {legacy.secaggplus_mod, legacy.secagg_mod,
                                                               secaggplus_when_asked}


# Flower's legacy fit layout (flwr.compat recorddict_compat), which its SecAgg+ workflow sends in flwr 1.42:
# arrays by position (no names), the config, and a FitRes-shaped reply.
LEGACY_INS_ARRAYS, LEGACY_INS_CONFIG = "fitins.parameters", "fitins.config"
LEGACY_RES_ARRAYS, LEGACY_RES_METRICS = "fitres.parameters", "fitres.metrics"


def _legacy_state(record: ArrayRecord, names: Sequence[str]) -> dict[str, torch.Tensor]:
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))
    if len(arrays) != len(names):
        raise ValueError(f"a legacy fit message holds {len(arrays)} arrays; the model has {len(names)} entries")
    return {n: torch.from_numpy(a.copy()) for n, a in zip(names, arrays)}


def _legacy_record(tensors: Sequence[torch.Tensor]) -> ArrayRecord:
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    params = ndarrays_to_parameters([t.detach().cpu().numpy() for t in tensors])
    return compat.parameters_to_arrayrecord(params, keep_input=False)


def secaggplus_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` on the messages of a SecAgg+ round only, so one ClientApp serves runs with
    and without secure aggregation (``secaggplus_mod`` alone fails on a plain train message)."""
    from flwr.client.mod import secaggplus_mod

    if msg.metadata.message_type == MessageType.TRAIN and SECAGG_CONFIGS_KEY in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _mod_name(mod: Any) -> str:
    return getattr(mod, "__name__", type(mod).__name__)


def check_mod_order(mods: Sequence[Any]) -> list[Any]:
    """The ClientApp's mods, checked for what would void a DefenseMod: ``ClientApp(mods=check_mod_order([...]))``.

    Flower runs the list first to last on the way in and last to first on the reply, so the reply passes
    the mods listed *after* DefenseMod before the defense and those listed *before* it after the defense.
    Refused (ValueError, one line): a clipping or local-DP mod before a DefenseMod (it would rescale or
    re-noise the defended update, so the node's audit record no longer matches what is sent), and a
    secure-aggregation mod after one (the defense would see SecAgg+'s key-exchange messages and the masked
    vector instead of the update). The right order: ``[secaggplus_mod, DefenseMod(...), fixedclipping_mod]``
    (clip the trained update, defend it, mask it).
    """
    mods = list(mods)
    clipping, local_dp, secure = _flower_mods()
    positions = [i for i, m in enumerate(mods) if isinstance(m, DefenseMod)]
    if not positions:
        return mods
    first, last = positions[0], positions[-1]
    for i, mod in enumerate(mods):
        if i < last and (mod in clipping or isinstance(mod, local_dp)):
            raise ValueError(f"{_mod_name(mod)} is listed before DefenseMod, so it would change the defended update "
                             "after the defense (the node's audit record would no longer match what is sent): list "
                             "it after DefenseMod, e.g. [secaggplus_mod, DefenseMod(...), fixedclipping_mod]")
        if i > first and mod in secure:
            raise ValueError(f"{_mod_name(mod)} is listed after DefenseMod, so the defense would run on SecAgg "
                             "messages and masked vectors: list it first, e.g. [secaggplus_mod, DefenseMod(...)]")
    for i in positions:
        mods[i].order_checked = True
    return mods


class DefenseMod:
    """Apply a registered tipcore defense to every train reply of a ClientApp.

    ``defense`` / ``options`` fix the requested defense; left as None the request comes from the run config
    keys ``defense`` and ``defense-options`` (a JSON object string), so one ClientApp serves every defense.
    The node's own config has the last word (``tipcore.flower.policy``): with ``defense`` (and
    ``defense-options``, its minimum) there, a request may only strengthen it, and a weaker or different
    one is refused with an error reply.
    The noise generator is seeded from the run config's ``seed``, the node's ``partition-id`` (or node id)
    and the round, so a run is reproducible and no two clients share noise.
    """

    def __init__(self, build_model: BuildModel, private_data: PrivateData, *, defense: str | None = None,
                 options: str | Mapping[str, Any] | None = None) -> None:
        self.build_model = build_model
        self.private_data = private_data
        self.defense = defense
        self.options = options
        self.order_checked = False  # set by check_mod_order

    def _choice(self, context: Context) -> tuple[str, Any]:
        name = self.defense if self.defense is not None else str(context.run_config.get("defense", "none"))
        options = self.options if self.options is not None else context.run_config.get("defense-options", "{}")
        return name, options

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        try:
            legacy = LEGACY_INS_ARRAYS in msg.content.array_records
            if legacy:  # a fit message of Flower's legacy workflow (the one SecAgg+ runs in, flwr 1.42)
                global_state = _legacy_state(msg.content.array_records[LEGACY_INS_ARRAYS], self._order(context))
                if LEGACY_INS_CONFIG not in msg.content.config_records:
                    raise ValueError(f"a legacy fit message without its ConfigRecord '{LEGACY_INS_CONFIG}'")
                config = msg.content.config_records[LEGACY_INS_CONFIG]
            else:
                if SECAGG_CONFIGS_KEY in msg.content.config_records:
                    raise ValueError("a SecAgg+ message without Flower's legacy fit records: secaggplus_mod "
                                     f"needs the legacy workflow ('{LEGACY_INS_ARRAYS}', '{LEGACY_INS_CONFIG}')")
                _, global_record = _single(msg.content.array_records, "ArrayRecord")
                _, config = _single(msg.content.config_records, "ConfigRecord")
                global_state = global_record.to_torch_state_dict()
            settings = RoundSettings.from_config(config)
            if FLOWER_CLIPPING_KEY in config:
                self._check_flower_clipping(float(config[FLOWER_CLIPPING_KEY]), settings)
            # The run's choice is a request: the node's own config (policy.resolve) may require more.
            name, options = policy.resolve(*self._choice(context), context.node_config, settings.clip)
            # Checked before training, so a misconfigured run fails in the first round's reply, not after
            # a wasted local epoch (the ServerApp runs the same check before it sends anything).
            defense = check_defense(name, options, settings.clip, self.build_model(context))
        except ValueError as err:
            return _error_reply(msg, f"DefenseMod: {err}")

        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            server_round = int(config.get("server-round", 0))
            return self._defend(reply, context, server_round, name, options, defense, settings, global_state, legacy)
        except ValueError as err:
            return _error_reply(msg, f"DefenseMod: {err}")

    def _check_flower_clipping(self, norm: float, settings: RoundSettings) -> None:
        """A Flower clipping mod is in the ClientApp (its server wrapper sent a clipping norm)."""
        if not self.order_checked:
            raise ValueError(f"the train config carries '{FLOWER_CLIPPING_KEY}', so a Flower clipping mod is in use, "
                             "but this DefenseMod's place among the mods was not checked: build the ClientApp with "
                             "mods=tipcore.flower.check_mod_order([...]) (a clipping mod must come after DefenseMod)")
        if norm != settings.clip:
            raise ValueError(f"Flower's clipping mod clips at {norm} but the round's clip (which the defense "
                             f"calibrates with) is {settings.clip}: set both equal")

    def _order(self, context: Context) -> list[str]:
        """The state_dict names, in order: a legacy message carries the arrays by position only."""
        return list(self.build_model(context).state_dict())

    def _defend(self, reply: Message, context: Context, server_round: int, name: str,
                options: Mapping[str, Any], defense: Any, settings: RoundSettings,
                global_state: dict[str, torch.Tensor], legacy: bool) -> Message:
        started = time.perf_counter()
        if legacy:
            if LEGACY_RES_ARRAYS not in reply.content.array_records:
                raise ValueError(f"the ClientApp's reply to a legacy fit message lacks '{LEGACY_RES_ARRAYS}'")
            reply_key = LEGACY_RES_ARRAYS
            local_state = _legacy_state(reply.content.array_records[reply_key], list(global_state))
        else:
            reply_key, local_record = _single(reply.content.array_records, "ArrayRecord")
            if list(local_record.keys()) != list(global_state.keys()):
                raise ValueError("the ClientApp's reply must carry the same parameter names as the global model")
            local_state = local_record.to_torch_state_dict()
        global_model, local_model = self.build_model(context), self.build_model(context)
        global_model.load_state_dict(global_state)
        local_model.load_state_dict(local_state)
        global_model.eval()
        local_model.eval()
        names = trainable_names(global_model)

        x, y = self.private_data(context)
        node = context.node_config.get("partition-id", context.node_id)
        seed = int(context.run_config.get("seed", 0))
        # The round's own examples: with examples-per-round, the seeded sample the ClientApp trained on.
        sample = round_sample(len(y), settings, seed=seed, node=node, server_round=server_round)
        if sample is not None:
            x, y = x[sample], y[sample]
        steps = settings.steps(len(y))
        clean = {n: (global_state[n] - local_state[n]) for n in names}
        update = SharedUpdate("fedavg", clean, int(len(y)), steps, settings.lr, clip=settings.clip)
        round_cfg = RoundConfig(mode="fedavg", batch_size=settings.batch_size, local_steps=steps, lr=settings.lr,
                                clip=settings.clip)
        ctx = ClientContext(local_model, global_model, x, y, round_cfg,
                            generator(seed, f"flower-defense:{node}:{server_round}"))
        with torch.no_grad():
            defended, diagnostics = defense.protect(update, ctx)
        # θ_local − (U′ − U): exactly θ_local wherever U′ == U, so the server's θ_g − reply equals U there.
        returned = dict(local_state)
        for n in names:
            returned[n] = local_state[n] - (defended.tensors[n].to(local_state[n]) - clean[n])
        seconds = time.perf_counter() - started

        # Public only: the name and the options (ratio, ε, δ, clip, ...), never what the defense computed
        # from this node's data (α, channels, masks, β): that record stays on the node.
        public = public_record(name, options)
        if legacy:
            reply.content.array_records[reply_key] = _legacy_record([returned[k] for k in global_state])
            if LEGACY_RES_METRICS not in reply.content.config_records:
                raise ValueError(f"the ClientApp's reply to a legacy fit message lacks '{LEGACY_RES_METRICS}'")
            metrics = reply.content.config_records[LEGACY_RES_METRICS]  # FitRes.metrics (scalars)
            metrics.update({f"{RECORD_KEY}.{k}": v for k, v in public.items()})
        else:
            reply.content[reply_key] = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in returned.items()})
            reply.content[RECORD_KEY] = ConfigRecord(public)
            _, metrics = _single(reply.content.metric_records, "MetricRecord")
        metrics[DEFENSE_SECONDS_KEY] = seconds
        log(INFO, "DefenseMod: %s on round %d in %.2f s", name, server_round, seconds)

        audit_dir = context.node_config.get(AUDIT_DIR_KEY)
        if audit_dir:
            # The private record, and the defended update exactly as the server will compute it from the
            # reply (θ_g − θ_returned), kept on this node only.
            record = diagnostics.as_dict()
            record.update(round=server_round, num_examples=int(len(y)), local_steps=steps, lr=settings.lr,
                          clip=settings.clip, batch_size=settings.batch_size, partition=node,
                          node_id=int(context.node_id), options=dict(options),
                          sample_indices=None if sample is None else sample.tolist())
            as_sent = {n: global_state[n] - returned[n] for n in names}
            # The round's private examples too, when an attack can rebuild them (at most MAX_BATCH), so an
            # evaluator handed this audit can score a reconstruction of the server's record (PSNR).
            batch = {"images": x, "labels": y} if len(y) <= MAX_BATCH else None
            records.write_client_audit(str(audit_dir), server_round, clean_update=clean, defended_update=as_sent,
                                       defense_record=json.loads(records.dumps(record)), private_batch=batch)
        return reply
