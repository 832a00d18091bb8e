"""Process-wide setup done once, at CLI or app start (never inside library calls)."""

from __future__ import annotations

import os

import torch


def configure_threads(default: int | None = None) -> int:
    """Set torch's intra-op threads from TIP_THREADS, else ``default``, else the CPU count (capped at 8)."""
    wanted = os.environ.get("TIP_THREADS")
    n = int(wanted) if wanted and wanted.isdigit() and int(wanted) > 0 else (default or min(os.cpu_count() or 1, 8))
    torch.set_num_threads(n)
    return n
