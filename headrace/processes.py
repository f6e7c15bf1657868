"""Stopping a child process: one way for every part that starts one."""

from __future__ import annotations

import subprocess

__all__ = ["wait_or_kill"]


def wait_or_kill(process: subprocess.Popen, timeout_s: float) -> int:
    """Wait up to ``timeout_s`` for ``process`` to exit, then SIGKILL it; returns its status.

    Call it once the process was asked to stop (a signal, a closed pipe): a
    process that does not stop in time is killed, and either way it is reaped.

    Examples
    --------
    >>> import sys
    >>> wait_or_kill(subprocess.Popen([sys.executable, "-c", "pass"]), timeout_s=30)
    0
    >>> sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    >>> wait_or_kill(sleeper, timeout_s=0.1)  # killed by SIGKILL
    -9
    """
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
