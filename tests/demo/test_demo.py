"""``headrace demo``: starts everything, stops everything it started, resumes where it left."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from headrace.cli import DASHBOARD_HISTORY
from headrace.tansu import free_port
from tests.demo.conftest import demo_command, get_json, require_tansu


def listening(url_or_port: str | int) -> bool:
    port = int(str(url_or_port).rsplit(":", 1)[-1].split("/")[0])
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def finish(process: subprocess.Popen[str], timeout_s: float = 150) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, f"exit {process.returncode}\n{err[-4000:]}"
    return out, err


def summary_of(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


def started_ports(err: str) -> list[str]:
    """Every address the demo announced: broker, dashboard, metrics, workers."""
    return re.findall(r"127\.0\.0\.1:\d+", err)


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_a_second_run_resumes(tmp_path: Path) -> None:
    require_tansu()
    data_dir = tmp_path / "data"
    port = free_port()
    first = subprocess.Popen(
        demo_command(data_dir, "--rate", "1000", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    trained = 0
    deadline = time.monotonic() + 150
    while trained < 3000:
        assert first.poll() is None, first.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the demo's trainer trained nothing in 150 s"
        try:
            samples = get_json(f"http://127.0.0.1:{port}/api/history?last=1")["samples"]
        except OSError:
            samples = []
        trained = samples[-1]["trained"] if samples else 0
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = finish(first)
    one = summary_of(out)
    assert "dashboard    http://127.0.0.1:" in err and "/v1/predict" in err
    addresses = started_ports(err)
    assert len(set(addresses)) >= 4, err  # broker, trainer, two workers
    assert not [a for a in set(addresses) if listening(a)], "a process outlived the demo"
    assert one["run"] == 1
    assert one["events_trained"] >= trained
    # The demo waits for the trainer to catch up before stopping it.
    assert one["events_trained"] == one["events_generated"] == one["trained_total"]
    assert one["sync_version"] >= 1 and one["rows"] > 0
    assert len(one["serving"]) == 2
    assert all(w["version"] >= 1 for w in one["serving"].values()), one

    second = subprocess.Popen(
        demo_command(data_dir, "--rate", "1000", "--duration", "4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = finish(second)
    two = summary_of(out)
    assert "run 2: the broker is new and empty" in err
    assert f"continues the synthetic stream at event {one['events_generated']:,}" in err
    assert two["run"] == 2
    assert two["events_trained"] > 0
    # The model went on from the first run's checkpoint.
    assert two["trained_total"] == one["trained_total"] + two["events_trained"]
    state = json.loads((data_dir / "demo.json").read_text())
    assert state["next_event"] == one["events_generated"] + two["events_generated"]
    # The dashboard's history holds both runs' samples.
    history = [json.loads(line) for line in (data_dir / DASHBOARD_HISTORY).open()]
    trained = [record["sample"]["trained"] for record in history if "sample" in record]
    assert trained == sorted(trained)
    assert trained[0] <= one["trained_total"] < trained[-1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate"),
        (["--duration", "0"], "--duration"),
        (["--config", "/nonexistent.toml"], "no config file at /nonexistent.toml"),
        (["--publish", "ftp://x"], "--publish"),
    ],
)
def test_bad_flags_fail_at_start(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("--data-dir", str(tmp_path), *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_another_world_in_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text(
        json.dumps({"runs": 1, "next_event": 500, "seed": 3, "drift_every": 100000})
    )
    result = run_cli("--data-dir", str(tmp_path), "--seed", "4")
    assert result.returncode == 2
    assert "made with --seed 3; pass --seed 3, or another --data-dir" in result.stderr


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    result = run_cli("--data-dir", str(path))
    assert result.returncode == 2
    assert "is a file; give a directory" in result.stderr


@pytest.mark.slow
def test_joiner_demo_trains_on_joined_impressions_and_serves(tmp_path: Path) -> None:
    require_tansu()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        demo_command(data_dir, "--joiner", "--join-window", "120", "--duration", "45"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = finish(process, timeout_s=240)
    summary = summary_of(out)
    assert "(joiner)" in err
    assert summary["events_trained"] > 0
    assert all(worker["version"] for worker in summary["serving"].values())
    # Every event the trainer read came out of the joiner, labelled and with an id.
    joiner = json.loads((data_dir / "logs" / "joiner.out").read_text().splitlines()[-1])
    assert joiner["positives"] > 0 and joiner["negatives"] > 0
    assert summary["trained_total"] <= joiner["positives"] + joiner["negatives"]
    # The trainer's dashboard polled the joiner (train --joiner-url).
    history = (data_dir / "dashboard_history.jsonl").read_text().splitlines()
    polled = [
        status
        for line in history
        for status in json.loads(line).get("sample", {}).get("joiners", {}).values()
    ]
    assert any(status["up"] and status["emitted"] > 0 for status in polled)
