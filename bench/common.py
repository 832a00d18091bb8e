"""Shared helpers for the benchmark scripts (run them as `python bench/<script>.py`)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"cuda {torch.cuda.is_available()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def timed(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> tuple[float, float]:
    """(median, min) wall seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)
