"""The joiner against a real broker: every join case, dead letters, several processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from headrace.joiner import EndpointError, JoinConfig, Joiner, open_inputs, open_sink
from headrace.stream import KafkaSink, ListDeadLetterSink, ensure_topic

pytestmark = pytest.mark.kafka

W = 100.0


def _imp(ts: float, rid: str, item: int) -> bytes:
    event = {"ts": ts, "sparse": {"user_id": "u", "item_id": item}, "request_id": rid}
    return json.dumps(event).encode()


def _act(ts: float, rid: str, item: int) -> bytes:
    return json.dumps({"ts": ts, "request_id": rid, "type": "click", "item_id": item}).encode()


def _produce(bootstrap: str, topic: str, messages: list[bytes], partitions: int) -> None:
    ensure_topic(bootstrap, topic, partitions)
    sink = KafkaSink(bootstrap, topic)
    for raw in messages:
        # Keyed by request id, as producers of the joiner's inputs must be.
        try:
            key = json.loads(raw)["request_id"].encode()
        except (ValueError, KeyError, TypeError):
            key = b"bad"
        sink.send(raw, key=key)
    sink.close()


def _consume(bootstrap: str, topic: str) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)
    events: list[dict] = []
    for _ in range(50):
        for messages in consumer.poll(timeout_ms=500).values():
            events += [json.loads(m.value) for m in messages]
        if all(consumer.position(tp) >= ends[tp] for tp in partitions):
            break
    consumer.close()
    return events


def _join(bootstrap, topics, tmp_path: Path, *, rank=0, ranks=1, **settings) -> tuple:
    imps, acts = open_inputs(
        f"kafka://{bootstrap}/{topics[0]}", f"kafka://{bootstrap}/{topics[1]}", rank, ranks
    )
    out = open_sink(f"kafka://{bootstrap}/{topics[2]}", "--out", 2)
    late = open_sink(f"file://{tmp_path}/late-{rank}.jsonl", "--late-out")
    letters = {"impressions": ListDeadLetterSink(), "actions": ListDeadLetterSink()}
    config = JoinConfig(window_s=W, allowed_lateness_s=0, item_key="item_id", **settings)
    with Joiner(
        config,
        tmp_path / f"join-{rank}",
        imps,
        acts,
        out,
        late,
        letters,
        identity={"rank": rank, "ranks": ranks},
    ) as joiner:
        summary = joiner.run(until_end=True)
    return summary, letters


def test_every_join_case_and_bad_records_through_a_real_broker(
    kafka_bootstrap, topic_name, tmp_path
):
    topics = [topic_name("imps"), topic_name("acts"), topic_name("events")]
    impressions = [
        _imp(0, "a", 1),
        b"not json",
        _imp(20, "c", 1),
        _imp(10, "b", 1),  # out of order
        _imp(30, "r", 1),  # one request, two items
        _imp(30, "r", 2),
        json.dumps({"ts": 35, "sparse": {"item_id": 1}}).encode(),  # no request_id
        _imp(40, "e", 1),  # its action comes first
        _imp(0, "a", 1),  # the same join key again
    ]
    actions = [
        _act(38, "e", 1),
        _act(50, "a", 1),
        _act(55, "a", 1),  # a duplicate
        _act(35, "r", 2),
        b'{"ts": 60, "request_id": "b"}',  # no type
        _act(60, "ghost", 1),  # no impression ever
        _act(200, "c", 1),  # after c's window
    ]
    _produce(kafka_bootstrap, topics[0], impressions, 2)
    _produce(kafka_bootstrap, topics[1], actions, 2)
    summary, letters = _join(kafka_bootstrap, topics, tmp_path)

    events = _consume(kafka_bootstrap, topics[2])
    labels = {(e["request_id"], e["sparse"]["item_id"]): e["label"] for e in events}
    assert labels == {
        ("a", 1): 1,
        ("b", 1): 0,
        ("c", 1): 0,
        ("r", 1): 0,
        ("r", 2): 1,
        ("e", 1): 1,
    }
    assert len(events) == 6 and len({e["event_id"] for e in events}) == 6
    assert letters["impressions"].counts == {
        "not_json": 1,
        "missing_join_key": 1,
        "duplicate_join_key": 1,
    }
    assert letters["actions"].counts == {"bad_action_type": 1}
    c = summary.counters
    assert (c["late_after_window"], c["late_no_impression"], c["duplicate_actions"]) == (1, 1, 1)
    late = [json.loads(line) for line in (tmp_path / "late-0.jsonl").read_text().splitlines()]
    assert sorted(a["request_id"] for a in late) == ["c", "ghost"]


def test_two_joiners_split_the_partitions_and_emit_each_impression_once(
    kafka_bootstrap, topic_name, tmp_path
):
    topics = [topic_name("imps"), topic_name("acts"), topic_name("events")]
    rids = [f"q{i}" for i in range(200)]
    _produce(kafka_bootstrap, topics[0], [_imp(i, rid, 1) for i, rid in enumerate(rids)], 4)
    converted = rids[::3]
    _produce(kafka_bootstrap, topics[1], [_act(rids.index(r) + 5, r, 1) for r in converted], 4)
    summaries = [_join(kafka_bootstrap, topics, tmp_path, rank=r, ranks=2)[0] for r in (0, 1)]
    assert all(s.counters["impressions"] > 0 for s in summaries)
    events = _consume(kafka_bootstrap, topics[2])
    assert sorted(e["request_id"] for e in events) == sorted(rids)
    assert {e["request_id"] for e in events if e["label"] == 1} == set(converted)


def test_topics_with_unequal_partitions_are_refused_at_start(kafka_bootstrap, topic_name):
    imps, acts = topic_name("imps"), topic_name("acts")
    ensure_topic(kafka_bootstrap, imps, 2)
    ensure_topic(kafka_bootstrap, acts, 3)
    with pytest.raises(EndpointError, match="as many partitions"):
        open_inputs(f"kafka://{kafka_bootstrap}/{imps}", f"kafka://{kafka_bootstrap}/{acts}")
