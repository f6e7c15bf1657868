"""Restarting with another number of ranks re-shards the rows; nothing is lost or repeated."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from headrace.embedding_store import EmbeddingStore
from tests.distributed.conftest import (
    manifest,
    sharded_training,
    torchrun_command,
    torchrun_train,
    write_config,
)
from tests.trainer.conftest import run_cli, saved_training, write_log

pytestmark = pytest.mark.slow


def shard_rows(data_dir: Path, ranks: int) -> dict[str, dict[int, tuple[bytes, bytes]]]:
    """slot -> fid -> (vector bytes, optimizer state bytes), over every rank's store."""
    rows: dict[str, dict[int, tuple[bytes, bytes]]] = {}
    for rank in range(ranks):
        with EmbeddingStore.open(data_dir / f"rank-{rank}" / "store", read_only=True) as store:
            for slot in store.slots:
                table, local = store._where[slot.name]
                live = table.live_rows(local)
                mine = rows.setdefault(slot.name, {})
                for row in live:
                    fid = int(table.row_fid[row])
                    assert fid not in mine, f"{slot.name}: fid {fid} on two ranks"
                    mine[fid] = (table.weights[row].tobytes(), table.state[row].tobytes())
    return rows


def test_two_three_two_ranks(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = write_log(log, 3000)
    config = write_config(tmp_path / "trainer.toml", batch_size=32)
    data = tmp_path / "data"
    args = ["--source", f"file://{log}", "--data-dir", str(data), "--config", str(config)]

    torchrun_train(2, *args, "--max-events", "500")
    before = shard_rows(data, 2)
    assert manifest(data)["world_size"] == 2
    assert sum(len(fids) for fids in before.values()) > 0

    # Open on three ranks: the rows, their optimizer state and the counters move over.
    opened = subprocess.run(
        torchrun_command(
            3, str(Path(__file__).with_name("open_only.py")), str(config), str(data), args[1]
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert opened.returncode == 0, opened.stderr[-4000:]
    assert shard_rows(data, 3) == before
    states, _, _ = sharded_training(data, 3)
    assert [s.trained for s in states] == [1000, 0, 0]
    # Lines 0..999 were read by the two ranks; the three go on from line 1000.
    assert {s.positions[f"file:{log.name}"] for s in states} == {1000}

    torchrun_train(3, *args, "--max-events", "300")
    assert manifest(data)["world_size"] == 3
    torchrun_train(2, *args)
    states, rows, weights = sharded_training(data, 2)
    # Every event trained exactly once over the three runs.
    assert sum(s.trained for s in states) == events
    assert sum(s.records for s in states) == events
    for name in weights[0]:
        assert weights[0][name].numpy().tobytes() == weights[1][name].numpy().tobytes()
    assert all(len(fids) for fids, _ in rows.values())
    # Ids counted but not admitted before a re-shard keep their counts: the tags (admitted
    # at their second occurrence, never expired) are one process's on the same events.
    one = write_config(tmp_path / "one.toml", batch_size=64)
    single = ["--source", f"file://{log}", "--data-dir", str(tmp_path / "one")]
    run_cli("train", *single, "--config", str(one))
    _, rows_one, _ = saved_training(tmp_path / "one")
    np.testing.assert_array_equal(rows["tags"][0], rows_one["tags"][0])


def test_dead_letter_marks_follow_their_partitions_and_files(tmp_path: Path) -> None:
    from headrace.distributed.shards import _dead_letter_mark
    from headrace.trainer.checkpoint import TrainingState

    old = [
        TrainingState(dead_letter_mark={"bytes": 120, "t:0": 4}),
        TrainingState(dead_letter_mark={"bytes": 80, "t:1": 7}),
    ]
    # Every rank takes every partition's topic mark, and its own file's size.
    assert _dead_letter_mark(old, 1, tmp_path) == {"t:0": 4, "t:1": 7, "bytes": 80}
    # A rank the old world did not have keeps the file it finds, whole.
    assert _dead_letter_mark(old, 2, tmp_path) == {"t:0": 4, "t:1": 7}
    (tmp_path / "rank-2").mkdir()
    (tmp_path / "rank-2" / "dead_letters.jsonl").write_bytes(b"x" * 33)
    assert _dead_letter_mark(old, 2, tmp_path)["bytes"] == 33
