"""TIP, DP and the other tipcore defenses on a real Flower federation (the optional extra:
``pip install -e '.[flower]'``).

* ``DefenseMod``: a Flower client mod that applies a registered defense to the update a ClientApp returns.
* ``RecordingFedAvg``: FedAvg that writes, per round, one client's update in the project's format.
* ``check_defense`` / ``RoundSettings``: the checks a launcher and the ServerApp run before round one.

Importing this package checks the installed flwr against ``SUPPORTED_RANGE`` first and raises
``FlowerVersionError`` naming the range. ``import tipcore`` never imports it (the core install has no flwr).
"""

from tipcore.flower.compat import SUPPORTED_RANGE, FlowerVersionError, check_flwr_version

FLWR_VERSION = check_flwr_version()

from tipcore.flower.mods import RECORD_KEY, DefenseMod, check_mod_order, public_record  # noqa: E402
from tipcore.flower.settings import RoundSettings, check_defense  # noqa: E402
from tipcore.flower.strategy import (NoAggregatedReply, RecordingFedAvg, ScaledRoundTimeout,  # noqa: E402
                                     public_defense_of)

__all__ = ["SUPPORTED_RANGE", "FLWR_VERSION", "FlowerVersionError", "check_flwr_version", "DefenseMod",
           "check_mod_order", "RECORD_KEY", "public_record", "RoundSettings", "check_defense", "RecordingFedAvg",
           "NoAggregatedReply", "ScaledRoundTimeout", "public_defense_of"]
