"""Loopback port helpers, so parallel local services (tests, demo, a user's own) never clash."""

from __future__ import annotations

import socket
from collections.abc import Iterable


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `host:port` and we may bind it.

    SO_REUSEADDR as servers set it: connections in TIME_WAIT after a stop don't block a restart.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_base(offsets: Iterable[int], start: int = 20000, stop: int = 55000, step: int = 10) -> int:
    """The first base port from `start` for which every `base + offset` is free."""
    offsets = tuple(offsets)
    for base in range(start, stop, step):
        if all(is_free(base + o) for o in offsets):
            return base
    raise RuntimeError(f"no free port block with offsets {offsets} between {start} and {stop}")
