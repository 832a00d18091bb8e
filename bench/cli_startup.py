"""Start-up cost of the command line: `python -m tipcore --help` (no command chosen, so no engine import)
against `python -m tipcore attack --help` (the attack command's flags list the engine's registries, so
torch and the rest load). Wall seconds (median over --repeat fresh processes) and peak RSS.

    python bench/cli_startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(argv: list[str], repeat: int) -> tuple[float, float]:
    """(median wall seconds, peak RSS in MB) of ``python -m tipcore *argv`` in fresh processes."""
    times, peaks = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pid = subprocess.Popen([sys.executable, "-m", "tipcore", *argv], cwd=REPO, stdout=subprocess.DEVNULL).pid
        _, status, usage = os.wait4(pid, 0)
        times.append(time.perf_counter() - t0)
        peaks.append(usage.ru_maxrss / 1024)
        assert os.waitstatus_to_exitcode(status) == 0, argv
    return statistics.median(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"# CLI start-up, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, median of {args.repeat}")
    for argv in (["--help"], ["attack", "--help"]):
        wall, rss = measure(argv, args.repeat)
        print(f"python -m tipcore {' '.join(argv):14s} {wall:6.2f} s   peak RSS {rss:6.0f} MB")


if __name__ == "__main__":
    main()
