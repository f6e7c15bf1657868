"""Parsing raw messages into batches, and dead letters for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headrace.schema import Reason, SchemaError, fid, validate_event
from headrace.stream import (
    EventParser,
    EventStream,
    ListDeadLetterSink,
    ParserConfig,
    ParseResult,
    Record,
)


def _record(offset: int, value: object) -> Record:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return Record("t:0", offset, raw)


def _event(i: int, **extra: object) -> dict:
    return {"ts": 1000.0 + i, "label": i % 2, "sparse": {"u": f"u{i}"}} | extra


BAD_INPUTS = [
    (b"{not json", Reason.NOT_JSON),
    (None, Reason.NOT_JSON),
    (b"x" * 300, Reason.TOO_LARGE),
    (b"[1, 2]", Reason.NOT_OBJECT),
    (b'{"ts": NaN, "label": 0, "sparse": {}}', Reason.NOT_JSON),  # NaN is not JSON
    ({"label": 0, "sparse": {}}, Reason.MISSING_TS),
    ({"ts": "now", "label": 0, "sparse": {}}, Reason.BAD_TS),
    ({"ts": 1, "sparse": {}}, Reason.MISSING_LABEL),
    ({"ts": 1, "label": 1.5, "sparse": {}}, Reason.BAD_LABEL),
    ({"ts": 1, "label": 1}, Reason.MISSING_SPARSE),
    ({"ts": 1, "label": 1, "sparse": {"u": [1.5]}}, Reason.BAD_SPARSE),
    ({"ts": 1, "label": 1, "sparse": {}, "dense": {"p": None}}, Reason.BAD_DENSE),
    ({"ts": 1, "label": 1, "sparse": {}, "request_id": ["r"]}, Reason.BAD_REQUEST_ID),
    ({"ts": 1, "label": 1, "sparse": {}, "weight": -0.5}, Reason.BAD_WEIGHT),
    ({"ts": 1, "label": 1, "sparse": {}, "sample_rate": 0}, Reason.BAD_SAMPLE_RATE),
    ({"ts": 1, "label": 1, "sparse": {}, "event_id": 3}, Reason.BAD_EVENT_ID),
]


#: Reasons of the joiner's inputs only (tests/joiner covers them).
JOINER_REASONS = {Reason.MISSING_JOIN_KEY, Reason.BAD_ACTION_TYPE, Reason.DUPLICATE_JOIN_KEY}


def test_every_reason_is_covered():
    assert {reason for _, reason in BAD_INPUTS} == set(Reason) - JOINER_REASONS


@pytest.mark.parametrize("raw, reason", BAD_INPUTS)
def test_bad_input_becomes_a_dead_letter_and_good_neighbours_survive(raw, reason):
    parser = EventParser(ParserConfig(max_message_bytes=200))
    records = [_record(0, _event(0)), _record(1, raw), _record(2, _event(2))]
    result = parser.parse(records, {"t:0": 3})
    assert len(result.batch) == 2
    assert result.batch.ts.tolist() == [1000.0, 1002.0]
    [letter] = result.dead_letters
    assert letter.reason is reason
    assert (letter.partition, letter.offset) == ("t:0", 1)
    assert letter.raw == (
        raw if isinstance(raw, bytes) else b"" if raw is None else json.dumps(raw).encode()
    )
    assert result.batch.positions == {"t:0": 3}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"ts": 1, "label": 1, "sparse": {}, "dense": {"p": 1' + b"0" * 320 + b"}}",
        b'{"ts": 1' + b"0" * 320 + b', "label": 1, "sparse": {}}',
    ],
)
def test_integers_beyond_float_range_are_dead_letters_not_crashes(raw):
    result = EventParser().parse([_record(0, raw), _record(1, _event(1))], {"t:0": 2})
    # The JSON decoders refuse integers beyond 64 bits.
    assert [letter.reason.value for letter in result.dead_letters] == ["not_json"]
    assert len(result.batch) == 1


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"ts": 1, "label": 1, "sparse": {}, "dense": {"p": 10**400}}, Reason.BAD_DENSE),
        ({"ts": 10**400, "label": 1, "sparse": {}}, Reason.BAD_TS),
    ],
)
def test_validation_refuses_integers_without_a_finite_float_value(event, reason):
    with pytest.raises(SchemaError) as caught:
        validate_event(event)
    assert caught.value.reason is reason


def test_columns_hold_fids_offsets_dense_labels_and_ids():
    events = [
        {"ts": 1, "label": 1, "sparse": {"u": "a", "tags": ["x", "y"]}, "dense": {"p": 2.0}},
        {"ts": 2, "label": 0.25, "sparse": {"u": 7}, "request_id": "r2", "weight": 2},
        {"ts": 3, "label": False, "sparse": {"tags": []}, "dense": {"q": -1, "p": 0.5}}
        | {"sample_rate": 0.25, "event_id": "e3"},
    ]
    batch = EventParser().parse([_record(i, e) for i, e in enumerate(events)], {}).batch
    assert len(batch) == 3
    assert batch.slots == ("tags", "u")
    assert batch.fids["u"].tolist() == [fid("u", "a"), fid("u", 7)]
    assert batch.offsets["u"].tolist() == [0, 1, 2, 2]
    assert batch.offsets["tags"].tolist() == [0, 2, 2, 2]
    assert batch.event_fids("tags", 0).tolist() == [fid("tags", "x"), fid("tags", "y")]
    assert batch.event_fids("u", 2).size == 0
    assert batch.event_fids("absent", 0).size == 0
    assert batch.dense_names == ("p", "q")
    np.testing.assert_array_equal(batch.dense, [[2.0, 0.0], [0.0, 0.0], [0.5, -1.0]])
    np.testing.assert_array_equal(batch.labels, [1.0, 0.25, 0.0])
    assert batch.fids["u"].dtype == np.int64 and batch.dense.dtype == np.float32
    assert batch.request_ids == (None, "r2", None)
    np.testing.assert_array_equal(batch.weights, [1.0, 2.0, 1.0])
    np.testing.assert_array_equal(batch.sample_rates, [1.0, 1.0, 0.25])
    assert batch.event_ids == (None, None, "e3")
    kept = batch.select(np.array([False, True, True]))
    assert kept.event_ids == (None, "e3") and kept.ts.tolist() == [2.0, 3.0]
    assert kept.fids["u"].tolist() == [fid("u", 7)]
    assert kept.offsets["u"].tolist() == [0, 1, 1]
    assert kept.offsets["tags"].tolist() == [0, 0, 0]
    assert kept.event_fids("u", 0).tolist() == [fid("u", 7)]


def test_fixed_dense_names_order_columns_and_drop_others():
    parser = EventParser(ParserConfig(dense_names=("q", "p")))
    batch = parser.parse([_record(0, _event(0, dense={"p": 1, "z": 9}))], {}).batch
    assert batch.dense_names == ("q", "p")
    assert batch.dense.tolist() == [[0.0, 1.0]]


def test_unlabelled_events_parse_for_prediction():
    parser = EventParser(ParserConfig(require_label=False))
    batch = parser.parse([_record(0, {"ts": 5, "sparse": {"u": "a"}})], {}).batch
    assert np.isnan(batch.labels[0])


def test_empty_chunk_gives_an_empty_batch_with_positions():
    batch = EventParser().parse([], {"t:0": 9}).batch
    assert len(batch) == 0 and batch.positions == {"t:0": 9} and batch.dense.shape == (0, 0)


class _ListSource:
    exhausted = False

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.next = 0

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        chunk = self.records[self.next : self.next + max_records]
        self.next += len(chunk)
        self.exhausted = self.next >= len(self.records)
        return chunk

    def positions(self) -> dict[str, int]:
        return {"t:0": self.next}

    def seek(self, positions: dict[str, int]) -> None:
        self.next = positions["t:0"]

    def close(self) -> None:
        pass


def test_stream_counts_dead_letters_per_reason_and_delivers_the_rest():
    records = [_record(i, _event(i)) for i in range(10)]
    records[3] = _record(3, b"garbage")
    records[7] = _record(7, {"ts": 1, "label": 3, "sparse": {}})
    records[8] = _record(8, b"more garbage")
    sink = ListDeadLetterSink()
    stream = EventStream(_ListSource(records), sink)
    batches = [stream.next_batch(max_events=4) for _ in range(3)]
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [b.positions["t:0"] for b in batches] == [4, 8, 10]
    assert stream.dead_letter_counts == {"not_json": 2, "bad_label": 1}
    assert sink.counts == stream.dead_letter_counts
    assert [letter.offset for letter in sink.letters] == [3, 7, 8]
    assert stream.records_read == 10 and stream.events_ingested == 7


def test_events_the_fast_path_turns_down_are_parsed_in_place_by_the_full_check():
    # A null dense and a uint64 sparse value are valid, but only the full check takes them.
    events = [
        _event(0),
        _event(1, dense=None),
        _event(2, sparse={"u": 2**64 - 1}),
        _event(3, label=True),
    ]
    batch = EventParser().parse([_record(i, e) for i, e in enumerate(events)], {}).batch
    assert batch.ts.tolist() == [1000.0, 1001.0, 1002.0, 1003.0]
    assert batch.fids["u"].tolist() == [
        fid("u", "u0"),
        fid("u", "u1"),
        fid("u", 2**64 - 1),
        fid("u", "u3"),
    ]
    assert batch.labels.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_slot_order_within_events_does_not_change_the_columns():
    # Events whose slots all come in one order take a faster path than mixed orders.
    events = [{"ts": i, "label": 0, "sparse": {"a": f"a{i}", "b": [i, i + 1]}} for i in range(4)]
    same = EventParser().parse([_record(i, e) for i, e in enumerate(events)], {}).batch
    for event in events[::2]:
        event["sparse"] = dict(reversed(event["sparse"].items()))
    mixed = EventParser().parse([_record(i, e) for i, e in enumerate(events)], {}).batch
    assert same.slots == mixed.slots == ("a", "b")
    for slot in ("a", "b"):
        assert same.fids[slot].tolist() == mixed.fids[slot].tolist()
        assert same.offsets[slot].tolist() == mixed.offsets[slot].tolist()
    assert same.fids["b"].tolist() == [fid("b", v) for i in range(4) for v in (i, i + 1)]
    assert same.offsets["b"].tolist() == [0, 2, 4, 6, 8]


def test_concatenated_results_are_the_parse_of_all_their_records():
    # Slots and dense names that only some parts have, weights, ids and a bad record.
    events = [
        {"ts": 1.0, "label": 1, "sparse": {"u": "a"}, "dense": {"x": 1.5}},
        {"ts": 2.0, "label": 0, "sparse": {"u": "b", "tags": ["t1", "t2"]}, "weight": 0.5},
        {"ts": 3.0, "label": 1, "sparse": {"tags": []}, "dense": {"y": 2.0}, "event_id": "e3"},
        {"ts": 4.0, "label": 0, "sparse": {"v": 7}, "request_id": "r4", "sample_rate": 0.5},
    ]
    records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(events)]
    records.insert(2, Record("p", 9, b"not json"))
    parser = EventParser()
    whole = parser.parse(records, {"p": 10})
    for cut in range(len(records) + 1):
        parts = [parser.parse(records[:cut], {}), parser.parse(records[cut:], {})]
        joined = ParseResult.concat(parts, {"p": 10})
        assert joined.kept.tolist() == whole.kept.tolist()
        assert joined.dead_letters == whole.dead_letters
        a, b = joined.batch, whole.batch
        assert a.positions == b.positions and a.dense_names == b.dense_names
        assert sorted(a.fids) == sorted(b.fids)
        for slot in b.fids:
            assert a.fids[slot].tolist() == b.fids[slot].tolist()
            assert a.offsets[slot].tolist() == b.offsets[slot].tolist()
        for column in ("dense", "labels", "ts", "weights", "sample_rates"):
            assert getattr(a, column).tolist() == getattr(b, column).tolist(), column
        assert (a.request_ids, a.event_ids) == (b.request_ids, b.event_ids)
