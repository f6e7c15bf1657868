"""The join logic in memory: windows in event time, early and late actions, modes, sampling."""

from __future__ import annotations

import json

import pytest

from headrace.joiner import ImpressionReader, JoinConfig, JoinCore, keep_negative, read_action
from headrace.schema import Reason, SchemaError

W = 100.0


def imp(ts: float, rid: str, item: int | None = None, **extra: object) -> bytes:
    sparse: dict[str, object] = {"user_id": "u1"}
    if item is not None:
        sparse["item_id"] = item
    return json.dumps({"ts": ts, "sparse": sparse, "request_id": rid, **extra}).encode()


def act(ts: float, rid: str, item: int | None = None, kind: str = "click") -> bytes:
    action: dict[str, object] = {"ts": ts, "request_id": rid, "type": kind}
    if item is not None:
        action["item_id"] = item
    return json.dumps(action).encode()


class Driver:
    """Feeds a core like the runner does, and collects what it emits."""

    def __init__(self, **settings: object) -> None:
        self.config = JoinConfig(window_s=W, **settings)
        self.core = JoinCore(self.config)
        self.read = ImpressionReader(self.config.item_key)
        self.events: list[dict] = []
        self.late: list[tuple[str, dict]] = []

    def imp(self, raw: bytes) -> Driver:
        self.core.impression(self.read(raw))
        return self

    def act(self, raw: bytes) -> Driver:
        self.core.action(read_action(raw, self.config.item_key, 1 << 20), raw)
        return self

    def advance(self, watermark: float) -> Driver:
        self.core.advance(watermark)
        emitted, late = self.core.take_output()
        self.events += [json.loads(e.value) for e in emitted]
        self.late += [(entry.reason, json.loads(entry.raw)) for entry in late]
        return self

    def labels(self) -> dict[str, int]:
        return {e["event_id"]: e["label"] for e in self.events}


def test_wait_mode_labels_at_window_close_in_order():
    d = Driver().imp(imp(0, "a")).imp(imp(10, "b")).act(act(50, "a")).advance(W - 1)
    assert d.events == []  # no window has closed yet
    d.advance(W + 10)
    assert d.labels() == {"a#w": 1, "b#w": 0}
    assert d.events[0]["sparse"] == {"user_id": "u1"} and "weight" not in d.events[0]
    assert d.core.pending == 0 and d.core.counters["closed"] == 2


def test_out_of_order_impressions_join_as_in_order():
    d = Driver().imp(imp(20, "late-imp")).imp(imp(5, "early-imp"))
    d.act(act(30, "early-imp")).advance(W + 20)
    assert d.labels() == {"late-imp#w": 0, "early-imp#w": 1}


def test_action_before_its_impression_waits_in_the_buffer():
    d = Driver().act(act(30, "a"))
    assert d.core.early == 1
    d.imp(imp(10, "a")).advance(W + 10)
    assert d.labels() == {"a#w": 1} and d.core.early == 0


def test_action_after_the_window_is_late_and_kept():
    d = Driver().imp(imp(0, "a")).act(act(W + 1, "a")).advance(W)
    assert d.labels() == {"a#w": 0}
    assert d.late == [("after_window", {"ts": W + 1, "request_id": "a", "type": "click"})]
    assert d.core.counters["late_after_window"] == 1


def test_action_whose_impression_never_comes_is_late_once_the_watermark_passes_it():
    d = Driver().act(act(30, "ghost")).advance(29)
    assert d.late == [] and d.core.early == 1
    d.advance(31)
    assert [reason for reason, _ in d.late] == ["no_impression"] and d.core.early == 0


def test_full_early_buffer_sends_its_oldest_action_to_late():
    d = Driver(max_early_actions=2).act(act(3, "c")).act(act(1, "a")).act(act(2, "b"))
    d.advance(0)
    assert d.late == [("buffer_full", {"ts": 1, "request_id": "a", "type": "click"})]


def test_duplicate_actions_count_once():
    d = Driver().imp(imp(0, "a")).act(act(5, "a")).act(act(6, "a")).advance(W)
    assert d.labels() == {"a#w": 1} and d.core.counters["duplicate_actions"] == 1
    early = Driver().act(act(5, "b")).act(act(5, "b")).imp(imp(0, "b")).advance(W)
    assert early.labels() == {"b#w": 1} and early.core.counters["duplicate_actions"] == 1


def test_several_items_per_request_join_by_item():
    d = Driver(item_key="item_id").imp(imp(0, "r", 1)).imp(imp(0, "r", 2)).imp(imp(0, "r", 3))
    d.act(act(9, "r", 2)).advance(W)
    assert d.labels() == {"r\x1f1#w": 0, "r\x1f2#w": 1, "r\x1f3#w": 0}


def test_only_the_positive_types_count():
    d = Driver(positive_types=("purchase",)).imp(imp(0, "a")).act(act(1, "a", kind="click"))
    d.advance(W)
    assert d.labels() == {"a#w": 0} and d.core.counters["ignored_actions"] == 1


def test_fake_negative_mode_emits_at_once_then_a_weighted_positive():
    d = Driver(mode="fake-negative", fake_negative_wait_s=0)
    d.imp(imp(0, "a")).imp(imp(0, "b")).advance(-1)
    assert d.labels() == {"a#n": 0, "b#n": 0}
    d.act(act(40, "a")).advance(-1)
    positive = d.events[-1]
    assert (positive["event_id"], positive["label"]) == ("a#p", 1)
    assert positive["weight"] >= 1.0
    d.act(act(41, "a")).advance(W + 50)  # a duplicate action, then both windows close
    assert len(d.events) == 3 and d.core.pending == 0


