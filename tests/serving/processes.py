"""A real ``headrace serve`` worker process for tests, on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from headrace.processes import wait_or_kill
from headrace.tansu import free_port

HEADRACE = Path(sys.executable).with_name("headrace")


@dataclass
class Worker:
    """A started worker: its process, its base URL and (once stopped) its stderr."""

    process: subprocess.Popen
    url: str
    stderr: str = ""

    def rss_bytes(self) -> int:
        """The process's resident set size now (``VmRSS`` of ``/proc``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")


@contextmanager
def serving_worker(
    params: str,
    *,
    python_options: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[Worker]:
    """Start ``headrace serve --params PARAMS`` and wait until it serves a version.

    ``python_options`` go to the interpreter (e.g. ``("-X", "importtime")``);
    the worker's stderr is in :attr:`Worker.stderr` after the block.
    """
    port = free_port()
    command = [sys.executable, *python_options, str(HEADRACE), "serve", "--params", params]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    # A file, not a pipe: nobody reads a pipe while the worker runs, and a full one blocks it.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        worker = Worker(process, f"http://127.0.0.1:{port}")
        try:
            _wait_ready(worker, log, ready_timeout_s)
            yield worker
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            wait_or_kill(process, timeout_s=20)
            log.seek(0)
            worker.stderr = log.read()


def _wait_ready(worker: Worker, log: IO[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if worker.process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the worker exited: {log.read()[-3000:]}")
        try:
            if httpx.get(f"{worker.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not get ready")
        time.sleep(0.1)
