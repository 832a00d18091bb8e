"""Start-up cost of the command line: every ``python -m tipcore ... --help`` (wall time, peak RSS, whether
torch was imported), and where a tiny CLI attack spends its time outside the attack loop.

    python bench/cli_startup.py [--repeat 3] [--iters 10] [--defenses none,tip]

The attack's split comes from a fresh interpreter running the CLI's own ``main()`` (the console script's
path: the OpenMP policy is the CLI's default unless OMP_WAIT_POLICY is set) with timers around the stages
the run itself reports, and every top-level ``import`` statement timed and charged to the stage it happens
in (``importlib.import_module`` calls, which only the torch-free registries make, are not counted
separately). Stages:

- ``python start``: launching the interpreter up to the first line of the child;
- ``setup``: importing the CLI, parsing and checking the flags, loading the image, up to ``run()``;
- ``model build``: from ``run()`` to the client round (model, defense object, images to tensors);
- ``client round`` / ``defense``: the stages the run reports (TIP: Grad-CAM, then the noise);
- ``attack loop``: ``AttackResult.seconds``, the optimisation itself;
- ``attack rest``: the attack's set-up and the scores (SSIM, PSNR), analysis and environment record;
- ``artifacts``: result.json and the PNGs built and the output directory committed;
- ``exit``: from ``main()`` returning to the process having exited (``cli.exit_process``: the exit handlers,
  not the interpreter's teardown, as ``python -m tipcore`` ends).

The plain ``python -m tipcore attack`` wall time, without any instrumentation, is measured beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("attack", "rerun", "update", "train", "fl", "utility", "showcase", "sweep", "reproduce")

# The child: the CLI's main() with sys.argv set (as the console script calls it), instrumented from outside.
CHILD = r'''
import builtins, json, os, sys, time
t_child = time.time()
perf0 = time.perf_counter()
marks = {"start": perf0}
imports = {}
phase = ["setup"]
depth = [0]
orig_import = builtins.__import__


def timed_import(name, globals=None, locals=None, fromlist=(), level=0):
    # Only the outermost import statement is timed (nested ones are inside it), charged to the current stage.
    if depth[0]:
        return orig_import(name, globals, locals, fromlist, level)
    depth[0] += 1
    t = time.perf_counter()
    try:
        return orig_import(name, globals, locals, fromlist, level)
    finally:
        depth[0] -= 1
        imports[phase[0]] = imports.get(phase[0], 0.0) + time.perf_counter() - t
        patch()


patched = [False]


def patch():
    experiment = sys.modules.get("tipcore.pipeline.experiment")
    if patched[0] or experiment is None or not hasattr(experiment, "artifact_files"):
        return
    patched[0] = True
    run, create = experiment.run, experiment.attacks.create

    def timed_run(*args, **kwargs):
        marks["run"] = time.perf_counter()
        phase[0] = "model build"
        record = run(*args, **kwargs)
        marks["run done"] = time.perf_counter()
        phase[0] = "artifacts"
        marks["loop"] = record.result.seconds
        return record

    def timed_create(*args, **kwargs):  # the attack is created once the defended update is ready
        marks.setdefault("defense done", time.perf_counter())
        phase[0] = "attack"
        return create(*args, **kwargs)

    experiment.run, experiment.attacks.create = timed_run, timed_create


class Recorder:
    """progress_display's stand-in: quiet, and it notes when the client round starts and ends."""

    def __enter__(self):
        return self.show

    def __exit__(self, *exc):
        return False

    def show(self, event):
        if event.stage == "client round" and event.done == 0:
            marks.setdefault("round", time.perf_counter())
            phase[0] = "client round"
        elif event.stage == "client round":
            marks.setdefault("round done", time.perf_counter())
            phase[0] = "defense"


builtins.__import__ = timed_import
argv = json.loads(sys.argv[1])
sys.argv = ["tipcore", *argv]
from tipcore import cli  # noqa: E402

cli.progress_display = lambda args: Recorder()
code = cli.main()
marks["end"] = time.perf_counter()
print("SPLIT " + json.dumps({"t_child": t_child, "marks": marks, "imports": imports, "code": code,
                             "omp": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": __import__("torch").get_num_threads(),
                             "torch": __import__("torch").__version__}))
