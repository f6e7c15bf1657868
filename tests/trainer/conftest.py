"""Helpers for the trainer tests: a small model, event logs, subprocess runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headrace.embedding_store import EmbeddingStore
from headrace.stream import CtrGenerator, SyntheticConfig
from headrace.trainer.checkpoint import MODEL_BLOB, STATE_BLOB, TrainingState

#: The small, fast model's layer and slots, for the trainer and distributed tests.
SMALL_MODEL = """
[model]
hidden = [16]

[[slots]]
name = "user_id"
dim = 4
expire_after = 400.0

[[slots]]
name = "item_id"
dim = 4

[[slots]]
name = "tags"
dim = 4
occurrence_threshold = 2

[[slots]]
name = "device"
dim = 4
"""

#: A small, fast model; checkpoints often so that kills land between them.
SMALL_CONFIG = (
    """
batch_size = 32
checkpoint_every_events = 300
checkpoint_every_s = 0.2
expire_every = 60.0
"""
    + SMALL_MODEL
)


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "trainer.toml"
    path.write_text(SMALL_CONFIG)
    return path


def write_log(path: Path, events: int, seed: int = 5, bad_every: int = 0) -> int:
    """Write ``events`` synthetic events, and a bad line every ``bad_every``; returns ``events``."""
    generated = CtrGenerator(SyntheticConfig(seed=seed)).generate(0, events)
    with path.open("w") as out:
        for i, event in enumerate(generated.events):
            if bad_every and i % bad_every == 0:
                out.write('{"ts": "not a time", "sparse": {}}\n')
            out.write(json.dumps(event) + "\n")
    return events


def headrace_command(*args: str) -> list[str]:
    """The CLI as a subprocess command, with this interpreter."""
    return [sys.executable, "-c", "from headrace.cli import main; main()", *args]


def run_cli(*args: str, timeout: float = 180) -> dict:
    """Run the CLI to the end; returns its closing JSON line."""
    done = subprocess.run(
        headrace_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONHASHSEED": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def saved_training(data_dir: Path) -> tuple[TrainingState, dict[str, tuple], dict]:
    """The persisted counters, rows (sorted by fid) and dense weights of a data dir."""
    with EmbeddingStore.open(data_dir / "store", read_only=True) as store:
        state = TrainingState.from_bytes(store.extra[STATE_BLOB])
        rows = {}
        for slot in store.slots:
            fids, vectors = store.export(slot.name)
            order = np.argsort(fids)
            rows[slot.name] = (fids[order], vectors[order])

        weights = torch.load(io.BytesIO(store.extra[MODEL_BLOB]), weights_only=True)
    return state, rows, weights


def assert_bit_identical(left: Path, right: Path) -> None:
    """Rows and dense weights of two data dirs are equal bit for bit."""
    _, rows_a, weights_a = saved_training(left)
    _, rows_b, weights_b = saved_training(right)
    assert rows_a.keys() == rows_b.keys()
    for slot in rows_a:
        assert np.array_equal(rows_a[slot][0], rows_b[slot][0]), slot
        assert rows_a[slot][1].tobytes() == rows_b[slot][1].tobytes(), slot
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert weights_a[name].numpy().tobytes() == weights_b[name].numpy().tobytes(), name
