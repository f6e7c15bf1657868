"""The trainer on a Kafka topic with several partitions, written before the run."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from headrace.cli import app
from headrace.stream import (
    CtrGenerator,
    KafkaSink,
    SyntheticConfig,
    ensure_topic,
    read_dead_letters,
)
from headrace.tansu import free_port
from tests.trainer.conftest import (
    SMALL_CONFIG,
    assert_bit_identical,
    headrace_command,
    run_cli,
    saved_training,
)
from tests.trainer.killing import train_with_kills

pytestmark = pytest.mark.kafka

# Enough events that training takes seconds: the kills must land mid-run.
# A bad message every 100 events: every kill lands a few letters past the
# last checkpoint, so a restart that wrote them again would be seen.
EVENTS, PARTITIONS, BAD = 12_000, 3, 120
BAD_MESSAGES = (b"not json", b'{"ts": 1, "label": 7, "sparse": {}}')


class EventsTopic(NamedTuple):
    url: str
    dlq: str
    bootstrap: str
    #: (source partition key, offset) -> the bad message there.
    bad: dict[tuple[str, int], bytes]


@pytest.fixture
def events_topic(kafka_bootstrap, topic_name) -> EventsTopic:
    """A topic of EVENTS good and BAD bad messages (two reasons) over PARTITIONS partitions."""
    topic = topic_name("train")
    ensure_topic(kafka_bootstrap, topic, PARTITIONS)
    sink = KafkaSink(kafka_bootstrap, topic)
    sent = [0] * PARTITIONS
    bad = {}
    for i, event in enumerate(CtrGenerator(SyntheticConfig(seed=9)).generate(0, EVENTS).events):
        p = i % PARTITIONS
        if i % (EVENTS // BAD) == 0:
            bad[(f"{topic}:{p}", sent[p])] = BAD_MESSAGES[len(bad) % 2]
            sink.send(bad[(f"{topic}:{p}", sent[p])], partition=p)
            sent[p] += 1
        sink.send(json.dumps(event).encode(), partition=p)
        sent[p] += 1
    sink.close()
    url = f"kafka://{kafka_bootstrap}/{topic}"
    return EventsTopic(url, f"{topic}.dlq", kafka_bootstrap, bad)


def dlq_positions(topic: EventsTopic) -> Counter[tuple[str, int]]:
    """How often each source position was dead-lettered to the topic's DLQ."""
    return Counter((d.partition, d.offset) for d in read_dead_letters(topic.bootstrap, topic.dlq))


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    config = tmp_path / "trainer.toml"
    config.write_text(SMALL_CONFIG)
    return config


