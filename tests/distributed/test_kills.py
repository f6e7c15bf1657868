"""SIGKILL of a rank: torchrun restarts the group, which resumes from the last whole generation."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.distributed.conftest import (
    rank_pids,
    sharded_training,
    torchrun_command,
    write_config,
)
from tests.trainer.conftest import write_log

pytestmark = pytest.mark.slow


def generation(data_dir: Path) -> int:
    try:
        return json.loads((data_dir / "generations" / "manifest.json").read_text())["generation"]
    except (OSError, ValueError):
        return 0


def test_kills_of_one_rank_lose_and_repeat_nothing(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = write_log(log, 4000, bad_every=50)
    config = write_config(tmp_path / "trainer.toml", batch_size=32)
    common = ["--source", f"file://{log}", "--config", str(config), "--deterministic"]
    train = ["-m", "headrace.cli", "train", *common]
    env = os.environ | {"PYTHONHASHSEED": "0"}
    calm = subprocess.run(
        torchrun_command(2, *train, "--data-dir", str(tmp_path / "calm")),
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert calm.returncode == 0, calm.stderr[-3000:]

    data = tmp_path / "killed"
    rng = random.Random(12)
    agent = subprocess.Popen(
        torchrun_command(2, *train, "--data-dir", str(data), max_restarts=5),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "torchrun.log").open("w"),
        env=env,
    )
    try:
        killed: set[int] = set()
        for _ in range(3):
            deadline = time.monotonic() + 180
            # Wait for the (restarted) group to train, then for its next generation.
            while len(set(rank_pids(agent.pid).values()) - killed) < 2:
                assert agent.poll() is None, "training ended before the kills"
                assert time.monotonic() < deadline, "the ranks did not start"
                time.sleep(0.01)
            seen = generation(data)
            while generation(data) <= seen:
                assert agent.poll() is None, "training ended before the kills"
                assert time.monotonic() < deadline, "no generation committed"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.1))
            pids = rank_pids(agent.pid)
            killed |= set(pids.values())
            victim = pids.get(rng.randrange(2))
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
        assert agent.wait(timeout=300) == 0
    finally:
        # The ranks too: without their agent they would wait in a collective until its timeout.
        for pid in [*rank_pids(agent.pid).values(), agent.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.wait()

    states, rows, weights = sharded_training(data, 2)
    _, calm_rows, calm_weights = sharded_training(tmp_path / "calm", 2)
    bad = events // 50
    assert sum(s.trained for s in states) == events
    assert sum(s.records for s in states) == events + bad
    assert sum(sum(s.dead_letters.values()) for s in states) == bad
    # Each bad line dead-lettered once, over both ranks' files.
    letters = [
        json.loads(line)
        for rank in range(2)
        for line in (data / f"rank-{rank}" / "dead_letters.jsonl").read_text().splitlines()
    ]
    offsets = sorted(letter["offset"] for letter in letters)
    assert len(offsets) == bad and len(set(offsets)) == bad
    # The very run an uninterrupted one trains.
    for name, tensor in calm_weights[0].items():
        np.testing.assert_allclose(weights[0][name].numpy(), tensor.numpy(), atol=1e-6)
    for slot, (fids, vectors) in calm_rows.items():
        np.testing.assert_array_equal(rows[slot][0], fids)
        np.testing.assert_allclose(rows[slot][1], vectors, atol=1e-6)
