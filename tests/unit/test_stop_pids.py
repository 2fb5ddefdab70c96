"""tools/services/ray_local.py `stop_pids`: what SIGTERM ends goes; what ignores it (as Ray's raylet and
gcs_server do) is SIGKILLed after the grace period, so a stopped head leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from tools.services.ray_local import STOP_GRACE_S, stop_pids

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
ENDS_ON_TERM = "import time; print('ready', flush=True); time.sleep(120)"


def _start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"  # its handler is set
    return proc


def test_stop_pids_terminates_then_kills_what_ignores_sigterm():
    stubborn, polite = _start(IGNORES_TERM), _start(ENDS_ON_TERM)
    try:
        tic = time.monotonic()
        assert stop_pids([stubborn.pid, polite.pid]) is True
        took = time.monotonic() - tic
        for proc in (stubborn, polite):  # both gone (stop_pids reaped them: no exit status is left)
            proc.wait(timeout=10)
            assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == "zombie"
        assert took < STOP_GRACE_S + 5  # the grace period, not more (the second wait is for SIGKILL)
    finally:
        for proc in (stubborn, polite):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stop_pids_of_nothing_is_false():
    assert stop_pids([]) is False
