"""Waiting in a test for what another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    read: Callable[[], T], done: Callable[[T], bool], timeout_s: float, every_s: float
) -> T:
    """``read()`` every ``every_s`` until ``done`` holds of its value or ``timeout_s`` passed.

    Returns the last value read, for the test to assert on.
    """
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(every_s)
        value = read()
    return value
