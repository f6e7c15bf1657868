"""The event schema and the stable feature ids."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.schema import FidHasher, Reason, SchemaError, event_decoder, fid, validate_event

GOOD = {
    "ts": 1700000000.5,
    "label": 1,
    "sparse": {"user_id": "u42", "item_id": 981, "tags": ["a", "b"]},
    "dense": {"price": 3.5},
    "request_id": "r-1",
}


def test_good_event_passes_with_its_fields():
    event = validate_event(GOOD)
    assert event.ts == 1700000000.5
    assert event.label == 1.0
    assert event.sparse["tags"] == ["a", "b"]
    assert event.dense == {"price": 3.5}
    assert event.request_id == "r-1"


@pytest.mark.parametrize(
    "label, expected", [(0, 0.0), (1, 1.0), (True, 1.0), (False, 0.0), (0.25, 0.25)]
)
def test_label_forms(label, expected):
    assert validate_event(GOOD | {"label": label}).label == expected


def test_label_may_be_absent_when_not_required():
    event = validate_event({"ts": 1, "sparse": {}}, require_label=False)
    assert math.isnan(event.label)


BAD = [
    ([1, 2], Reason.NOT_OBJECT),
    ({"label": 1, "sparse": {}}, Reason.MISSING_TS),
    (GOOD | {"ts": "yesterday"}, Reason.BAD_TS),
    (GOOD | {"ts": True}, Reason.BAD_TS),
    (GOOD | {"ts": math.inf}, Reason.BAD_TS),
    ({"ts": 1, "sparse": {}}, Reason.MISSING_LABEL),
    (GOOD | {"label": 2}, Reason.BAD_LABEL),
    (GOOD | {"label": -0.1}, Reason.BAD_LABEL),
    (GOOD | {"label": "1"}, Reason.BAD_LABEL),
    (GOOD | {"label": math.nan}, Reason.BAD_LABEL),
    ({"ts": 1, "label": 0}, Reason.MISSING_SPARSE),
    (GOOD | {"sparse": ["u1"]}, Reason.BAD_SPARSE),
    (GOOD | {"sparse": {"u": 1.5}}, Reason.BAD_SPARSE),
    (GOOD | {"sparse": {"u": ["a", None]}}, Reason.BAD_SPARSE),
    (GOOD | {"sparse": {"u": {"nested": 1}}}, Reason.BAD_SPARSE),
    (GOOD | {"dense": {"price": math.nan}}, Reason.BAD_DENSE),
    (GOOD | {"dense": {"price": "3"}}, Reason.BAD_DENSE),
    (GOOD | {"dense": [3.5]}, Reason.BAD_DENSE),
    (GOOD | {"request_id": 7}, Reason.BAD_REQUEST_ID),
    (GOOD | {"weight": -1}, Reason.BAD_WEIGHT),
    (GOOD | {"weight": math.inf}, Reason.BAD_WEIGHT),
    (GOOD | {"weight": "2"}, Reason.BAD_WEIGHT),
    (GOOD | {"weight": True}, Reason.BAD_WEIGHT),
    (GOOD | {"sample_rate": 0}, Reason.BAD_SAMPLE_RATE),
    (GOOD | {"sample_rate": 1.5}, Reason.BAD_SAMPLE_RATE),
    (GOOD | {"event_id": 12}, Reason.BAD_EVENT_ID),
]


def test_weight_sample_rate_and_event_id_default_and_pass_through():
    plain = validate_event(GOOD)
    assert (plain.weight, plain.sample_rate, plain.event_id) == (1.0, 1.0, None)
    given = validate_event(GOOD | {"weight": 0, "sample_rate": 0.1, "event_id": "e1"})
    assert (given.weight, given.sample_rate, given.event_id) == (0.0, 0.1, "e1")


@pytest.mark.parametrize("event, reason", BAD)
def test_each_broken_rule_has_its_reason(event, reason):
    with pytest.raises(SchemaError) as caught:
        validate_event(event)
    assert caught.value.reason is reason
    assert caught.value.detail


def test_fid_is_signed_64_bit_and_distinguishes_slots():
    value = fid("user_id", "u42")
    assert -(2**63) <= value < 2**63
    assert fid("user_id", "u42") != fid("item_id", "u42")
    assert fid("ab", "c") != fid("a", "bc")


def test_int_and_decimal_string_are_one_feature():
    assert fid("item_id", 981) == fid("item_id", "981")


def test_fids_are_the_same_in_another_process():
    # PYTHONHASHSEED differs per process; a fid must not.
    pairs = [("user_id", "u42"), ("item_id", 981), ("tags", "ünïcode")]
    code = f"from headrace.schema import fid; print([fid(s, v) for s, v in {pairs!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout
    assert out.strip() == str([fid(s, v) for s, v in pairs])


def test_known_fid_value_pins_the_hash():
    # Changing the hash would orphan every stored embedding: this must never move.
    assert fid("a", "b") == int.from_bytes(
        __import__("hashlib").blake2b(b"\x01\x00\x00\x00ab", digest_size=8).digest(),
        "little",
        signed=True,
    )


@given(
    slot=st.text(min_size=1, max_size=8),
    values=st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=30),
)
def test_cached_hasher_equals_fid(slot, values):
    hasher = FidHasher(max_entries=4)  # tiny, so the cache empties and refills
    assert hasher.many(slot, values) == [fid(slot, v) for v in values]
    assert all(hasher(slot, v) == fid(slot, v) for v in values)
    twice = FidHasher(max_entries=4)  # the array path: first all misses, then some hits
    for _ in range(2):
        assert twice.array(slot, values).tolist() == [fid(slot, v) for v in values]


# JSON values near every edge the two checks must agree on: bools that are not
# numbers, ints past int64 and uint64, floats that overflow, nulls, nesting.
_EDGE_NUMBERS = st.sampled_from(
    [
        0,
        1,
        -1,
        2,
        0.5,
        1.5,
        -0.0,
        1e308,
        1e309,
        -1e309,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63) - 1,
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _EDGE_NUMBERS,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=6,
)
_SPARSE_VALUES = st.one_of(
    st.text(max_size=3),
    st.integers(),
    _EDGE_NUMBERS,
    st.lists(st.text(max_size=2) | st.integers(), max_size=3),
)
# Each field is mostly valid, so that many events pass the fast path and
# their values are compared, and otherwise broken in one of many ways.
_EVENTS = st.fixed_dictionaries(
    {
        "ts": st.one_of(_EDGE_NUMBERS, st.floats(allow_nan=False), _VALUES),
        "sparse": st.dictionaries(
            st.sampled_from(["u", "i", "t"]),
            st.one_of(_SPARSE_VALUES, _SPARSE_VALUES, _SPARSE_VALUES, _VALUES),
            max_size=3,
        ),
    },
    optional={
        "label": st.one_of(st.sampled_from([0, 1, True, False, 0.25]), _VALUES),
        "dense": st.dictionaries(
            st.sampled_from(["p", "q"]), st.one_of(_EDGE_NUMBERS, _EDGE_NUMBERS, _VALUES)
        )
        | _VALUES,
        "request_id": st.one_of(st.text(max_size=3), _VALUES),
        "weight": st.one_of(_EDGE_NUMBERS, _VALUES),
        "sample_rate": st.one_of(_EDGE_NUMBERS, st.floats(0, 1), _VALUES),
        "event_id": st.one_of(st.text(max_size=3), _VALUES),
        "extra": _VALUES,
    },
)
_DECODERS = {required: event_decoder(require_label=required) for required in (True, False)}


@settings(max_examples=300)
@given(event=_EVENTS, require_label=st.booleans())
def test_fast_path_accepts_only_what_the_full_check_accepts_with_the_same_values(
    event, require_label
):
    raw = json.dumps(event).encode()  # json, unlike orjson, writes ints past 64 bits and 1e309
    try:
        fast = _DECODERS[require_label](raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return  # the full check decides; test_stream_parse covers that it does
    full = validate_event(orjson.loads(raw), require_label=require_label)
    assert fast.ts == full.ts
    assert float(fast.label) == full.label or (math.isnan(full.label) and math.isnan(fast.label))
    assert fast.sparse == full.sparse
    assert fast.dense == full.dense
    assert fast.request_id == full.request_id
    assert (fast.weight, fast.sample_rate, fast.event_id) == (
        full.weight,
        full.sample_rate,
        full.event_id,
    )


def test_fast_path_turns_down_valid_events_it_cannot_type():
    # Not errors: the parser sends these to the full check, which accepts them.
    decode = event_decoder()
    for event in [
        GOOD | {"dense": None},
        GOOD | {"sparse": {"u": 2**64 - 1}},
    ]:
        raw = json.dumps(event).encode()
        with pytest.raises(msgspec.DecodeError):
            decode(raw)
        assert validate_event(orjson.loads(raw)).sparse == event["sparse"]
