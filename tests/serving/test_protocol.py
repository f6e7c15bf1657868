"""The update wire format: round trips, parts, damage."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.serving.protocol import (
    CorruptUpdate,
    SlotRows,
    Update,
    UpdateAssembler,
    decode_part,
    encode,
)


def _update(n_rows: int, kind="delta", version=3, dense=b"dense-blob", dims=(4, 2)) -> Update:
    rng = np.random.default_rng(n_rows)
    slots = {}
    for i, dim in enumerate(dims):
        slots[f"s{i}"] = SlotRows(
            rng.integers(-(2**63), 2**63 - 1, size=n_rows, dtype=np.int64),
            rng.normal(size=(n_rows, dim)).astype(np.float32),
            np.arange(n_rows // 3, dtype=np.int64),
        )
    meta = {"model": "deepfm"} if kind == "snapshot" else None
    return Update(kind, version, 1700000000.5, 12.0, slots, dense, meta)


def _assemble(frames: list[bytes]) -> Update:
    assembler = UpdateAssembler()
    results = [assembler.add(decode_part(f)) for f in frames]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None
    return results[-1]


def _assert_equal(a: Update, b: Update) -> None:
    assert (a.kind, a.version, a.event_time, a.published_at, a.dense, a.meta) == (
        b.kind,
        b.version,
        b.event_time,
        b.published_at,
        b.dense,
        b.meta,
    )
    assert a.slots.keys() == b.slots.keys()
    for name in a.slots:
        np.testing.assert_array_equal(a.slots[name].fids, b.slots[name].fids)
        np.testing.assert_array_equal(a.slots[name].vectors, b.slots[name].vectors)
        np.testing.assert_array_equal(a.slots[name].removed, b.slots[name].removed)


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(0, 3000),
    max_part=st.sampled_from([100, 4096, 1 << 20]),
    kind=st.sampled_from(["delta", "snapshot"]),
)
def test_parts_reassemble_to_the_same_update(n_rows, max_part, kind):
    update = _update(n_rows, kind=kind)
    frames = encode(update, max_part_bytes=max_part)
    assert all(len(f) <= max_part + 512 + len(update.dense) for f in frames)
    _assert_equal(_assemble(frames), update)


def test_a_large_update_is_split_below_the_limit():
    frames = encode(_update(50_000, dims=(16, 16)), max_part_bytes=900_000)
    assert len(frames) > 5
    assert max(map(len, frames)) < 1_000_000


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: f[: len(f) // 2], "checksum"),
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "checksum"),
        (lambda f: f[:100] + bytes([f[100] ^ 0xFF]) + f[101:], "checksum"),
        (lambda f: b"XXXX" + f[4:], "bad_magic"),
        (lambda f: b"", "bad_magic"),
    ],
)
def test_damaged_frames_are_refused(damage, reason):
    (frame,) = encode(_update(100))
    with pytest.raises(CorruptUpdate) as caught:
        decode_part(damage(frame))
    assert caught.value.reason == reason


def test_a_version_missing_parts_is_dropped_and_the_next_one_assembles():
    first = encode(_update(2000, version=4), max_part_bytes=8192)
    second = encode(_update(10, version=5))
    assembler = UpdateAssembler()
    assert assembler.add(decode_part(first[0])) is None
    assert assembler.add(decode_part(second[0])).version == 5
    assert assembler.incomplete == 1
    with pytest.raises(CorruptUpdate, match="part 1 of version 4 arrived out of order"):
        assembler.add(decode_part(first[1]))
    _assert_equal(_assemble(first), _update(2000, version=4))
