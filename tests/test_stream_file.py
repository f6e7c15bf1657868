"""Replaying JSONL logs: order, resume, determinism and dead letters in a file."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from headrace.stream import EventStream, FileSource, JsonlDeadLetterSink


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
