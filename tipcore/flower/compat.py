"""Which Flower this integration is tested against, checked before anything imports flwr.

Flower's Message API (mods, ``ArrayRecord``, the message-based ``FedAvg``, the SuperLink's HTTP ports)
changed between minor releases, so ``tipcore.flower`` supports exactly the minor version it was tested
with and says so, instead of failing later with an AttributeError deep inside a SuperNode.
Nothing here imports flwr: the check must work even when the installed flwr itself fails to import.
"""

from __future__ import annotations

import re
from importlib import metadata

SUPPORTED_RANGE = ">=1.42,<1.43"
_LOWEST = (1, 42)  # inclusive
_HIGHEST = (1, 43)  # exclusive
INSTALL_HINT = "pip install -e '.[flower]'"


class FlowerVersionError(ImportError):
    """flwr is missing, or outside ``SUPPORTED_RANGE``."""


def installed_flwr_version() -> str | None:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def check_flwr_version(version: str | None = None) -> str:
    """Return the installed flwr version, or raise FlowerVersionError naming the supported range.
    ``version`` overrides the installed one (for tests and for checking another environment)."""
    version = installed_flwr_version() if version is None else version
    if version is None:
        raise FlowerVersionError(f"tipcore.flower needs Flower (flwr{SUPPORTED_RANGE}), which is not installed: "
                                 f"{INSTALL_HINT}")
    match = re.match(r"^(\d+)\.(\d+)", version)
    if match is None or not _LOWEST <= (int(match[1]), int(match[2])) < _HIGHEST:
        raise FlowerVersionError(f"tipcore.flower supports flwr{SUPPORTED_RANGE} (the range it is tested with); "
                                 f"found flwr {version}. Install the supported one: {INSTALL_HINT}")
    return version
