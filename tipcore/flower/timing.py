"""How long this process has existed, for splitting a Flower round's cost into the ClientApp process's
start-up (Python, flwr, the app's imports, pulling the message) and the work the app itself does.

Flower 1.42 starts one ``flwr-clientapp`` process per message (see examples/flower/README.md, "Round
cost"), so the age of the process when the app's handler is entered is Flower's start-up cost for that
round on this node.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_age_s(pid: int | str = "self") -> float | None:
    """Seconds since process ``pid`` started (Linux /proc, 1/CLK_TCK resolution); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, ticks after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None
