"""Whether a process that is not this one's child still runs (a reader process left behind)."""

from __future__ import annotations

import os

from tests.waiting import poll_until


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
    return not poll_until(lambda: running(pid), lambda alive: not alive, timeout_s, 0.1)
