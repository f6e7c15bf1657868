"""SIGKILL the trainer at random moments: no event lost, none trained twice."""

from __future__ import annotations

import json

from headrace.stream import FileSource
from tests.trainer.conftest import assert_bit_identical, run_cli, saved_training, write_log
from tests.trainer.killing import train_with_kills


def test_file_source_survives_three_kills_bit_identically(tmp_path, small_config):
    log = tmp_path / "events.jsonl"
    # Enough events that training takes seconds: the kills must land mid-run.
    # A bad line every 100 events: every kill lands a few letters past the
    # last checkpoint, so a restart that wrote them again would be seen.
    good = write_log(log, 12_000, bad_every=100)
    args = ["train", "--source", f"file://{log}", "--config", str(small_config), "--deterministic"]

    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    after_kills = train_with_kills([*args, "--data-dir", str(killed_dir)], killed_dir, good, 11)
    summary = run_cli(*args, "--data-dir", str(clean_dir))

    # The kills landed mid-run: each restart resumed from a partial checkpoint.
    assert all(0 < trained < good for trained in after_kills), after_kills
    state, _, _ = saved_training(killed_dir)
    assert state.trained == summary["trained"] == good
    assert state.dead_letters == {"bad_ts": 120}
    assert state.positions == {FileSource(log).key: good + 120}
    assert_bit_identical(killed_dir, clean_dir)
    # Each bad line was dead-lettered once, kills or not.
    letters = (killed_dir / "dead_letters.jsonl").read_text().splitlines()
    assert [json.loads(line)["offset"] for line in letters] == [101 * k for k in range(120)]
    assert letters == (clean_dir / "dead_letters.jsonl").read_text().splitlines()
