"""The node decides its protection: the defense and its minimum strength come from the node's own config.

A SuperNode operator writes, in ``--node-config``, the defense this node requires and the weakest settings
it accepts::

    flower-supernode ... --node-config 'partition-id=0 num-partitions=4 defense="tip" defense-options='"'"'{"epsilon": 5}'"'"''

(``defense-options`` is a JSON object, as in the run config; TOML single quotes keep its double quotes).
The run's request (the run config's ``defense`` / ``defense-options``, or the ones the ClientApp fixes) is
then only a request: ``resolve`` merges it over the node's options and accepts it only if every option it
changes makes the defense at least as strong, read from the options' declarations (``tipcore.common.knobs``):

* a privacy budget (role ``budget``: ε, δ) may only go down;
* a noise scale (a knob with a ``noise_unit``: TIP's β, DP's σ or noise multiplier) may only go up;
* every other option (TIP's channel ratio, cutoff, layers, ...) must stay as the node set it: whether a
  change strengthens it is not declared, so it is refused rather than guessed;
* a different defense, ``none`` included, is refused.

A refusal is a ``PolicyError`` (a ValueError) with one line naming the option, the node's value and the
requested one; ``DefenseMod`` turns it into an error reply, so the node sends nothing for that round. A
node config without ``defense`` accepts the run's request, as before. No flwr import here.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from tipcore import defenses
from tipcore.common import knobs
from tipcore.flower.settings import defense_options, parse_options

NODE_DEFENSE_KEY = "defense"  # node config: the defense this node requires
NODE_OPTIONS_KEY = "defense-options"  # node config: its weakest accepted options (JSON object)


class PolicyError(ValueError):
    """The run asked for a weaker (or a different) protection than this node's config requires."""


def node_requirement(node_config: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(defense, options) the node config requires, or None when it leaves the choice to the run."""
    name = node_config.get(NODE_DEFENSE_KEY)
    if name is None or str(name) == "":
        if str(node_config.get(NODE_OPTIONS_KEY, "") or "") not in ("", "{}"):
            raise PolicyError(f"node config sets {NODE_OPTIONS_KEY} without {NODE_DEFENSE_KEY}: name the defense "
                              "these options are the minimum of")
        return None
    name = str(name)
    if name not in defenses.DEFENSES:
        raise PolicyError(f"node config: unknown defense '{name}'; choose one of: {', '.join(defenses.DEFENSES)}")
    try:
        return name, parse_options(node_config.get(NODE_OPTIONS_KEY, "{}"))
    except ValueError as err:
        raise PolicyError(f"node config: {err}") from None


def _config(name: str, options: Mapping[str, Any], whose: str) -> dict[str, Any]:
    try:
        return asdict(defenses.create(name, options).config)
    except ValueError as err:
        raise PolicyError(f"{whose} options for '{name}': {err}") from None


def resolve(requested_name: str, requested_options: str | Mapping[str, Any] | None,
            node_config: Mapping[str, Any], clip: float) -> tuple[str, dict[str, Any]]:
    """The defense and options this node runs: the request, if it is at least as strong as the node's
    requirement; PolicyError otherwise. Options come back with the round's clip filled in."""
    required = node_requirement(node_config)
    requested = defense_options(requested_name, requested_options, clip)
    if required is None:
        return requested_name, requested
    name, minimum = required
    if requested_name != name:
        raise PolicyError(f"this node requires defense '{name}' (node config); the run asked for "
                          f"'{requested_name}': refusing to send an update with a different or weaker protection")
    minimum = defense_options(name, minimum, clip)
    merged = {**minimum, **requested}
    floor, chosen = _config(name, minimum, "the node config's"), _config(name, merged, "the requested")
    declared = knobs.knobs(defenses.DEFENSES[name].config_cls)
    for key, knob in declared.items():
        have, want = floor.get(key), chosen.get(key)
        if have == want:
            continue
        if have is not None and want is not None and knob.role == "budget":
            stronger = float(want) <= float(have)
        elif have is not None and want is not None and knob.noise_unit:
            stronger = float(want) >= float(have)
        else:
            raise PolicyError(f"this node fixes {key}={have!r} for '{name}' (node config); the run asked "
                              f"{key}={want!r}: only a smaller privacy budget or a larger noise scale may be "
                              "requested")
        if not stronger:
            raise PolicyError(f"the run asks {key}={want!r} for '{name}', weaker than this node's minimum "
                              f"{key}={have!r} (node config {NODE_OPTIONS_KEY}): refusing to send the update")
    return name, merged