def test_bad_messages_go_to_the_dlq_topic_and_the_good_ones_are_trained(
    tmp_path, events_topic, small_config
):
    args = ["train", "--source", events_topic.url, "--config", str(small_config)]
    summary = run_cli(*args, "--until-end", "--data-dir", str(tmp_path / "topic"))
    assert summary["trained"] == EVENTS and summary["dead_letters"] == BAD
    letters = list(read_dead_letters(events_topic.bootstrap, events_topic.dlq))
    assert {(d.partition, d.offset): d.raw for d in letters} == events_topic.bad
    assert len(letters) == BAD
    reasons = Counter(d.reason for d in letters)
    assert reasons == {"not_json": BAD // 2, "bad_label": BAD // 2}
    assert not (tmp_path / "topic" / "dead_letters.jsonl").exists()
    printed = CliRunner().invoke(
        app, ["dead-letters", f"kafka://{events_topic.bootstrap}/{events_topic.dlq}"]
    )
    assert printed.exit_code == 0, printed.output
    assert [json.loads(line) for line in printed.stdout.splitlines()] == [
        d.to_json() for d in letters
    ]
    # Letters of source partition p are in DLQ partition p, in order.
    raw = KafkaConsumer(
        bootstrap_servers=events_topic.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    raw.assign([TopicPartition(events_topic.dlq, p) for p in range(PARTITIONS)])
    headers = [(m.partition, dict(m.headers)) for m in raw]
    raw.close()
    assert all(h["headrace.partition"] == str(p).encode() for p, h in headers)
    offsets = [int(h["headrace.offset"]) for p, h in headers if p == 1]
    assert offsets == sorted(offsets) and len(offsets) == BAD // PARTITIONS

    # The file sink on request: the letters go to the data dir, none to the topic.
    summary = run_cli(
        *args, "--until-end", "--dead-letters", "file", "--data-dir", str(tmp_path / "file")
    )
    assert summary["trained"] == EVENTS
    lines = (tmp_path / "file" / "dead_letters.jsonl").read_text().splitlines()
    assert {(d["partition"], d["offset"]) for d in map(json.loads, lines)} == set(events_topic.bad)
    assert dlq_positions(events_topic) == Counter(set(events_topic.bad))


def test_kafka_source_survives_three_kills_bit_identically(tmp_path, events_topic, small_config):
    args = ["train", "--source", events_topic.url, "--config", str(small_config)]
    args.append("--until-end")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    after_kills = train_with_kills(
        [*args, "--deterministic", "--data-dir", str(killed)], killed, EVENTS, 5
    )
    # Each bad message was dead-lettered once to the topic, kills or not.
    assert dlq_positions(events_topic) == Counter(set(events_topic.bad))
    summary = run_cli(*args, "--deterministic", "--data-dir", str(clean))

    assert all(0 < trained < EVENTS for trained in after_kills), after_kills
    state, _, _ = saved_training(killed)
    assert state.trained == summary["trained"] == EVENTS
    assert state.dead_letters == {"not_json": BAD // 2, "bad_label": BAD // 2}
    assert sum(state.positions.values()) == EVENTS + BAD
    assert_bit_identical(killed, clean)

    # Without --deterministic batches follow arrival order, but every event
    # is still trained exactly once.
    fast = tmp_path / "fast"
    assert run_cli(*args, "--data-dir", str(fast))["trained"] == EVENTS
    assert saved_training(fast)[0].trained == EVENTS
    # The later runs on fresh data dirs found every letter in the topic already.
    assert dlq_positions(events_topic) == Counter(set(events_topic.bad))


def test_an_unreachable_publish_broker_fails_at_start_and_exits(tmp_path, events_topic):
    # The trainer (and its Kafka reader process) opened before --publish failed.
    done = subprocess.run(
        headrace_command(
            "train",
            "--source",
            events_topic.url,
            "--data-dir",
            str(tmp_path / "data"),
            "--publish",
            f"kafka://127.0.0.1:{free_port()}/params",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: --publish: no Kafka broker answered" in done.stderr


def test_the_history_goes_on_sampling_an_idle_topic(tmp_path, kafka_bootstrap, topic_name):
    """Once the topic is read, the history's newest sample says so: ingest 0 and no lag.

    The idle stretch is one sample, kept up to date: it does not push older samples out.
    """
    from headrace.trainer import Trainer, load_trainer_config
    from headrace.trainer.history import TrainingHistory
    from headrace.trainer.sources import open_source

    topic, events = topic_name("idle"), 500
    ensure_topic(kafka_bootstrap, topic, 1)
    sink = KafkaSink(kafka_bootstrap, topic)
    for event in CtrGenerator(SyntheticConfig(seed=2)).generate(0, events).events:
        sink.send(json.dumps(event).encode(), partition=0)
    sink.close()
    (tmp_path / "trainer.toml").write_text(SMALL_CONFIG)
    config = load_trainer_config(tmp_path / "trainer.toml")
    history, stop = TrainingHistory(every_s=0.2), threading.Event()
    idle_ticks = []

    def stop_once_idle(trainer: Trainer) -> None:
        newest = history.samples()[-1:]
        if newest and newest[0].trained == events and newest[0].ingest_rate == 0:
            idle_ticks.append(newest[0].wall_time)
            # The lag is asked for every 2 s: it reaches 0 a little later.
            if newest[0].consumer_lag == 0 and len(idle_ticks) >= 5:
                stop.set()

    source = open_source(f"kafka://{kafka_bootstrap}/{topic}")
    with Trainer.open(config, tmp_path / "run", source) as trainer:
        history.attach(trainer)
        trainer.tick_hooks.append(stop_once_idle)
        deadline = threading.Timer(120, stop.set)  # fails below rather than hangs
        deadline.start()
        try:
            trainer.run(stop=stop)
        finally:
            deadline.cancel()
    samples = history.samples()
    newest = samples[-1]
    assert (newest.trained, newest.ingest_rate, newest.consumer_lag) == (events, 0, 0), samples
    assert samples[-2].ingest_rate > 0  # one sample for the whole idle stretch
    assert len(set(idle_ticks)) >= 2  # and it was brought up to date as ticks went by
