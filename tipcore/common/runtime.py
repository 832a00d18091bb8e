"""Process-wide setup done once, at CLI, app or worker start (never inside library calls).

The thread count is part of what fixes a run's result: torch splits a reduction (a convolution's or a
matrix product's sum) between its intra-op threads, and a different split rounds differently, so the same
RunSpec on the same CPU and torch gives the same bytes only at the same thread count. Every process that
computes results (the CLI's commands, the explorer's attack workers, the server's own views) therefore takes
its count from ``compute_threads``: ``TIP_THREADS`` when set, else ``DEFAULT_THREADS``, never the machine's
core count or an inherited ``OMP_NUM_THREADS``. result.json records the count (``threads``) and ``rerun``
sets it again.

This module imports no torch at import time (the explorer's server reads the count before torch loads).
"""

from __future__ import annotations

import os
from typing import Any

from tipcore.common.parsing import parse_typed

THREADS_ENV = "TIP_THREADS"
# One, the same on every machine. On the 2-core development machine, busy as it usually is, one thread was
# as fast as two or faster, much faster with the CLI's spinning OpenMP threads (BENCHMARKS.md, "Thread count",
# from bench/threads.py); the explorer runs two attacks at once on two cores. On a machine of its own
# TIP_THREADS=N may be faster: result.json records N, and results may then differ from the default's.
DEFAULT_THREADS = 1
MAX_THREADS = 256


def check_threads(value: Any, name: str = "threads") -> int:
    """``value`` (an int, or its text) as a thread count in [1, MAX_THREADS]; a one-line ValueError else."""
    if isinstance(value, str):
        value = parse_typed(int, value, name=name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer thread count, got {value!r}")
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{name} must be in [1, {MAX_THREADS}] (torch's intra-op threads), got {value}")
    return value


def compute_threads() -> int:
    """The thread count a run computes with: ``TIP_THREADS`` if set (a bad value is a one-line ValueError),
    else ``DEFAULT_THREADS``."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    return check_threads(raw, THREADS_ENV) if raw else DEFAULT_THREADS


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default: ``compute_threads()``); returns the count."""
    import torch

    n = compute_threads() if threads is None else check_threads(threads)
    torch.set_num_threads(n)
    return n
