"""The Kafka source, sink and dead letters against a real broker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from typer.testing import CliRunner

from headrace.cli import app
from headrace.schema import Reason
from headrace.stream import (
    BrokerUnavailable,
    DeadLetter,
    EventStream,
    KafkaDeadLetterSink,
    KafkaSink,
    KafkaSource,
    KafkaSourceConfig,
    ListDeadLetterSink,
    ProcessKafkaSource,
    ReaderProcessError,
    ensure_topic,
    read_dead_letters,
)
from tests.kafka.proxy import CuttableProxy
from tests.processes import gone_within, running
from tests.tansu import TansuBroker, free_port

pytestmark = pytest.mark.kafka


@pytest.fixture(params=[KafkaSource, ProcessKafkaSource], ids=["in_process", "child_process"])
def source_type(request: pytest.FixtureRequest) -> type[KafkaSource | ProcessKafkaSource]:
    """Each source that reads assigned partitions; both must pass the same tests."""
    return request.param


def _drain(stream: EventStream, until: int, timeout_s: float = 60.0) -> list[str]:
    """Request ids of events read until ``until`` events or the timeout."""
    ids: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(ids) < until and time.monotonic() < deadline:
        ids.extend(
            stream.next_batch(max_events=min(500, until - len(ids)), timeout_s=0.5).request_ids
        )
    return ids


def _log_ids(path: Path) -> list[str]:
    import gzip

    return [json.loads(line)["request_id"] for line in gzip.open(path, "rt")]


def test_generate_replay_consume_resume_exactly(kafka_bootstrap, topic_name, tmp_path, source_type):
    topic = topic_name("roundtrip")
    log = tmp_path / "events.jsonl.gz"
    runner = CliRunner()
    generated = runner.invoke(
        app, ["generate", "--events", "3000", "--seed", "7", "--out", str(log)]
    )
    assert generated.exit_code == 0, generated.output
    assert 0.7 < json.loads(generated.stdout.strip().splitlines()[-1])["bayes_auc"] < 1
    url = f"kafka://{kafka_bootstrap}/{topic}"
    replayed = runner.invoke(app, ["replay", str(log), "--to", url, "--max", "--partitions", "3"])
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.stdout.strip().splitlines()[-1])["acked"] == 3000

    config = KafkaSourceConfig(kafka_bootstrap, topic)
    first = EventStream(source_type(config), ListDeadLetterSink())
    assert len(first.positions()) == 3
    ids = _drain(first, 1200)
    saved = first.positions()
    first.close()
    assert len(ids) == 1200 and sum(saved.values()) == 1200

    second = EventStream(source_type(config), ListDeadLetterSink())
    second.seek(saved)
    ids += _drain(second, 1800)
    assert second.next_batch(max_events=500, timeout_s=1.0).request_ids == ()
    second.close()
    expected = _log_ids(log)
    assert Counter(ids) == Counter(expected)  # none lost, none twice
    assert len(set(ids)) == 3000


def test_replay_at_speed_paces_by_event_time_in_order(kafka_bootstrap, topic_name, tmp_path):
    # 41 events over 8 s of event time at speed 16: 0.5 s of sending. Each
    # message's Kafka timestamp is taken when the producer gets it, so the gaps
    # between them show the pacing whatever the CLI's start-up costs.
    topic, speed, gap_s = topic_name("paced"), 16.0, 0.2
    log = tmp_path / "events.jsonl"
    log.write_text(
        "".join(
            json.dumps({"ts": 5000 + i * gap_s, "sparse": {"u": i}, "request_id": f"r{i}"}) + "\n"
            for i in range(41)
        )
    )
    url = f"kafka://{kafka_bootstrap}/{topic}"
    replayed = CliRunner().invoke(app, ["replay", str(log), "--to", url, "--speed", str(speed)])
    assert replayed.exit_code == 0, replayed.output
    reader = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    messages = [next(reader) for _ in range(41)]
    reader.close()
    assert [json.loads(m.value)["request_id"] for m in messages] == [f"r{i}" for i in range(41)]
    sent_ms = [m.timestamp for m in messages]  # integer milliseconds
    for i, at in enumerate(sent_ms):
        # Sleeping never ends early; 2 ms allow for the millisecond timestamps.
        # Compared in integer milliseconds: in float seconds, 0.902 - 0.579 of
        # an epoch timestamp comes out below 0.323 and failed a run that was
        # exactly on time.
        assert at - sent_ms[0] >= round(i * gap_s / speed * 1000) - 2
    # Paced at all, and not at event time (8 s): a generous bound for a busy machine.
    assert 500 - 2 <= sent_ms[-1] - sent_ms[0] < 4000


def test_dead_letters_go_to_the_dlq_topic_with_reason_and_position(
    kafka_bootstrap, topic_name, source_type
):
    topic = topic_name("bad")
    ensure_topic(kafka_bootstrap, topic, 1)
    ensure_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    sink = KafkaSink(kafka_bootstrap, topic)
    good = {"ts": 1.0, "label": 1, "sparse": {"u": "a"}}
    messages = [json.dumps(good).encode(), b"\x00garbage", json.dumps(good | {"label": 7}).encode()]
    messages += [json.dumps(good).encode()]
    for message in messages:
        sink.send(message)
    sink.close()

    stream = EventStream(
        source_type(KafkaSourceConfig(kafka_bootstrap, topic)),
        KafkaDeadLetterSink(kafka_bootstrap, f"{topic}.dlq"),
    )
    assert len(_drain(stream, 2)) == 2
    stream.close()
    assert stream.dead_letter_counts == {"not_json": 1, "bad_label": 1}

    reader = KafkaConsumer(
        f"{topic}.dlq",
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = [next(reader) for _ in range(2)]
    reader.close()
    headers = [dict(letter.headers) for letter in letters]
    assert [letter.value for letter in letters] == [messages[1], messages[2]]
    assert [h["headrace.reason"] for h in headers] == [b"not_json", b"bad_label"]
    assert [h["headrace.offset"] for h in headers] == [b"1", b"2"]
    assert {(h["headrace.topic"], h["headrace.partition"]) for h in headers} == {
        (topic.encode(), b"0")
    }
    # The same letters, read back through headrace.
    back = list(read_dead_letters(kafka_bootstrap, f"{topic}.dlq"))
    assert [(d.reason, d.partition, d.offset, d.raw) for d in back] == [
        ("not_json", f"{topic}:0", 1, messages[1]),
        ("bad_label", f"{topic}:0", 2, messages[2]),
    ]


def test_dead_letters_are_written_once_per_source_position_across_restarts_and_ranks(
    kafka_bootstrap, topic_name
):
    """Two ranks on disjoint partitions share the DLQ; each restarts, then one takes all."""
    topic = topic_name("ranks")
    ensure_topic(kafka_bootstrap, topic, 4)

    def letters(partitions: list[int], offsets: range) -> list[DeadLetter]:
        return [
            DeadLetter(Reason.NOT_JSON, "", f"{topic}:{p}", o, b"bad %d/%d" % (p, o))
            for o in offsets
            for p in partitions
        ]

    def run(partitions: list[int], mark, start: int, stop: int, crash_at: int):
        """Resume at ``start``, dead-letter offsets up to ``stop``, checkpoint at ``crash_at``."""
        sink = KafkaDeadLetterSink.for_source(kafka_bootstrap, topic)
        sink.resume(mark, {f"{topic}:{p}": start for p in partitions})
        checkpoint = None
        for letter in letters(partitions, range(start, stop)):
            if letter.offset == crash_at and checkpoint is None:
                checkpoint = sink.mark()
            sink.write(letter)
        sink.close()  # the crash: the letters after the checkpoint are in the topic
        return checkpoint, sink.skipped

    ranks = [[0, 2], [1, 3]]
    # Each rank checkpoints at offset 5, writes up to 9, and crashes.
    marks = [run(parts, None, 0, 10, 5)[0] for parts in ranks]
    # Restarted from offset 5 (offsets 5-9 are in the topic already), each
    # checkpoints at 7, among those it skips, and crashes again.
    again = [run(parts, mark, 5, 12, 7) for parts, mark in zip(ranks, marks, strict=True)]
    assert [skipped for _, skipped in again] == [10, 10]
    restarted = [run(parts, mark, 7, 15, 12) for parts, (mark, _) in zip(ranks, again, strict=True)]
    assert [skipped for _, skipped in restarted] == [10, 10]
    # One rank takes all four partitions with the ranks' marks (per source
    # partition, so they merge like positions); and a fresh start, no mark at all.
    merged = restarted[0][0] | restarted[1][0]
    assert run([0, 1, 2, 3], merged, 12, 20, 99)[1] == 4 * 3
    assert run([0, 1, 2, 3], None, 0, 20, 99)[1] == 4 * 20

    dlq = f"{topic}.dlq"
    written = Counter((d.partition, d.offset) for d in read_dead_letters(kafka_bootstrap, dlq))
    assert written == Counter({(f"{topic}:{p}", o): 1 for p in range(4) for o in range(20)})


def test_lag_pause_and_resume(kafka_bootstrap, topic_name):
    topic = topic_name("lag")
    ensure_topic(kafka_bootstrap, topic, 2)
    sink = KafkaSink(kafka_bootstrap, topic)
    for i in range(100):
        sink.send(json.dumps({"ts": i, "label": 0, "sparse": {"u": i}}).encode(), partition=i % 2)
    sink.close()
    source = KafkaSource(KafkaSourceConfig(kafka_bootstrap, topic))
    assert sum(source.lag().values()) > 0
    source.pause([f"{topic}:1"])
    polled = [r for _ in range(6) for r in source.poll(1000, timeout_s=0.5)]
    assert {r.partition for r in polled} == {f"{topic}:0"} and len(polled) == 50
    source.resume()
    polled = [r for _ in range(6) for r in source.poll(1000, timeout_s=0.5)]
    assert {r.partition for r in polled} == {f"{topic}:1"} and len(polled) == 50
    assert source.positions() == {f"{topic}:0": 50, f"{topic}:1": 50}
    assert source.lag() == {f"{topic}:0": 0, f"{topic}:1": 0}
    source.close()


def test_lag_counts_what_is_left_after_a_partial_read(kafka_bootstrap, topic_name, source_type):
    # Several producer batches: Tansu's ListOffsets answers the last batch's
    # base offset, so this fails unless lag() also uses the fetched high watermark.
    topic = topic_name("lagpart")
    ensure_topic(kafka_bootstrap, topic, 1)
    sink = KafkaSink(kafka_bootstrap, topic, options={"batch_size": 1024})
    for i in range(300):
        sink.send(json.dumps({"ts": i, "label": 0, "sparse": {"u": i}}).encode())
    sink.close()
    source = source_type(KafkaSourceConfig(kafka_bootstrap, topic))
    read = 0
    deadline = time.monotonic() + 30
    while read < 120 and time.monotonic() < deadline:
        read += len(source.poll(120 - read, timeout_s=0.5))
    assert read == 120
    assert source.lag() == {f"{topic}:0": 180}
    source.close()


def test_group_mode_commits_and_a_new_member_resumes(kafka_bootstrap, topic_name):
    topic = topic_name("group")
    ensure_topic(kafka_bootstrap, topic, 2)
    sink = KafkaSink(kafka_bootstrap, topic)
    for i in range(200):
        sink.send(
            json.dumps({"ts": i, "label": 0, "sparse": {"u": i}, "request_id": str(i)}).encode()
        )
    sink.close()
    config = KafkaSourceConfig(kafka_bootstrap, topic, group_id=topic_name("g"))
    first = EventStream(KafkaSource(config), ListDeadLetterSink())
    ids = _drain(first, 120)
    first.source.commit(first.positions())
    first.close()
    second = EventStream(KafkaSource(config), ListDeadLetterSink())
    ids += _drain(second, 80)
    second.close()
    assert sorted(ids, key=int) == [str(i) for i in range(200)]


def test_unknown_topic_and_unreachable_broker_fail_clearly(
    kafka_bootstrap, topic_name, source_type
):
    with pytest.raises(ValueError, match="does not exist"):
        source_type(KafkaSourceConfig(kafka_bootstrap, topic_name("absent")))
    with pytest.raises(BrokerUnavailable, match="no Kafka broker answered"):
        source_type(KafkaSourceConfig(f"127.0.0.1:{free_port()}", "t", bootstrap_timeout_s=1))


def test_broker_outage_mid_stream_loses_nothing(tansu_binary, topic_name, source_type):
    proxy_port = free_port()
    broker = TansuBroker(tansu_binary, advertised_port=proxy_port)
    broker.start()
    proxy = CuttableProxy(proxy_port, broker.port)
    proxy.start()
    try:
        bootstrap, topic = broker.bootstrap, topic_name("outage")
        ensure_topic(bootstrap, topic, 2)
        sink = KafkaSink(bootstrap, topic)
        stream = EventStream(source_type(KafkaSourceConfig(bootstrap, topic)), ListDeadLetterSink())
        event = lambda i: json.dumps({"ts": i, "label": 1, "sparse": {}, "request_id": str(i)})  # noqa: E731
        for i in range(300):
            sink.send(event(i).encode())
        sink.flush(30)
        ids = _drain(stream, 150)

        proxy.stop()  # the broker goes away mid-stream
        for i in range(300, 600):  # the producer keeps sending into its buffer
            sink.send(event(i).encode())
        # Polling through the outage neither raises nor invents records; what
        # the consumer had prefetched may still arrive.
        for _ in range(3):
            ids += stream.next_batch(500, timeout_s=1.0).request_ids
        proxy.start()  # and comes back

        sink.flush(60)
        ids += _drain(stream, 600 - len(ids), timeout_s=60)
        sink.close()
        stream.close()
        assert sorted(ids, key=int) == [str(i) for i in range(600)]
        assert sink.acked == 600
    finally:
        proxy.stop()
        broker.stop()


def _produce(
    bootstrap: str, topic: str, count: int, start: int = 0, partitions: int = 1, pad: int = 0
) -> None:
    sink = KafkaSink(bootstrap, topic)
    for i in range(start, start + count):
        event = {"ts": i, "label": 0, "sparse": {"u": i}, "request_id": str(i), "pad": "x" * pad}
        sink.send(json.dumps(event).encode(), partition=i % partitions)
    sink.close()


def _poll_until_quiet(source: ProcessKafkaSource, quiet_s: float = 1.0) -> list:
    """Every record that arrives until none has for ``quiet_s``."""
    records = []
    while polled := source.poll(10_000, timeout_s=quiet_s):
        records += polled
    return records


def test_child_process_source_pauses_and_resumes(kafka_bootstrap, topic_name):
    topic = topic_name("ppause")
    ensure_topic(kafka_bootstrap, topic, 2)
    _produce(kafka_bootstrap, topic, 100, partitions=2)
    with ProcessKafkaSource(KafkaSourceConfig(kafka_bootstrap, topic)) as source:
        source.pause()
        # What the child read before the pause still arrives, then nothing.
        before = _poll_until_quiet(source)
        _produce(kafka_bootstrap, topic, 100, start=100, partitions=2)
        assert source.poll(1000, timeout_s=1.5) == []
        # Exactly 100 on Kafka; Tansu's ListOffsets answers the start of the
        # last producer batch, and paused partitions bring no high watermark.
        assert 0 < sum(source.lag().values()) <= 200 - len(before)
        source.resume()
        # librdkafka fetches a resumed partition again within about a second.
        after = _poll_until_quiet(source, quiet_s=3.0)
        ids = [json.loads(r.value)["request_id"] for r in before + after]
        assert sorted(ids, key=int) == [str(i) for i in range(200)]
        assert source.positions() == {f"{topic}:0": 100, f"{topic}:1": 100}
        assert source.lag() == {f"{topic}:0": 0, f"{topic}:1": 0}


def test_seek_drops_what_was_read_ahead_and_keeps_unnamed_partitions(
    kafka_bootstrap, topic_name, source_type
):
    topic = topic_name("seek")
    ensure_topic(kafka_bootstrap, topic, 2)
    _produce(kafka_bootstrap, topic, 1000, partitions=2)
    zero, one = f"{topic}:0", f"{topic}:1"
    with contextlib.closing(source_type(KafkaSourceConfig(kafka_bootstrap, topic))) as source:
        first = []
        while len(first) < 300:
            first += source.poll(300 - len(first), timeout_s=10)
        time.sleep(0.5)  # let a reader process read ahead
        returned = source.positions()
        # Partition 1 goes back to 50; partition 0, not named, goes on.
        source.seek({one: 50, "other-topic:0": 7})
        assert source.positions() == {zero: returned[zero], one: 50}
        rest = _poll_until_quiet(source)
    offsets = {key: [r.offset for r in first + rest if r.partition == key] for key in (zero, one)}
    assert offsets[zero] == list(range(500))
    assert offsets[one] == list(range(returned[one])) + list(range(50, 500))
    assert source.highwater(zero) == source.highwater(one) == 500


def test_a_seek_to_the_end_learns_the_ends(kafka_bootstrap, topic_name, source_type):
    # What --until-end needs: the ends, even when nothing is left to read.
    topic = topic_name("seekend")
    ensure_topic(kafka_bootstrap, topic, 2)
    _produce(kafka_bootstrap, topic, 10_000, partitions=2)
    with contextlib.closing(source_type(KafkaSourceConfig(kafka_bootstrap, topic))) as source:
        source.poll(10, timeout_s=10)
        source.seek({f"{topic}:0": 5000, f"{topic}:1": 5000})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and None in (
            source.highwater(f"{topic}:0"),
            source.highwater(f"{topic}:1"),
        ):
            assert source.poll(100, timeout_s=0.2) == []
        assert source.highwater(f"{topic}:0") == source.highwater(f"{topic}:1") == 5000


def test_parsing_in_the_reader_process_gives_the_batches_parsing_here_gives(
    kafka_bootstrap, topic_name
):
    """Bad records among good ones, two partitions, uneven batch sizes, a seek back."""
    topic = topic_name("parsed")
    ensure_topic(kafka_bootstrap, topic, 2)
    keys = (f"{topic}:0", f"{topic}:1")
    sink = KafkaSink(kafka_bootstrap, topic)
    # Event i goes to partition i % 2 at offset i // 2; every 97th is bad.
    for i in range(3000):
        event = {"ts": i, "label": i % 2, "sparse": {"u": i, "g": ["a", str(i % 7)]}}
        sink.send(
            b"{bad" if i % 97 == 5 else json.dumps(event | {"request_id": str(i)}).encode(),
            partition=i % 2,
        )
    sink.close()
    back = {keys[0]: 10, keys[1]: 20}

    def read(source_type: type) -> tuple[dict, dict, Counter]:
        """Each partition's offsets in the order read, each event's ``g`` fids, the letters."""
        stream = EventStream(
            source_type(KafkaSourceConfig(kafka_bootstrap, topic)), ListDeadLetterSink()
        )
        assert stream.source_parses == (source_type is ProcessKafkaSource)
        offsets: dict[str, list[int]] = {key: [] for key in keys}
        fids, before_seek, sizes = {}, None, [7, 32, 100, 1]
        deadline = time.monotonic() + 60
        while min(stream.positions().values()) < 1500 and time.monotonic() < deadline:
            batch = stream.next_batch(sizes[stream.records_read % 4], timeout_s=1)
            for j, request_id in enumerate(batch.request_ids):
                i = int(request_id)
                offsets[keys[i % 2]].append(i // 2)
                fids[i] = batch.event_fids("g", j).tolist()
                # The batch's positions pass what it holds.
                assert batch.positions[keys[i % 2]] > i // 2
            if before_seek is None and stream.records_read >= 500:
                before_seek = batch.positions
                stream.seek(back)
        letters = Counter((d.partition, d.offset) for d in stream.dead_letters.letters)
        stream.close()
        # Per partition: up to where the seek found it, then again from ``back``.
        bad = {
            key: {i // 2 for i in range(p, 3000, 2) if i % 97 == 5} for p, key in enumerate(keys)
        }
        for key in keys:
            read_offsets = [*range(before_seek[key]), *range(back[key], 1500)]
            assert offsets[key] == [o for o in read_offsets if o not in bad[key]]
            assert Counter(o for (k, o) in letters.elements() if k == key) == Counter(
                o for o in read_offsets if o in bad[key]
            )
        return fids

    there, here = read(ProcessKafkaSource), read(KafkaSource)
    common = there.keys() & here.keys()
    assert len(common) >= 2900
    assert {i: there[i] for i in common} == {i: here[i] for i in common}


def test_child_process_source_refuses_group_mode(kafka_bootstrap):
    with pytest.raises(ValueError, match="for consumer-group mode use KafkaSource"):
        ProcessKafkaSource(KafkaSourceConfig(kafka_bootstrap, "t", group_id="g"))


def test_a_dead_reader_process_is_an_error_not_a_quiet_stream(kafka_bootstrap, topic_name):
    topic = topic_name("pdead")
    ensure_topic(kafka_bootstrap, topic, 1)
    # Large records: the child is killed in the middle of sending a chunk.
    _produce(kafka_bootstrap, topic, 3000, pad=1000)
    source = ProcessKafkaSource(KafkaSourceConfig(kafka_bootstrap, topic))
    assert source.poll(10, timeout_s=10)
    time.sleep(0.5)
    child = source._process
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    raised: list[BaseException] = []

    def drain() -> None:
        try:
            while True:
                source.poll(10_000, timeout_s=0.5)
        except ReaderProcessError as exc:
            raised.append(exc)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "poll hangs on a dead reader process"
    assert "was killed by signal 9" in str(raised[0])
    source.close()  # does not hang on the dead child


def test_the_reader_process_ignores_sigterm_and_sigint(kafka_bootstrap, topic_name):
    # A service manager or a terminal signals the whole process group; the
    # trainer must be the one to decide, and stop its reader last.
    topic = topic_name("psig")
    ensure_topic(kafka_bootstrap, topic, 1)
    with ProcessKafkaSource(KafkaSourceConfig(kafka_bootstrap, topic)) as source:
        child = source._process
        os.kill(child.pid, signal.SIGTERM)
        os.kill(child.pid, signal.SIGINT)
        _produce(kafka_bootstrap, topic, 10)
        assert len(_poll_until_quiet(source, quiet_s=3.0)) == 10
        assert child.poll() is None  # alive


def unpicklable_value(raw: bytes) -> threading.Lock:
    """A value deserializer whose values cannot cross to the parent."""
    return threading.Lock()


def test_values_that_cannot_cross_the_pipe_raise(kafka_bootstrap, topic_name):
    topic = topic_name("pickle")
    ensure_topic(kafka_bootstrap, topic, 1)
    _produce(kafka_bootstrap, topic, 10)
    config = KafkaSourceConfig(
        kafka_bootstrap, topic, options={"value_deserializer": unpicklable_value}
    )
    with ProcessKafkaSource(config) as source:
        with pytest.raises(TypeError, match="pickle"):
            for _ in range(20):
                source.poll(10, timeout_s=0.5)
        # The child read past those records: reading on would skip them.
        with pytest.raises(ReaderProcessError, match="closed"):
            source.poll(10, timeout_s=0.5)
        assert source.positions() == {f"{topic}:0": 0}


_UNCLOSED_SOURCE_SCRIPT = """
import sys, time
from headrace.stream import KafkaSourceConfig, ProcessKafkaSource
source = ProcessKafkaSource(KafkaSourceConfig(sys.argv[1], sys.argv[2]))
print(source._process.pid, flush=True)
if sys.argv[3] == "sleep":
    time.sleep(600)
"""


def test_a_source_never_closed_does_not_hold_the_interpreter_at_exit(kafka_bootstrap, topic_name):
    topic = topic_name("pexit")
    ensure_topic(kafka_bootstrap, topic, 1)
    done = subprocess.run(
        [sys.executable, "-c", _UNCLOSED_SOURCE_SCRIPT, kafka_bootstrap, topic, "exit"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not running(int(done.stdout))


def test_the_reader_process_exits_when_its_parent_is_killed(kafka_bootstrap, topic_name):
    topic = topic_name("porphan")
    ensure_topic(kafka_bootstrap, topic, 1)
    parent = subprocess.Popen(
        [sys.executable, "-c", _UNCLOSED_SOURCE_SCRIPT, kafka_bootstrap, topic, "sleep"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no clean-up runs in the parent
    parent.wait()
    assert gone_within(child_pid), "the reader process outlived its parent"
