"""Two ranks train what one process trains on the same events (deterministic mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.distributed.conftest import sharded_training, torchrun_train, write_config
from tests.trainer.conftest import run_cli, saved_training, write_log

pytestmark = pytest.mark.slow


def test_two_ranks_train_as_one_process(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = write_log(log, 2400)
    # Line i goes to rank i % 2: two batches of 32 are one batch of 64's events.
    one = write_config(tmp_path / "one.toml", batch_size=64)
    two = write_config(tmp_path / "two.toml", batch_size=32)
    common = ["--source", f"file://{log}", "--deterministic"]
    single = run_cli("train", *common, "--data-dir", str(tmp_path / "one"), "--config", str(one))
    ranks = torchrun_train(2, *common, "--data-dir", str(tmp_path / "two"), "--config", str(two))
    assert single["trained"] == events
    assert [r["trained"] for r in ranks] == [events // 2, events // 2]

    _, rows_one, dense_one = saved_training(tmp_path / "one")
    states, rows_two, dense_two = sharded_training(tmp_path / "two", 2)
    assert sum(s.trained for s in states) == events
    # Every rank holds the very same dense weights, and one process's.
    for name, weights in dense_one.items():
        assert dense_two[0][name].numpy().tobytes() == dense_two[1][name].numpy().tobytes()
        np.testing.assert_allclose(dense_two[0][name].numpy(), weights.numpy(), atol=1e-5)
    # The same ids were admitted (threshold 2 on tags, expiry on user_id), with the same rows.
    assert rows_one.keys() == rows_two.keys()
    for slot, (fids, vectors) in rows_one.items():
        assert len(fids) > 0
        np.testing.assert_array_equal(rows_two[slot][0], fids, err_msg=slot)
        np.testing.assert_allclose(rows_two[slot][1], vectors, atol=1e-5, err_msg=slot)
