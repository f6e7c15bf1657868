"""Versions published in shards (one per rank): a reader hands out whole versions only."""

from __future__ import annotations

import numpy as np
import pytest

from headrace.serving import open_reader, open_writer
from headrace.serving.protocol import SlotRows, Update, UpdateAssembler, decode_part, encode


def _shard(version: int, shard: int, kind: str = "delta", rows: int = 50) -> Update:
    """Shard ``shard`` of 2: its own fids (shard * 1000 + i); shard 0 carries dense and meta."""
    fids = np.arange(rows, dtype=np.int64) + 1000 * shard + 10_000 * version
    vectors = np.full((rows, 3), version + shard / 10, dtype=np.float32)
    lead = shard == 0
    return Update(
        kind,  # type: ignore[arg-type]
        version,
        100.0 + version + shard,
        5.0 + shard,
        {"s": SlotRows(fids, vectors, np.array([shard], dtype=np.int64))},
        dense=b"dense" if lead else None,
        meta={"model": "m"} if lead and kind == "snapshot" else None,
        shard=shard,
        shards=2,
    )


def _assembled(assembler: UpdateAssembler, frames: list[bytes]) -> list[Update]:
    return [u for f in frames if (u := assembler.add(decode_part(f))) is not None]


def test_interleaved_shards_make_one_whole_version() -> None:
    a, b = encode(_shard(7, 0), max_part_bytes=300), encode(_shard(7, 1), max_part_bytes=300)
    assert len(a) > 2 and len(b) > 2
    interleaved = [f for pair in zip(a, b, strict=False) for f in pair] + a[len(b) :] + b[len(a) :]
    assembler = UpdateAssembler()
    (whole,) = _assembled(assembler, interleaved)
    assert whole.version == 7 and whole.shards == 1
    expected = np.concatenate([_shard(7, 0).slots["s"].fids, _shard(7, 1).slots["s"].fids])
    np.testing.assert_array_equal(whole.slots["s"].fids, expected)
    assert whole.slots["s"].removed.tolist() == [0, 1]
    assert whole.dense == b"dense" and whole.event_time == 108.0 and whole.published_at == 6.0
    # Until its last part, the other shard's rows alone are no version.
    assert _assembled(UpdateAssembler(), interleaved[:-1]) == []


def test_a_version_a_shard_left_unfinished_is_dropped_when_it_moves_on() -> None:
    assembler = UpdateAssembler()
    # Rank 1 died before publishing version 3; after the restart both publish 4.
    frames = encode(_shard(3, 0)) + encode(_shard(4, 1)) + encode(_shard(4, 0))
    assert [u.version for u in _assembled(assembler, frames)] == [4]
    assert assembler.incomplete == 1
    # A shard's version waits for the others while they are behind, and is not dropped.
    frames = encode(_shard(5, 0)) + encode(_shard(6, 0)) + encode(_shard(5, 1))
    assert [u.version for u in _assembled(assembler, frames)] == [5]
    assert assembler.incomplete == 1


def test_the_directory_reader_starts_at_the_newest_whole_snapshot(tmp_path) -> None:
    writer = open_writer(f"dir://{tmp_path}")
    for update in (_shard(1, 0, "snapshot"), _shard(1, 1, "snapshot"), _shard(2, 0)):
        writer.write(update)
    writer.write(_shard(3, 0, "snapshot"))  # shard 1's part is not there yet
    reader = open_reader(f"dir://{tmp_path}")
    first = [decode_part(f).update for f in reader.read()]
    assert [(u.version, u.shard) for u in first] == [(1, 0), (1, 1)]
    assert reader.read() == []  # version 2 lacks shard 1
    writer.write(_shard(3, 1, "snapshot"))  # shard 1 died before 2: 2 never comes whole
    later = [decode_part(f).update for f in reader.read()]
    assert [(u.version, u.shard) for u in later] == [(3, 0), (3, 1)]
    assert writer.latest_version() == 3


@pytest.mark.kafka
def test_two_shards_share_a_topic(kafka_bootstrap, topic_name) -> None:
    url = f"kafka://{kafka_bootstrap}/{topic_name('sharded-params')}"
    writers = [open_writer(url), open_writer(url)]
    try:
        # Rank 0 is ahead: its snapshot 2 lands before rank 1's delta 1.
        for writer, update in (
            (writers[0], _shard(1, 0)),
            (writers[0], _shard(2, 0, "snapshot", rows=400)),
            (writers[1], _shard(1, 1)),
            (writers[1], _shard(2, 1, "snapshot", rows=400)),
            (writers[0], _shard(3, 0)),
        ):
            writer.max_part_bytes = 2000  # several parts per shard
            writer.write(update)
        reader = open_reader(url)
        assembler = UpdateAssembler()
        got: list[Update] = []
        for _ in range(20):
            got += _assembled(assembler, reader.read(timeout_s=0.5))
            if got:
                break
        assert [(u.kind, u.version) for u in got] == [("snapshot", 2)]
        assert len(got[0].slots["s"].fids) == 800
        writers[1].write(_shard(3, 1))
        later: list[Update] = []
        for _ in range(20):
            later += _assembled(assembler, reader.read(timeout_s=0.5))
            if later:
                break
        assert [u.version for u in later] == [3]
        reader.close()
    finally:
        for writer in writers:
            writer.close()