def test_fake_negative_wait_labels_the_first_copy_with_what_came_in_it():
    d = Driver(mode="fake-negative", fake_negative_wait_s=60)
    d.imp(imp(0, "quick")).imp(imp(0, "slow")).imp(imp(0, "never")).act(act(30, "quick"))
    d.advance(59)
    assert d.events == []  # nothing goes out before the wait
    d.advance(60)
    assert d.labels() == {"quick#p": 1, "slow#n": 0, "never#n": 0}
    # Weight (1 - first-copy positive rate) / (1 - positive rate): 1 before any positive.
    assert next(e for e in d.events if e["event_id"] == "quick#p")["weight"] == 1.0
    # A restart keeps which first copies are out.
    state = {k: v for k, v in d.core.take_changes().items() if v}
    d.core = JoinCore(d.config, state, dict(d.core.counters))
    d.act(act(80, "slow")).act(act(90, "quick")).advance(W + 10)
    assert d.labels() == {"quick#p": 1, "slow#n": 0, "never#n": 0, "slow#p": 1}
    # Before it: one positive of three impressions, caught in the wait: (1 - 1/3) / (1 - 1/3).
    assert d.events[-1]["weight"] == 1.0
    assert d.core.counters["duplicate_actions"] == 1 and d.core.pending == 0


def test_fake_negative_mode_waits_a_quarter_window_by_default():
    d = Driver(mode="fake-negative")
    assert d.config.first_copy_wait_s == W / 4
    d.imp(imp(0, "quick")).imp(imp(0, "slow")).act(act(W / 5, "quick")).advance(W / 4 - 1)
    assert d.events == []
    d.advance(W / 4)
    assert d.labels() == {"quick#p": 1, "slow#n": 0}
    assert Driver().config.first_copy_wait_s == 0  # wait mode has none


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fake_negative_wait_s": 10}, "mode 'fake-negative'"),
        ({"mode": "fake-negative", "fake_negative_wait_s": W}, "below window_s"),
    ],
)
def test_fake_negative_wait_is_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        JoinConfig(window_s=W, **settings)


def test_negative_downsampling_is_deterministic_and_marks_the_rate():
    keys = [f"r{i}" for i in range(4000)]
    kept = [k for k in keys if keep_negative(7, k, 0.1)]
    assert 300 < len(kept) < 500
    assert kept == [k for k in keys if keep_negative(7, k, 0.1)]
    d = Driver(negative_rate=0.1, seed=7)
    for k in keys[:200]:
        d.imp(imp(0, k))
    d.act(act(1, "r0")).advance(W)
    negatives = [e for e in d.events if e["label"] == 0]
    assert {e["request_id"] for e in negatives} == set(kept[:200]) & set(keys[1:200])
    assert all(e["sample_rate"] == 0.1 for e in d.events)
    assert any(e["label"] == 1 and e["request_id"] == "r0" for e in d.events)


def test_an_impression_with_joiner_fields_loses_them():
    d = Driver().imp(imp(0, "a", label=1, weight=3, event_id="x")).advance(W)
    [event] = d.events
    assert (event["label"], event["event_id"], "weight" in event) == (0, "a#w", False)


def test_state_changes_restore_the_same_join():
    d = Driver().imp(imp(0, "a")).act(act(30, "b")).act(act(10, "a"))
    restored = JoinCore(d.config, {k: v for k, v in d.core.take_changes().items() if v})
    assert (restored.pending, restored.early) == (1, 1)
    restored.advance(W)
    [event] = restored.take_output()[0]
    assert json.loads(event.value)["label"] == 1


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"not json", Reason.NOT_JSON),
        (b'{"ts": 1, "sparse": {}}', Reason.MISSING_JOIN_KEY),
        (b'{"ts": "x", "sparse": {}, "request_id": "a"}', Reason.BAD_TS),
        (b'{"ts": 1, "request_id": "a"}', Reason.MISSING_SPARSE),
    ],
)
def test_bad_impressions_name_their_reason(raw, reason):
    with pytest.raises(SchemaError) as caught:
        ImpressionReader()(raw)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"[1]", Reason.NOT_OBJECT),
        (b'{"request_id": "a", "type": "click"}', Reason.MISSING_TS),
        (b'{"ts": true, "request_id": "a", "type": "click"}', Reason.BAD_TS),
        (b'{"ts": 1, "type": "click"}', Reason.MISSING_JOIN_KEY),
        (b'{"ts": 1, "request_id": "a", "type": 3}', Reason.BAD_ACTION_TYPE),
    ],
)
def test_bad_actions_name_their_reason(raw, reason):
    with pytest.raises(SchemaError) as caught:
        read_action(raw, None, 1 << 20)
    assert caught.value.reason is reason


def test_an_action_without_its_item_key_is_refused_when_one_is_configured():
    with pytest.raises(SchemaError) as caught:
        read_action(act(1, "a"), "item_id", 1 << 20)
    assert caught.value.reason is Reason.MISSING_JOIN_KEY


def test_deadlines_from_interleaved_partitions_are_taken_in_time_order():
    from headrace.joiner.core import _Deadlines

    deadlines = _Deadlines()
    # Two partitions read in turn: each chunk holds two runs, the second
    # chunk starts before the first one's newest deadline.
    deadlines.push_many([(float(t), f"a{t}") for t in (10, 12, 14, 1, 3, 5)])
    deadlines.push_many([(float(t), f"b{t}") for t in (11, 13, 15, 2, 4, 6)])
    deadlines.push(0.5, "late")
    assert deadlines.earliest() == 0.5
    expected = ["late", "a1", "b2", "a3", "b4", "a5", "b6", "a10", "b11", "a12"]
    assert deadlines.take_until(12) == expected
    assert deadlines.take_until(100) == ["b13", "a14", "b15"]
