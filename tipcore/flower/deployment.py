"""A Flower Deployment Engine on 127.0.0.1: one ``flower-superlink``, K ``flower-supernode`` processes and
``flwr run`` against them, for tests, benchmarks and trying the example on one machine.

Loopback only, hence ``--insecure`` (no TLS): the README of examples/flower says what changes across
machines. Every wait polls a port, a log line or a process with a deadline (no fixed sleeps), and
``close()`` ends every process the federation started, including those Flower starts in sessions of their
own (SuperExec, ServerApp and ClientApp processes), which are found by walking the process tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

CONNECTION_NAME = "loopback"


class FederationError(RuntimeError):
    """A Flower process did not come up, or a run did not finish, in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise FederationError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Linux /proc), whatever session or process group it is in."""
    children, found, todo = _children_map(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class RunOutcome:
    returncode: int
    log: str
    seconds: float


class LocalFederation:
    """``with LocalFederation(workdir, nodes=K) as fed: fed.run(app_dir, {...})``.

    ``node_config(k)`` may add keys to node k's ``--node-config`` (``partition-id`` and
    ``num-partitions`` are always set). Logs go to ``workdir/superlink.log`` and ``workdir/supernode-K.log``;
    Flower's state (installed app bundles, the connection config) lives in ``workdir/flwr-home``, so nothing
    touches ``~/.flwr``.
    """

    def __init__(self, workdir: str | Path, nodes: int, *, node_config: Callable[[int], Mapping[str, Any]] | None = None,
                 env: Mapping[str, str] | None = None, start_timeout_s: float = 120.0) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        self.workdir = Path(workdir).resolve()
        self.nodes = nodes
        self.node_config = node_config or (lambda k: {})
        self.start_timeout_s = start_timeout_s
        self.bin_dir = Path(sys.executable).parent  # flower-superlink spawns flower-superexec from PATH
        self.env = {**os.environ, "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_HOME": str(self.workdir / "flwr-home"), "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
        self.superlink: subprocess.Popen | None = None
        self.supernodes: list[subprocess.Popen] = []
        self.seen: set[int] = set()  # every pid of ours ever observed, for close() and for tests to check
        self.port = 0

    # ------------------------------------------------------------------ processes
    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / log_name, "ab")
        try:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        self.seen.add(proc.pid)
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def _check_alive(self, proc: subprocess.Popen, log_name: str) -> bool:
        if proc.poll() is not None:
            tail = " | ".join(self.log(log_name).strip().splitlines()[-3:])
            raise FederationError(f"{log_name.removesuffix('.log')} exited with code {proc.returncode}: {tail}")
        return True

    def start(self) -> "LocalFederation":
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n[superlink.{CONNECTION_NAME}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n', encoding="utf-8")
        # Runtime dependency installation off: the app's dependencies are already in this environment, and
        # nothing may be fetched at run time.
        self.superlink = self._spawn([str(self.bin_dir / "flower-superlink"), "--insecure", "--port", str(self.port),
                                      "--disable-runtime-dependency-installation"], "superlink.log")
        wait_until(lambda: self._check_alive(self.superlink, "superlink.log") and port_open(self.port),
                   self.start_timeout_s, f"the SuperLink on port {self.port}")
        for k in range(self.nodes):
            config = {"partition-id": k, "num-partitions": self.nodes, **self.node_config(k)}
            self.supernodes.append(self._spawn(
                [str(self.bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                 "--port", str(free_port()), "--max-wait-time", str(self.start_timeout_s),
                 "--node-config", " ".join(f"{key}={_toml_value(v)}" for key, v in config.items())],
                f"supernode-{k}.log"))
        wait_until(lambda: all(self._check_alive(p, f"supernode-{k}.log") for k, p in enumerate(self.supernodes))
                   and self.log("superlink.log").count("Activated node_id=") >= self.nodes,
                   self.start_timeout_s, f"{self.nodes} SuperNodes to connect")
        return self

    def run(self, app_dir: str | Path, run_config: Mapping[str, Any], timeout_s: float,
            on_poll: Callable[["LocalFederation"], None] | None = None) -> RunOutcome:
        """``flwr run APP loopback --stream`` with ``run_config`` overrides; returns when the run ends.
        ``on_poll`` is called about ten times a second while it runs (tests use it to kill a node mid-round)."""
        overrides = self.workdir / f"run-config-{len(list(self.workdir.glob('run-config-*')))}.toml"
        overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()), encoding="utf-8")
        log_name = overrides.stem.replace("run-config", "flwr-run") + ".log"
        started = time.monotonic()
        proc = self._spawn([str(self.bin_dir / "flwr"), "run", str(Path(app_dir).resolve()), CONNECTION_NAME,
                            "--stream", "--run-config", str(overrides)], log_name)
        try:
            while proc.poll() is None:
                self.seen |= self.tree()
                if time.monotonic() - started > timeout_s:
                    raise FederationError(f"flwr run did not finish within {timeout_s:.0f} s; see {self.workdir / log_name}")
                if on_poll is not None:
                    on_poll(self)
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                self._terminate({proc.pid} | descendants(proc.pid))
        return RunOutcome(proc.returncode, self.log(log_name), time.monotonic() - started)

    def tree(self) -> set[int]:
        roots = [p.pid for p in [self.superlink, *self.supernodes] if p is not None]
        return set(roots).union(*(descendants(pid) for pid in roots))

    def node_tree(self, k: int) -> set[int]:
        return {self.supernodes[k].pid} | descendants(self.supernodes[k].pid)

    def kill_node(self, k: int) -> None:
        """SIGKILL SuperNode k and every process under it, as a crashed machine would vanish."""
        pids = self.node_tree(k)
        self.seen |= pids
        _signal_all(pids, signal.SIGKILL)
        self.supernodes[k].wait(timeout=10)

    def _terminate(self, pids: set[int], grace_s: float = 10.0) -> None:
        _signal_all(pids, signal.SIGTERM)
        try:
            wait_until(lambda: not any(alive(pid) for pid in pids), grace_s, "processes to exit")
        except FederationError:
            _signal_all({pid for pid in pids if alive(pid)}, signal.SIGKILL)
            wait_until(lambda: not any(alive(pid) for pid in pids), grace_s, "killed processes to exit")

    def close(self) -> None:
        self.seen |= self.tree()
        try:
            self._terminate(self.seen)
        finally:
            for proc in [self.superlink, *self.supernodes]:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                if proc is not None:
                    proc.wait(timeout=10)

    def leftovers(self) -> set[int]:
        """Processes of this federation still running (empty after close())."""
        return {pid for pid in self.seen if alive(pid)}

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _toml_value(value: Any) -> str:
    """A TOML scalar (Flower's run and node configs are TOML): strings quoted, booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if '"' in text and "'" not in text and "\n" not in text:
        # A TOML literal string: Flower's --node-config parser ends a "..." value at the first quote, even
        # an escaped one, so a JSON object (defense-options) must travel in single quotes.
        return f"'{text}'"
    return json.dumps(text)  # a JSON string literal is a valid TOML basic string
