"""Ranks split a topic's partitions (real broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headrace.stream import CtrGenerator, KafkaSink, SyntheticConfig, ensure_topic
from headrace.trainer import SourceUrlError, open_source
from tests.distributed.conftest import sharded_training, torchrun_train, write_config

pytestmark = pytest.mark.kafka


def _topic(bootstrap: str, topic: str, partitions: int, events: int) -> str:
    ensure_topic(bootstrap, topic, partitions)
    sink = KafkaSink(bootstrap, topic)
    for i, event in enumerate(CtrGenerator(SyntheticConfig(seed=3)).generate(0, events).events):
        sink.send(json.dumps(event).encode(), partition=i % partitions)
    sink.close()
    return f"kafka://{bootstrap}/{topic}"


def test_more_ranks_than_partitions_fail_at_start(kafka_bootstrap, topic_name) -> None:
    url = _topic(kafka_bootstrap, topic_name("few"), 1, 10)
    with pytest.raises(SourceUrlError, match="1 partitions, too few for 2 ranks"):
        open_source(url, rank=1, world=2)


@pytest.mark.slow
def test_two_ranks_read_disjoint_partitions_to_the_end(
    kafka_bootstrap, topic_name, tmp_path: Path
) -> None:
    topic = topic_name("ranks")
    url = _topic(kafka_bootstrap, topic, 3, 1500)
    config = write_config(tmp_path / "trainer.toml", batch_size=32)
    ranks = torchrun_train(
        2,
        "--source",
        url,
        "--data-dir",
        str(tmp_path / "data"),
        "--config",
        str(config),
        "--until-end",
    )
    states, _, _ = sharded_training(tmp_path / "data", 2)
    assert sum(r["trained"] for r in ranks) == 1500
    # Rank 0 reads partitions 0 and 2, rank 1 partition 1; each to its end.
    assert states[0].positions == {f"{topic}:0": 500, f"{topic}:2": 500}
    assert states[1].positions == {f"{topic}:1": 500}
