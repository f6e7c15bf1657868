"""Whether a process that is not this one's child still runs (a reader process left behind)."""

from __future__ import annotations

import os
import time


def running(pid: int) -> bool:
    """True while ``pid`` runs: a zombie has exited, though init has not reaped it yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def gone_within(pid: int, timeout_s: float = 10.0) -> bool:
    """Whether ``pid`` stops running within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and running(pid):
        time.sleep(0.1)
    return not running(pid)