sys.stdout.flush()
cli.exit_process(code)  # as python -m tipcore ends
'''


def wait(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MB, exit code, stdout) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out


PROBE = ("import runpy, sys\nsys.argv = ['tipcore', *sys.argv[1:]]\ntry:\n    runpy.run_module('tipcore', "
         "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules, file=sys.stderr)\n")


def help_times(repeat: int) -> None:
    print("\n## --help, fresh process each (median of %d)" % repeat)
    print("| command | wall | peak RSS | torch imported |\n|---|---|---|---|")
    for argv in (["--help"], *([c, "--help"] for c in COMMANDS)):
        walls, peaks = [], []
        for _ in range(repeat):
            wall, rss, code, _ = wait([sys.executable, "-m", "tipcore", *argv])
            assert code == 0, argv
            walls.append(wall)
            peaks.append(rss)
        probe = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True,
                               env=dict(os.environ, TIPCORE_FULL_EXIT="1"))  # runpy's SystemExit for the probe
        torch_loaded = "TORCH True" in probe.stderr
        print(f"| `python -m tipcore {' '.join(argv)}` | {statistics.median(walls):.2f} s | {max(peaks):.0f} MB | "
              f"{'yes' if torch_loaded else 'no'} |")


STAGES = ("python start", "setup", "model build", "client round", "defense", "attack loop", "attack rest",
          "artifacts", "exit")


def attack_split(defense: str, iters: int, repeat: int) -> None:
    rows: list[dict[str, float]] = []
    plain: list[float] = []
    info = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["attack", "--defense", defense, "--iters", str(iters), "--quiet", "--out", f"{tmp}/a"]
            t_launch = time.time()
            wall, _, code, out = wait([sys.executable, "-c", CHILD, json.dumps(argv)])
            assert code == 0, out
            split = json.loads(next(line for line in out.splitlines() if line.startswith("SPLIT "))[6:])
            m, imp = split["marks"], split["imports"]
            info = {k: split[k] for k in ("omp", "torch_threads", "torch")}
            start = split["t_child"] - t_launch
            loop = m["loop"]
            stages = {
                "python start": start,
                "setup": m["run"] - m["start"],
                "model build": m["round"] - m["run"],
                "client round": m["round done"] - m["round"],
                "defense": m["defense done"] - m["round done"],
                "attack loop": loop,
                "attack rest": m["run done"] - m["defense done"] - loop,
                "artifacts": m["end"] - m["run done"],
            }
            stages["exit"] = wall - start - (m["end"] - m["start"])
            stages["total"] = wall
            stages["outside the loop"] = wall - loop
            stages.update({f"imports in {k}": v for k, v in imp.items()})
            rows.append(stages)
            # The same command, uninstrumented.
            plain.append(wait([sys.executable, "-m", "tipcore", *argv[:-1], f"{tmp}/b"])[0])
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in {k for r in rows for k in r}}
    print(f"\n## `python -m tipcore attack --defense {defense} --iters {iters} --quiet --out DIR` "
          f"(median of {repeat}; OMP_WAIT_POLICY={info['omp']}, torch {info['torch']}, {info['torch_threads']} threads)")
    print("| stage | wall | of which imports |\n|---|---|---|")
    phases = {"setup": "setup", "model build": "model build", "client round": "client round", "defense": "defense",
              "attack loop": "attack", "artifacts": "artifacts"}
    for stage in STAGES:
        imports = f"{med.get(f'imports in {phases[stage]}', 0.0):.2f} s" if stage in phases else ""
        if stage == "attack loop":
            imports += " (the loop and the attack's rest together)"
        print(f"| {stage} | {med[stage]:.2f} s | {imports} |")
    print(f"| **total (instrumented)** | {med['total']:.2f} s | |")
    print(f"| **outside the attack loop** | {med['outside the loop']:.2f} s | |")
    print(f"| plain `python -m tipcore attack` (same flags, no instrumentation) | {statistics.median(plain):.2f} s | |")


def torch_floor(repeat: int) -> None:
    """What any command pays before its first line of work: an interpreter that imports torch and exits."""
    plain = [wait([sys.executable, "-c", "import torch"])[0] for _ in range(repeat)]
    print(f"\n## floor: `python -c 'import torch'` {statistics.median(plain):.2f} s (median of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="attack iterations of the timed attacks")
    parser.add_argument("--defenses", default="none,tip", help="one timed attack per defense")
    args = parser.parse_args()
    print(f"# CLI start-up, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, OMP_WAIT_POLICY in the environment: "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset (the CLI picks its default)')}, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    help_times(args.repeat)
    torch_floor(args.repeat)
    for defense in args.defenses.split(","):
        attack_split(defense.strip(), args.iters, args.repeat)
    print(f"\n# load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
