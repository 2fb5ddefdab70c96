"""A local Ray head for `ray job submit`: loopback dashboard, non-default ports, capped object store.

State (temp/session dir, ports file) lives in RAY_DIR (default .local/ray). The head inherits the
environment it is started from, so the AWS_* variables of `scripts/s3 env` reach every job. Auth is
set explicitly (RAY_AUTH_MODE=disabled on loopback) because a token file left by an earlier
`ray.init` otherwise breaks clients that disagree on the mode. Stopping terminates only the processes
of this instance (found by its temp dir), never every Ray process on the machine like `ray stop`.
Like the head in cluster.yaml it declares the custom resource `ltad_driver` (sweep trial drivers).

CLI: `python -m tools.services.ray_local start|stop|status|env` (wrapped by `scripts/ray-local`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ltad.errors import UserError
from ltad.training.cluster import DRIVER_RESOURCE, LOCAL_DRIVER_SLOTS
from tools.services.ports import free_base

AUTH_MODE = "disabled"
OBJECT_STORE_BYTES = 1_000_000_000
# Offsets from the base port; worker ports take WORKER_PORTS ports after them.
NAMED = (
    "gcs",
    "dashboard",
    "node_manager",
    "object_manager",
    "client",
    "agent_listen",
    "agent_grpc",
    "runtime_env_agent",
    "metrics",
)
WORKER_PORTS = 100
MAX_SOCKET_DIR = 40  # Ray's unix socket paths under the temp dir must stay below ~107 characters


def instance_pids(temp_dir: Path) -> list[int]:
    """Processes of one Ray instance: those whose command line names its temp dir, and their
    descendants (agents and workers rename themselves to `ray::...`)."""
    import psutil

    needle = str(temp_dir)
    pids: set[int] = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(needle in arg for arg in proc.info["cmdline"] or []):
                pids.add(proc.pid)
                pids.update(child.pid for child in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(pids)


STOP_GRACE_S = 1.5
"""How long `stop_pids` waits after SIGTERM. The processes that handle it (dashboard, its heads, the
agents' workers) are gone within ~1.4 s; raylet, gcs_server, the log monitor and the runtime-env agent
were all still alive 8 s after it (measured), so a longer wait only delayed their SIGKILL: it cost
every head or node stop 5 s (the old default), about 40 s over a CI run."""


def stop_pids(pids: list[int], timeout: float = STOP_GRACE_S) -> bool:
    """SIGTERM the processes, SIGKILL what is left after `timeout` (gcs_server and raylet linger on
    SIGTERM; `ray stop --force` also ends in SIGKILL). True if there were any."""
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return bool(procs)


def short_temp_dir(state_dir: Path, tag: str) -> Path:
    """Ray's temp/session dir: inside the state dir unless that path is too long for unix sockets."""
    inside = state_dir / "tmp"
    if len(str(inside)) <= MAX_SOCKET_DIR:
        return inside
    return Path("/tmp") / f"ltad-{tag}-{hashlib.sha1(str(state_dir).encode()).hexdigest()[:10]}"


def _venv_env(**extra: str) -> dict[str, str]:
    """The environment of a Ray node: `python` and `ray` from this venv, auth explicit, no RAY_ADDRESS."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": AUTH_MODE, "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class RayHead:
    state_dir: Path
    num_cpus: int | None = None
    """CPUs the head offers (None: all of this machine's)."""

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()

    @property
    def _ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def temp_dir(self) -> Path:
        """Ray's temp/session dir: inside the state dir unless that path is too long for unix sockets."""
        return short_temp_dir(self.state_dir, "ray")

    def ports(self) -> dict[str, int] | None:
        return json.loads(self._ports_file.read_text()) if self._ports_file.exists() else None

    def env(self) -> dict[str, str]:
        ports = self.ports()
        if ports is None:
            raise UserError(f"no Ray head state in {self.state_dir}: run `scripts/ray-local start` first")
        return {"RAY_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}", "RAY_AUTH_MODE": AUTH_MODE}

    def _pids(self) -> list[int]:
        return instance_pids(self.temp_dir)

    def dashboard_ok(self) -> bool:
        ports = self.ports()
        if ports is None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['dashboard']}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 90.0) -> None:
        if self.dashboard_ok():
            return
        self.stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        offsets = tuple(range(len(NAMED) + WORKER_PORTS))
        base = free_base(offsets, start=26400, step=200)
        ports = {name: base + i for i, name in enumerate(NAMED)}
        cmd = [
            str(Path(sys.executable).parent / "ray"), "start", "--head",
            f"--port={ports['gcs']}", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
            "--include-dashboard=true", f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}", f"--ray-client-server-port={ports['client']}",
            f"--dashboard-agent-listen-port={ports['agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}", f"--metrics-export-port={ports['metrics']}",
            f"--min-worker-port={base + len(NAMED)}", f"--max-worker-port={base + len(NAMED) + WORKER_PORTS - 1}",
            f"--num-cpus={self.num_cpus or os.cpu_count() or 1}", f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--resources={json.dumps({DRIVER_RESOURCE: LOCAL_DRIVER_SLOTS})}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]  # fmt: skip
        # Jobs run `python` from PATH: make it this venv's, whatever shell started the head.
        env = _venv_env()
        self._ports_file.write_text(json.dumps(ports))
        with open(self.state_dir / "ray-start.log", "ab") as log:
            rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if rc != 0:
            raise UserError(f"`ray start` failed (exit {rc}): see {self.state_dir / 'ray-start.log'}")
        deadline = time.monotonic() + timeout
        while not self.dashboard_ok():
            if time.monotonic() > deadline:
                raise UserError(
                    f"Ray dashboard not up after {timeout:.0f} s: see {self.state_dir / 'ray-start.log'}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = STOP_GRACE_S) -> bool:
        """Stop this instance's processes by PID (see `stop_pids`), never every Ray on the machine."""
        return stop_pids(self._pids(), timeout)

    def status(self) -> dict:
        return {
            "running": self.dashboard_ok(),
            "processes": len(self._pids()),
            "state_dir": str(self.state_dir),
            "ports": self.ports(),
        }


WORKER_NODE_NAMED = (
    "node_manager",
    "object_manager",
    "agent_listen",
    "agent_grpc",
    "runtime_env_agent",
    "metrics",
)


@dataclass
class RayWorkerNode:
    """A second Ray node on this machine that shares nothing it should not with the head.

    It runs in its own mount namespace (`unshare --mount --map-root-user`) with an empty tmpfs over
    each of `hidden` (the head's temp dir, the folders holding local data and outputs), so a path
    the head can read is not there on this node, as on a real cluster; and its environment lacks
    `drop_env` (e.g. AWS_ENDPOINT_URL: a node with only an instance role). It has its own port block
    and a short temp dir, and is stopped by the PIDs of its own processes, never `ray stop`.
    """

    state_dir: Path
    head: RayHead
    num_cpus: int = 1
    hidden: tuple[Path, ...] = ()
    drop_env: tuple[str, ...] = ()
    object_store_bytes: int = 300_000_000

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.hidden = tuple(Path(p).resolve() for p in self.hidden)

    @property
    def temp_dir(self) -> Path:
        return short_temp_dir(self.state_dir, "node")

    def _pids(self) -> list[int]:
        return instance_pids(self.temp_dir)

    def running(self) -> bool:
        return bool(self._pids())

    def start(self, timeout: float = 90.0) -> None:
        """Start the node and wait until the head counts it alive."""
        ports = self.head.ports()
        if ports is None or not self.head.dashboard_ok():
            raise UserError(f"no running Ray head in {self.head.state_dir}: start the head first")
        self.stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        before = len(self.head_alive_nodes())
        offsets = tuple(range(len(WORKER_NODE_NAMED) + WORKER_PORTS))
        # after the head's block (its worker ports are not bound until workers start)
        base = free_base(offsets, start=ports["gcs"] + 200, step=200)
        mine = {name: base + i for i, name in enumerate(WORKER_NODE_NAMED)}
        ray_cmd = [
            str(Path(sys.executable).parent / "ray"), "start", f"--address=127.0.0.1:{ports['gcs']}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}",
            f"--node-manager-port={mine['node_manager']}", f"--object-manager-port={mine['object_manager']}",
            f"--dashboard-agent-listen-port={mine['agent_listen']}",
            f"--dashboard-agent-grpc-port={mine['agent_grpc']}",
            f"--runtime-env-agent-port={mine['runtime_env_agent']}", f"--metrics-export-port={mine['metrics']}",
            f"--min-worker-port={base + len(WORKER_NODE_NAMED)}",
            f"--max-worker-port={base + len(WORKER_NODE_NAMED) + WORKER_PORTS - 1}",
            f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats", "--block",
        ]  # fmt: skip
        mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in self.hidden)
        script = f'{mounts + " && " if mounts else ""}exec "$@"'
        cmd = ["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", *ray_cmd]
        env = _venv_env()
        for key in self.drop_env:
            env.pop(key, None)
        log = open(self.state_dir / "ray-node.log", "ab")  # noqa: SIM115 - the node outlives this call
        self._proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while len(self.head_alive_nodes()) <= before:
            if self._proc.poll() is not None:
                raise UserError(
                    f"Ray worker node exited ({self._proc.returncode}): see {self.state_dir / 'ray-node.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(
                    f"Ray worker node not up after {timeout:.0f} s: see {self.state_dir / 'ray-node.log'}"
                )
            time.sleep(0.5)

    def head_alive_nodes(self) -> list[dict]:
        """The alive nodes the head knows (its dashboard's node list)."""
        ports = self.head.ports() or {}
        url = f"http://127.0.0.1:{ports.get('dashboard')}/nodes?view=summary"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                summary = json.loads(r.read())["data"]["summary"]
        except (OSError, ValueError, KeyError):
            return []
        return [n for n in summary if n.get("raylet", {}).get("state") == "ALIVE"]

    def stop(self, timeout: float = STOP_GRACE_S) -> bool:
        """Stop this node's processes by PID (see `stop_pids`)."""
        return stop_pids(self._pids(), timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/ray-local", description="Local Ray head for `ray job submit`."
    )
    parser.add_argument("action", choices=("start", "stop", "status", "env"))
    args = parser.parse_args(argv)
    head = RayHead(Path(os.environ.get("RAY_DIR", ".local/ray")))
    try:
        if args.action == "start":
            head.start()
            print(f"Ray head ready, dashboard {head.env()['RAY_ADDRESS']} (state {head.state_dir})")
            print('Run: eval "$(scripts/ray-local env)"')
        elif args.action == "stop":
            print("stopped" if head.stop() else "not running")
        elif args.action == "status":
            info = head.status()
            print(json.dumps(info))
            return 0 if info["running"] else 1
        else:
            print("export " + " ".join(f"{k}={v}" for k, v in head.env().items()))
    except UserError as exc:
        print(f"scripts/ray-local: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
