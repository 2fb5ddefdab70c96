"""An HTTP proxy in front of a local S3 server that records every request (and may delay each one).

What a job asks of its object store is measured where the store sees it: point the job's
AWS_ENDPOINT_URL at the proxy and read back one record per request: `method`, `key` (bucket/key,
URL-decoded, no query), `query`, `range` (the Range header), `copy_source` (x-amz-copy-source: a
server-side copy), `status`, `up` and `down` (body bytes sent and received; a copy moves none through
the client). Keep-alive connections are followed request by request: requests (bodies by
Content-Length or chunked) and responses (interim 100 Continue answers included) are parsed in two
tasks per connection, matched in order. `delay_ms` holds each request that long before forwarding it
(benchmarks/latency.py: a store that answers after 20-50 ms).

It runs in its own process (so it takes no GIL time from a reader being measured): `CountingProxy`
starts it and reads `records()` / `stats()` or `reset()`s them over a control port.
CLI: `python -m tools.services.s3_proxy TARGET_PORT [DELAY_MS]` prints {"port", "control_port"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import urllib.parse
from collections import deque
from pathlib import Path
from typing import Any

NO_BODY_STATUS = (204, 304)


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


async def _relay_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, 1 << 16))
        if not data:
            raise ConnectionError("connection closed inside a body")
        writer.write(data)
        n -= len(data)
        await writer.drain()


async def _relay_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fields: dict[str, str], *, to_eof: bool
) -> int:
    """Forward one message body; its length in bytes (chunk framing not counted)."""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(trailer)
                writer.write(trailer)
                await writer.drain()
                return total
            await _relay_exact(reader, writer, size + 2)
            total += size
    if "content-length" in fields:
        n = int(fields["content-length"])
        await _relay_exact(reader, writer, n)
        return n
    if not to_eof:
        return 0
    total = 0
    while data := await reader.read(1 << 16):
        writer.write(data)
        total += len(data)
        await writer.drain()
    return total


class _Server:
    def __init__(self, target_port: int, delay_ms: float) -> None:
        self.target_port = target_port
        self.delay = delay_ms / 1000.0
        self.records: list[dict[str, Any]] = []
        self.connections = 0
        self.in_flight = 0  # requests received and not yet answered in full
        self.most_in_flight = 0

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        pending: deque[dict[str, Any]] = deque()
        arrived = asyncio.Event()
        up = asyncio.create_task(self._requests(client_r, server_w, pending, arrived))
        down = asyncio.create_task(self._responses(server_r, client_w, pending, arrived))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)
        for task in (up, down):
            if task.done():
                continue
            if task is down and pending:  # the client closed after its last request: let it answer
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task, 30)
            task.cancel()
        for w in (client_w, server_w):
            w.close()

    async def _requests(self, reader, writer, pending: deque, arrived: asyncio.Event) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, fields = _headers(head)
                method, _, rest = line.partition(" ")
                target = rest.rsplit(" ", 1)[0]
                url = urllib.parse.urlsplit(target)
                record = {
                    "method": method,
                    "key": urllib.parse.unquote(url.path.lstrip("/")),
                    "query": url.query,
                    "range": fields.get("range", ""),
                    "copy_source": urllib.parse.unquote(fields.get("x-amz-copy-source", "")),
                    "status": 0,
                    "up": 0,
                    "down": 0,
                }
                pending.append(record)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                arrived.set()
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(head)
                await writer.drain()
                record["up"] = await _relay_body(reader, writer, fields, to_eof=False)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            return

    async def _responses(self, reader, writer, pending: deque, arrived: asyncio.Event) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, fields = _headers(head)
                status = int(line.split(" ", 2)[1])
                writer.write(head)
                await writer.drain()
                if 100 <= status < 200:  # an interim answer (100 Continue): the final one follows
                    continue
                while not pending:
                    arrived.clear()
                    await arrived.wait()
                record = pending.popleft()
                record["status"] = status
                if record["method"] != "HEAD" and status not in NO_BODY_STATUS:
                    record["down"] = await _relay_body(reader, writer, fields, to_eof=True)
                self.records.append(record)
                self.in_flight -= 1
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            return

    def stats(self) -> dict[str, int]:
        return {
            "requests": len(self.records),
            "gets": sum(r["method"] == "GET" for r in self.records),
            "connections": self.connections,
            "bytes_up": sum(r["up"] for r in self.records),
            "bytes_down": sum(r["down"] for r in self.records),
            "most_in_flight": self.most_in_flight,
        }

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = (await reader.readline()).decode().strip()
        if command == "reset":
            self.records, self.connections = [], 0
            self.most_in_flight = self.in_flight
            answer: Any = {"ok": True}
        elif command == "records":
            answer = self.records
        else:
            answer = self.stats()
        writer.write(json.dumps(answer).encode())
        await writer.drain()
        writer.close()


async def serve(target_port: int, delay_ms: float = 0.0) -> None:
    state = _Server(target_port, delay_ms)
    proxy = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    control = await asyncio.start_server(state.control, "127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in (proxy, control)]
    print(json.dumps({"port": ports[0], "control_port": ports[1]}), flush=True)
    await asyncio.Event().wait()


class CountingProxy:
    """The proxy in its own process, in front of the S3 server on `target_port` of 127.0.0.1."""

    def __init__(self, target_port: int, delay_ms: float = 0.0) -> None:
        self.delay_ms = delay_ms
        repo = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.services.s3_proxy", str(target_port), str(delay_ms)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=repo,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the S3 proxy did not start (exit code {self.proc.poll()})")
        ports = json.loads(line)
        self.endpoint = f"http://127.0.0.1:{ports['port']}"
        self.control_port = ports["control_port"]

    def _ask(self, command: str) -> Any:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=30) as s:
            s.sendall(command.encode() + b"\n")
            chunks = []
            while data := s.recv(1 << 16):
                chunks.append(data)
        return json.loads(b"".join(chunks))

    def records(self) -> list[dict[str, Any]]:
        """One dict per answered request, in the order the answers came."""
        return self._ask("records")

    def stats(self) -> dict[str, int]:
        """Totals: requests, gets, connections, bytes_up, bytes_down (bodies), and most_in_flight: the most
        requests received and not yet answered at one time since the start or the last `reset`."""
        return self._ask("stats")

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def summarise(records: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """Requests under the bucket/key `prefix`, by method (count, body bytes up and down)."""
    out: dict[str, Any] = {}
    for r in records:
        if not r["key"].startswith(prefix):
            continue
        kind = "COPY" if r["copy_source"] else r["method"]
        row = out.setdefault(kind, {"requests": 0, "up": 0, "down": 0})
        row["requests"] += 1
        row["up"] += r["up"]
        row["down"] += r["down"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    asyncio.run(serve(int(args[0]), float(args[1]) if len(args) > 1 else 0.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
