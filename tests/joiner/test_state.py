"""The joiner's RocksDB state: one atomic commit, restored whole; other settings refused."""

from __future__ import annotations

import pytest

from headrace.joiner import JoinState, JoinStateError

IDENTITY = {"window_s": 60.0, "mode": "wait", "item_key": None, "rank": 0, "ranks": 1}


def test_commit_restores_entries_positions_and_counters(tmp_path):
    state = JoinState(tmp_path, IDENTITY)
    state.commit({b"p:a": b"1", b"e:b": b"2"}, {"impressions": {"f": 3}}, {"impressions": 3})
    state.commit({b"p:a": None}, {"impressions": {"f": 5}}, {"impressions": 5})
    state.close()
    again = JoinState(tmp_path, IDENTITY)
    assert again.entries == {b"e:b": b"2"}
    assert again.positions == {"impressions": {"f": 5}}
    assert again.counters == {"impressions": 5}
    again.close()


def test_another_window_on_the_same_data_dir_is_refused(tmp_path):
    JoinState(tmp_path, IDENTITY).close()
    with pytest.raises(JoinStateError, match="window_s"):
        JoinState(tmp_path, IDENTITY | {"window_s": 120.0})
