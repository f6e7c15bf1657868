"""The trainer on a Kafka topic with several partitions, written before the run."""

from __future__ import annotations

import json
import subprocess

import pytest

from headrace.stream import CtrGenerator, KafkaSink, SyntheticConfig, ensure_topic
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
EVENTS, PARTITIONS, BAD = 12_000, 3, 6


@pytest.fixture
def events_topic(kafka_bootstrap, topic_name) -> str:
    """A topic of EVENTS good and BAD bad messages over PARTITIONS partitions."""
    topic = topic_name("train")
    ensure_topic(kafka_bootstrap, topic, PARTITIONS)
    sink = KafkaSink(kafka_bootstrap, topic)
    for i, event in enumerate(CtrGenerator(SyntheticConfig(seed=9)).generate(0, EVENTS).events):
        if i % (EVENTS // BAD) == 0:
            sink.send(b"not json", partition=i % PARTITIONS)
        sink.send(json.dumps(event).encode(), partition=i % PARTITIONS)
    sink.close()
    return f"kafka://{kafka_bootstrap}/{topic}"


def test_kafka_source_survives_three_kills_bit_identically(tmp_path, events_topic):
    config = tmp_path / "trainer.toml"
    config.write_text(SMALL_CONFIG)
    args = ["train", "--source", events_topic, "--config", str(config), "--until-end"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    after_kills = train_with_kills(
        [*args, "--deterministic", "--data-dir", str(killed)], killed, EVENTS, 5
    )
    summary = run_cli(*args, "--deterministic", "--data-dir", str(clean))

    assert all(0 < trained < EVENTS for trained in after_kills), after_kills
    state, _, _ = saved_training(killed)
    assert state.trained == summary["trained"] == EVENTS
    assert state.dead_letters == {"not_json": BAD}
    assert sum(state.positions.values()) == EVENTS + BAD
    assert_bit_identical(killed, clean)

    # Without --deterministic batches follow arrival order, but every event
    # is still trained exactly once.
    fast = tmp_path / "fast"
    assert run_cli(*args, "--data-dir", str(fast))["trained"] == EVENTS
    assert saved_training(fast)[0].trained == EVENTS


def test_an_unreachable_publish_broker_fails_at_start_and_exits(tmp_path, events_topic):
    # The trainer (and its Kafka reader process) opened before --publish failed.
    done = subprocess.run(
        headrace_command(
            "train",
            "--source",
            events_topic,
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
