"""The reader thread: the same batches as reading inline, exact positions, errors passed on."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from headrace.stream import (
    EventStream,
    FileSource,
    ListDeadLetterSink,
    ProcessFileSource,
    SyntheticConfig,
    SyntheticSource,
)
from headrace.trainer import Trainer, load_trainer_config
from headrace.trainer.prefetch import BatchPrefetcher
from tests.trainer.conftest import write_log
from tests.waiting import poll_until


def _stream(log) -> EventStream:
    return EventStream(FileSource(log), ListDeadLetterSink())


def _drain(prefetcher: BatchPrefetcher) -> list:
    taken = []
    while (fetched := prefetcher.get(timeout_s=10)) is not None:
        taken.append(fetched)
    return taken


def test_batches_equal_those_read_inline(tmp_path):
    log = tmp_path / "events.jsonl"
    write_log(log, 1000, bad_every=90)
    inline, stream = _stream(log), _stream(log)
    expected = []
    while inline.records_read < 700:
        expected.append(inline.next_batch(min(64, 700 - inline.records_read)))
    with BatchPrefetcher(stream, 64, max_events=700) as prefetcher:
        taken = _drain(prefetcher)
    assert [len(f.batch) for f in taken] == [len(b) for b in expected]
    for fetched, batch in zip(taken, expected, strict=True):
        assert fetched.batch.positions == batch.positions
        assert np.array_equal(fetched.batch.fids["user_id"], batch.fids["user_id"])
    # Each batch carries the counters as of its own end, not the thread's.
    assert taken[-1].records_read == 700
    assert taken[-1].dead_letters == dict(inline.dead_letter_counts) == {"bad_ts": 8}


def _let_read_ahead_settle(stream: EventStream, records: int) -> None:
    """Wait until the reader thread has read ``records`` records, and a moment more."""
    poll_until(lambda: stream.records_read, lambda read: read >= records, 10, 0.01)
    time.sleep(0.1)  # for a read beyond it, and the counters updated after the records


def test_close_rewinds_what_was_read_ahead(tmp_path):
    log = tmp_path / "events.jsonl"
    write_log(log, 2000)
    stream = _stream(log)
    with BatchPrefetcher(stream, 100, max_events=None, depth=3) as prefetcher:
        first = prefetcher.get(timeout_s=10)
        # The thread reads ahead until three batches wait in the queue and it
        # holds a fourth; then it waits.
        _let_read_ahead_settle(stream, 500)
        assert stream.records_read == 500
    assert stream.positions() == first.batch.positions
    assert stream.next_batch(100).positions == {FileSource(log).key: 200}


def test_dead_letters_are_written_once_when_read_ahead_is_rewound(tmp_path):
    log = tmp_path / "events.jsonl"
    write_log(log, 1000, bad_every=50)  # a bad line before events 0, 50, 100, ...
    stream = _stream(log)
    with BatchPrefetcher(stream, 100, max_events=None, depth=3) as prefetcher:
        first = prefetcher.get(timeout_s=10)
        _let_read_ahead_settle(stream, 500)
        # Read: 5 batches and their 10 bad lines; taken: one, with its 2.
        assert stream.dead_letter_counts == {"bad_ts": 10}
        assert len(stream.dead_letters.letters) == 2
    with BatchPrefetcher(stream, 100, max_events=None) as prefetcher:
        rest = _drain(prefetcher)
    offsets = [letter.offset for letter in stream.dead_letters.letters]
    assert offsets == sorted(set(offsets)) and len(offsets) == 20  # each bad line once
    assert first.letters == stream.dead_letters.letters[:2]
    assert sum(len(f.batch) for f in [first, *rest]) == 1000


def test_a_reader_error_reaches_the_training_thread(tmp_path):
    class Broken(SyntheticSource):
        def poll(self, max_records, timeout_s=0.0):
            raise OSError("disk gone")

    stream = EventStream(Broken(limit=10), ListDeadLetterSink())
    with BatchPrefetcher(stream, 4, max_events=None) as prefetcher:
        with pytest.raises(OSError, match="disk gone"):
            prefetcher.get(timeout_s=10)
        assert prefetcher.get() is None


def test_a_stopped_run_resumes_in_process_without_loss_or_repeat(tmp_path, small_config):
    config = load_trainer_config(small_config)
    stop = threading.Event()
    source = SyntheticSource(SyntheticConfig(seed=3), limit=1000)
    with Trainer.open(config, tmp_path, source) as trainer:
        trainer.after_step.append(lambda t, r: stop.set() if t.state.batches == 3 else None)
        first = trainer.run(stop=stop)
        assert (first.events, first.trained) == (96, 96)
        assert trainer.stream.positions() == {"synthetic:3": 96}
        second = trainer.run()
    assert (second.events, second.trained) == (904, 1000)
    assert trainer.state.records == 1000


def _peek(prefetcher: BatchPrefetcher):
    """What ``peek`` shows once the reader thread has read the batch (within 10 s)."""
    return poll_until(prefetcher.peek, lambda batch: batch is not None, 10, 0.001)


@pytest.mark.parametrize("source", [FileSource, ProcessFileSource])
def test_peek_shows_the_batch_get_returns_next_and_close_rewinds_it(tmp_path, source):
    """With the reading thread (FileSource) or on the training thread (a reader process)."""
    log = tmp_path / "events.jsonl"
    write_log(log, 1000, bad_every=90)
    with BatchPrefetcher(_stream(log), 64, max_events=700) as prefetcher:
        expected = _drain(prefetcher)
    stream = EventStream(source(log), ListDeadLetterSink())
    taken = []
    with BatchPrefetcher(stream, 64, max_events=700) as prefetcher:
        while len(taken) < 3:
            batch = _peek(prefetcher)
            assert prefetcher.peek() is batch
            fetched = prefetcher.get(timeout_s=10)
            assert batch is fetched.batch
            taken.append(fetched)
        assert _peek(prefetcher) is not None
    assert [f.batch.positions for f in taken] == [f.batch.positions for f in expected[:3]]
    assert [len(f.batch) for f in taken] == [len(f.batch) for f in expected[:3]]
    # The batch peeked after the third was not taken: the stream is back at the third's end.
    assert stream.positions() == taken[-1].batch.positions
    stream.close()


def test_peek_is_none_at_the_end(tmp_path):
    log = tmp_path / "events.jsonl"
    write_log(log, 100)
    with BatchPrefetcher(_stream(log), 64, max_events=None) as prefetcher:
        assert len(_drain(prefetcher)) == 2
        assert prefetcher.peek() is None


def test_a_read_error_on_peek_reaches_the_get_after_the_batch_before(tmp_path):
    """On the training thread, the batch taken before a failed read is still handed out."""

    class Failing(ProcessFileSource):
        polls = 0

        def poll_parsed(self, max_records, timeout_s=0.0):
            self.polls += 1
            if self.polls == 2:
                raise OSError("disk gone")
            return super().poll_parsed(max_records, timeout_s)

    log = tmp_path / "events.jsonl"
    write_log(log, 100)
    stream = EventStream(Failing(log), ListDeadLetterSink())
    with BatchPrefetcher(stream, 10, max_events=None) as prefetcher:
        first = prefetcher.get(timeout_s=10)
        assert prefetcher.peek() is None  # the failed read
        with pytest.raises(OSError, match="disk gone"):
            prefetcher.get()
        assert prefetcher.get() is None
    assert len(first.batch) == 10
    stream.close()
