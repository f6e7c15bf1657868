"""Replaying JSONL logs: order, resume, determinism and dead letters in a file."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.stream import (
    EventStream,
    FileSource,
    JsonlDeadLetterSink,
    ListDeadLetterSink,
    ProcessFileSource,
    ReaderProcessError,
)
from tests.processes import gone_within
from tests.waiting import poll_until


def _write_log(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _events(n: int) -> list[bytes]:
    return [
        json.dumps({"ts": float(i), "label": i % 2, "sparse": {"u": f"u{i}"}}).encode()
        for i in range(n)
    ]


@pytest.mark.parametrize("name", ["log.jsonl", "log.jsonl.gz"])
def test_resume_reads_exactly_what_follows(tmp_path, name):
    log = _write_log(tmp_path / name, _events(50))
    first = EventStream(FileSource(log), JsonlDeadLetterSink(tmp_path / "dlq.jsonl"))
    seen = [*first.next_batch(20).ts, *first.next_batch(7).ts]
    saved = first.positions()
    first.close()
    assert saved == {f"file:{name}": 27}

    second = EventStream(FileSource(log), JsonlDeadLetterSink(tmp_path / "dlq.jsonl"))
    second.seek(saved)
    seen += [ts for batch in second for ts in batch.ts]
    assert seen == [float(i) for i in range(50)]
    assert second.source.exhausted


def test_replay_is_deterministic(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _events(30))
    runs = []
    for _ in range(2):
        stream = EventStream(FileSource(log), JsonlDeadLetterSink(tmp_path / "dlq.jsonl"))
        runs.append([(b.fids["u"].tolist(), b.positions) for b in stream])
        stream.close()
    assert runs[0] == runs[1]


def test_bad_lines_go_to_a_jsonl_dead_letter_file(tmp_path):
    lines = _events(5)
    lines[2] = b'{"ts": 1, "label": 1, "sparse": {"u": 1.5}}'
    lines.insert(4, b"")  # a blank line is not a message, but counts for positions
    lines.insert(5, b"\xff\xfe not utf-8")
    log = _write_log(tmp_path / "log.jsonl.gz", lines)
    dlq = tmp_path / "dead" / "log.dlq.jsonl"
    stream = EventStream(FileSource(log), JsonlDeadLetterSink(dlq))
    good = [ts for batch in stream for ts in batch.ts]
    stream.close()
    assert good == [0.0, 1.0, 3.0, 4.0]
    letters = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [(d["reason"], d["offset"], d["partition"]) for d in letters] == [
        ("bad_sparse", 2, "file:log.jsonl.gz"),
        ("not_json", 5, "file:log.jsonl.gz"),
    ]
    assert base64.b64decode(letters[1]["raw_b64"]) == b"\xff\xfe not utf-8"
    assert stream.dead_letter_counts == {"bad_sparse": 1, "not_json": 1}


def test_wrong_positions_fail_clearly(tmp_path):
    source = FileSource(_write_log(tmp_path / "log.jsonl", _events(3)))
    with pytest.raises(KeyError, match=r"file:log\.jsonl"):
        source.seek({"file:other.jsonl": 1})
    with pytest.raises(ValueError, match="cannot seek to line 10"):
        source.seek({"file:log.jsonl": 10})


def test_missing_log_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no event log"):
        FileSource(tmp_path / "absent.jsonl")


def test_log_sink_appending_cuts_an_unfinished_last_line(tmp_path):
    from headrace.stream import LogSink

    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')  # a writer killed mid-line
    sink = LogSink(path, append=True)
    sink.send(b'{"c": 3}')
    sink.close()
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'


# -- ProcessFileSource: the same log read and parsed in a child process -------------------


def _mixed_log(path: Path, n: int = 5000, trailing_blanks: int = 2) -> Path:
    """Good events of varied shapes, with bad lines and blank lines mixed in."""
    lines: list[bytes] = []
    for i in range(n):
        if i % 97 == 5:
            lines.append(b"not json {")
        elif i % 89 == 3:
            lines.append(json.dumps({"ts": float(i), "sparse": {"u": "x"}}).encode())  # no label
        elif i % 83 == 7:
            lines.append(b"   ")
        elif i % 79 == 1:
            lines.append(b"")
        else:
            event: dict = {"ts": float(i), "label": i % 2, "sparse": {"u": f"u{i % 300}"}}
            if i % 3:
                event["sparse"]["tags"] = [f"t{i % 7}", f"t{i % 11}"][: i % 3]
            if i % 5 == 0:
                event["dense"] = {"price": i / 10}
            if i % 4 == 0:
                event["request_id"] = f"r{i}"
                event["event_id"] = f"e{i}"
            if i % 6 == 0:
                event["weight"] = 0.5
                event["sample_rate"] = 0.25
            lines.append(json.dumps(event).encode())
    return _write_log(path, lines + [b""] * trailing_blanks)


def _view(result) -> tuple:
    """Everything a batch and its dead letters say, event by event (slices keep empty slots)."""
    batch = result.batch
    slots = sorted(slot for slot in batch.fids if len(batch.fids[slot]))
    events = [
        (
            float(batch.ts[i]),
            float(batch.labels[i]),
            None if batch.weights is None else float(batch.weights[i]),
            None if batch.sample_rates is None else float(batch.sample_rates[i]),
            batch.request_ids[i],
            None if batch.event_ids is None else batch.event_ids[i],
            tuple((slot, tuple(batch.event_fids(slot, i).tolist())) for slot in slots),
            tuple(
                (name, float(value))
                for name, value in zip(batch.dense_names, batch.dense[i], strict=True)
                if value
            ),
        )
        for i in range(len(batch))
    ]
    letters = [(d.reason, d.partition, d.offset, d.raw) for d in result.dead_letters]
    return events, dict(batch.positions), letters, result.kept.tolist()


_SIZES = (1, 7, 1000, 1024, 1500, 3000, 4096, 5, 2048)


def _read_all(source, sizes=_SIZES, limit: int = 1000) -> list[tuple]:
    stream = EventStream(source, ListDeadLetterSink())
    out = []
    try:
        for k in range(limit):
            if stream.source.exhausted:
                break
            result = stream.read(sizes[k % len(sizes)], timeout_s=5)
            out.append((*_view(result), stream.source.exhausted, stream.positions()))
    finally:
        stream.close()
    return out


@pytest.mark.parametrize(
    ("name", "rank", "world"),
    [("log.jsonl", 0, 1), ("log.jsonl.gz", 0, 1), ("log.jsonl", 1, 3), ("log.jsonl.gz", 2, 3)],
)
def test_the_process_source_gives_what_the_file_source_gives(tmp_path, name, rank, world):
    log = _mixed_log(tmp_path / name)
    expected = _read_all(FileSource(log, rank=rank, world=world))
    got = _read_all(ProcessFileSource(log, rank=rank, world=world))
    assert got == expected
    assert expected[-1][-2] is True  # exhausted at the end
    assert expected[-1][-1] == {f"file:{name}": 5002}  # trailing blank lines count
    assert sum(len(batch[2]) for batch in expected) > 10  # dead letters were compared


def test_batches_ending_exactly_at_the_last_record(tmp_path):
    # The last poll returns all it asked for: not exhausted until the next one, as a FileSource.
    log = _write_log(tmp_path / "log.jsonl", _events(2048))
    for sizes in [(1024,), (2048,), (512, 1536)]:
        expected = _read_all(FileSource(log), sizes)
        assert _read_all(ProcessFileSource(log), sizes) == expected
        assert expected[-1][0] == [] and expected[-1][-2] is True


def test_raw_polls_match_without_parsing(tmp_path):
    log = _mixed_log(tmp_path / "log.jsonl", n=3000)
    plain, child = FileSource(log, rank=1, world=2), ProcessFileSource(log, rank=1, world=2)
    try:
        for size in [3, 1024, 2000, 1, 5000, 10]:
            assert child.poll(size, timeout_s=0) == plain.poll(size)
            assert (child.positions(), child.exhausted) == (plain.positions(), plain.exhausted)
    finally:
        plain.close()
        child.close()


def test_the_process_source_seeks_and_resumes_exactly(tmp_path):
    log = _mixed_log(tmp_path / "log.jsonl.gz")
    with ProcessFileSource(log) as source:
        stream = EventStream(source, ListDeadLetterSink())
        first = [_view(stream.read(1500)) for _ in range(2)]
        saved = stream.positions()
        later = _view(stream.read(700))
        # Back to a saved position, read-ahead dropped: the same records again.
        stream.seek(saved)
        assert _view(stream.read(700)) == later
        stream.seek({"file:log.jsonl.gz": 0})
        assert [_view(stream.read(1500)) for _ in range(2)] == first
        with pytest.raises(ValueError, match="cannot seek"):
            source.seek({"file:log.jsonl.gz": 10**6})
    # A new source resumes where a checkpoint left off, as a FileSource does.
    resumed = ProcessFileSource(log)
    resumed.seek(saved)
    plain = FileSource(log)
    plain.seek(saved)
    assert _read_all(resumed) == _read_all(plain)


def test_exhausted_only_at_the_end_and_again_after_a_seek_back(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _events(100))
    with ProcessFileSource(log) as source:
        stream = EventStream(source, ListDeadLetterSink())
        assert len(stream.next_batch(60)) == 60 and not source.exhausted
        assert len(stream.next_batch(60)) == 40 and source.exhausted
        assert len(stream.next_batch(60)) == 0 and source.positions() == {"file:log.jsonl": 100}
        stream.seek({"file:log.jsonl": 90})
        assert not source.exhausted
        assert [batch.ts.tolist() for batch in stream] == [[float(i) for i in range(90, 100)]]


def test_a_dead_file_reader_process_raises_clearly(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _events(50_000))
    source = ProcessFileSource(log)
    stream = EventStream(source, ListDeadLetterSink())
    assert len(stream.next_batch(10)) == 10
    os.kill(source._process.pid, signal.SIGKILL)
    source._process.wait(10)
    with pytest.raises(ReaderProcessError, match="was killed by signal 9"):
        for _ in range(100):
            stream.next_batch(4096)
    with pytest.raises(ReaderProcessError, match="closed"):
        stream.next_batch(10)
    source.close()  # does not hang on the dead child


def test_the_file_reader_process_ignores_sigterm_and_stops_on_close(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _events(3000))
    source = ProcessFileSource(log)
    child = source._process
    os.kill(child.pid, signal.SIGTERM)
    os.kill(child.pid, signal.SIGINT)
    stream = EventStream(source, ListDeadLetterSink())
    assert sum(len(batch) for batch in stream) == 3000
    assert child.poll() is None  # alive
    source.close()
    assert child.poll() is not None


def test_a_bad_file_source_fails_in_this_process(tmp_path):
    with pytest.raises(FileNotFoundError, match="no event log"):
        ProcessFileSource(tmp_path / "missing.jsonl")
    log = _write_log(tmp_path / "log.jsonl", _events(3))
    with pytest.raises(ValueError, match="rank 2 is not in"):
        ProcessFileSource(log, rank=2, world=2)


def test_open_source_reads_a_file_in_a_child_process(tmp_path):
    from headrace.trainer.sources import open_source

    log = _write_log(tmp_path / "log.jsonl", _events(10))
    source = open_source(f"file://{log}", rank=1, world=2)
    try:
        assert isinstance(source, ProcessFileSource)
        assert [r.offset for r in source.poll(10, timeout_s=0)] == [1, 3, 5, 7, 9]
    finally:
        source.close()


_PARENT_SCRIPT = """
import sys, time
from headrace.stream import EventStream, ListDeadLetterSink, ProcessFileSource
if __name__ == "__main__":
    source = ProcessFileSource(sys.argv[1])
    EventStream(source, ListDeadLetterSink()).next_batch(10)
    print(source._process.pid, flush=True)
    if sys.argv[2] == "sleep":
        time.sleep(60)
