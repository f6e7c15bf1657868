"""``headrace train --nproc N``: torchrun's launcher inside the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.conftest import manifest, rank_pids, sharded_training, write_config
from tests.trainer.conftest import write_log

pytestmark = pytest.mark.slow


def test_sigterm_to_the_launcher_stops_every_rank_cleanly_and_a_rerun_trains_the_rest(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events.jsonl"
    events = write_log(log, 60_000)
    config = write_config(tmp_path / "trainer.toml", batch_size=32)
    data = tmp_path / "data"
    train = [sys.executable, "-m", "headrace.cli", "train", "--nproc", "2"]
    common = ["--source", f"file://{log}", "--config", str(config), "--data-dir", str(data)]
    env = os.environ | {"PYTHONHASHSEED": "0"}
    launcher = subprocess.Popen(
        [*train, *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 180
        while not (data / "generations" / "manifest.json").exists():
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no generation committed"
            time.sleep(0.05)
        assert len(rank_pids(launcher.pid)) == 2
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=120)
    finally:
        for pid in [*rank_pids(launcher.pid).values(), launcher.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()

    # Exit 0 and no traceback, as one process stops on SIGTERM.
    assert launcher.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    assert "received SIGTERM: stopped the ranks" in err
    closing = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted(line["rank"] for line in closing) == [0, 1]
    stopped_at = sum(line["trained"] for line in closing)
    assert 0 < stopped_at < events, "SIGTERM came after the end: make the log longer"
    # Both ranks checkpointed where they stopped: the last generation holds it all.
    states, _, _ = sharded_training(data, 2)
    assert sum(s.trained for s in states) == stopped_at
    first = manifest(data)["generation"]

    rerun = subprocess.run(
        [*train, *common, "--until-end"], capture_output=True, text=True, env=env, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    states, _, _ = sharded_training(data, 2)
    assert sum(s.trained for s in states) == events
    assert manifest(data)["generation"] > first