"""


@pytest.mark.parametrize("how", ["killed", "exits without close"])
def test_the_file_reader_process_exits_with_its_parent(tmp_path, how):
    log = _write_log(tmp_path / "log.jsonl", _events(20_000))
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, str(log), "sleep" if how == "killed" else "exit"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    if how == "killed":
        parent.kill()  # SIGKILL: no clean-up runs in the parent
    assert parent.wait(30) in (0, -signal.SIGKILL)
    assert gone_within(child_pid), "the reader process outlived its parent"


_TORCH_SCRIPT = """
import sys
import torch  # as a trainer's main module has, by way of headrace.trainer
from headrace.stream import ProcessFileSource
source = ProcessFileSource(sys.argv[1])
with open(f"/proc/{source._process.pid}/maps") as maps:
    print("torch" if "libtorch" in maps.read() else "no torch", flush=True)
source.close()
"""


def test_the_reader_process_does_not_import_the_parents_main_module(tmp_path):
    # multiprocessing's spawn would run the script's imports in the child:
    # torch, ~190 MB more in every reader process.
    log = _write_log(tmp_path / "log.jsonl", _events(10))
    script = tmp_path / "trainer_script.py"
    script.write_text(_TORCH_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no torch"


_LINES = st.lists(st.sampled_from([b'{"e": 1}', b'{"e": 22}', b"", b"  ", b"x\r"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    lines=_LINES,
    world_rank=st.integers(1, 3).flatmap(lambda w: st.tuples(st.just(w), st.integers(0, w - 1))),
    polls=st.lists(st.tuples(st.integers(0, 9), st.none() | st.integers(0, 45)), max_size=12),
    newline_at_end=st.booleans(),
)
def test_file_source_reads_as_a_line_at_a_time_would(
    tmp_path_factory, lines, world_rank, polls, newline_at_end
):
    # The model: a poll returns this rank's next non-blank lines, and its
    # position is the line after its last record, or the end once it runs short.
    world, rank = world_rank
    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end and lines else b""))
    stored = len(lines) if newline_at_end or not lines or lines[-1] else len(lines) - 1
    mine = [
        (i, line.rstrip(b"\r\n"))
        for i, line in enumerate(lines[:stored])
        if i % world == rank and line.strip()
    ]
    source = FileSource(path, rank=rank, world=world)
    at = 0  # the model's next line
    for size, seek in polls:
        if seek is not None:
            seek = min(seek, stored)
            source.seek({source.key: seek})
            at = seek
        expected = [(i, v) for i, v in mine if i >= at][:size]
        got = [(r.offset, r.value) for r in source.poll(size)]
        assert got == expected
        if size and len(got) == size:
            at = got[-1][0] + 1
        elif size:
            at = stored
            assert source.exhausted
        assert source.positions() == {source.key: at}
    source.close()


# -- how far the child reads ahead ------------------------------------------------


def _read_within(source, at_least: int, timeout_s: float = 30.0) -> int:
    return poll_until(source.read, lambda read: read >= at_least, timeout_s, 0.02)


def test_a_poll_larger_than_the_pipe_has_the_child_read_that_many_ahead(tmp_path):
    from headrace.stream.reader_process import CHUNK_RECORDS, PIPE_RECORDS
    from tests.counting_reader import CountingSource

    batch = 4 * PIPE_RECORDS
    with CountingSource(tmp_path / "count") as source:
        assert [r.offset for r in source.poll(batch)] == list(range(batch))
        # A batch ahead besides the pipe's, while this process takes nothing.
        assert _read_within(source, 2 * batch) >= 2 * batch
        time.sleep(0.5)
        assert source.read() <= 2 * batch + PIPE_RECORDS + CHUNK_RECORDS
        # In order, and what was read ahead is dropped by a seek.
        assert [r.offset for r in source.poll(batch)] == list(range(batch, 2 * batch))
        source.seek({"n": 5})
        assert [r.offset for r in source.poll(3)] == [5, 6, 7]


def test_polls_the_pipe_holds_keep_the_child_at_the_pipe(tmp_path):
    from headrace.stream.reader_process import CHUNK_RECORDS, PIPE_RECORDS
    from tests.counting_reader import CountingSource

    with CountingSource(tmp_path / "count") as source:
        assert len(source.poll(PIPE_RECORDS)) == PIPE_RECORDS
        assert _read_within(source, PIPE_RECORDS + CHUNK_RECORDS) >= PIPE_RECORDS + CHUNK_RECORDS
        time.sleep(0.5)
        assert source.read() <= 2 * PIPE_RECORDS + CHUNK_RECORDS
