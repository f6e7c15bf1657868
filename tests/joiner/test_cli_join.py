"""``headrace join`` as users run it: help, bad flags, metrics while running, a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from headrace.cli import app
from headrace.stream import KafkaSink, ensure_topic
from headrace.tansu import free_port
from headrace.trainer.dashboard import JoinerPoller
from tests.deploy.conftest import read_metric_list
from tests.trainer.conftest import headrace_command, run_cli

runner = CliRunner()


def test_help_names_the_inputs_modes_and_state():
    result = runner.invoke(app, ["join", "--help"])
    assert result.exit_code == 0
    for flag in ("--impressions", "--actions", "--out", "--window", "--negative-rate", "--ranks"):
        assert flag in result.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode", "sometimes"], "mode"),
        (["--negative-rate", "0"], "negative_rate"),
        (["--impressions", "http://x/y"], "file://PATH"),
        (["--rank", "2", "--ranks", "2"], "--ranks"),
    ],
)
def test_wrong_flags_fail_at_start_naming_what_to_fix(tmp_path, flags, message):
    (tmp_path / "i.jsonl").write_text("")
    (tmp_path / "a.jsonl").write_text("")
    base = {
        "--impressions": f"file://{tmp_path}/i.jsonl",
        "--actions": f"file://{tmp_path}/a.jsonl",
        "--out": f"file://{tmp_path}/o.jsonl",
        "--data-dir": str(tmp_path / "d"),
    }
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    args = [item for pair in (base | given).items() for item in pair]
    result = runner.invoke(app, ["join", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.kafka
def test_running_joiner_exports_every_listed_metric_and_stops_cleanly(
    kafka_bootstrap, topic_name, tmp_path
):
    imps, acts, out = topic_name("imps"), topic_name("acts"), topic_name("events")
    for topic in (imps, acts):
        ensure_topic(kafka_bootstrap, topic, 1)
    sink = KafkaSink(kafka_bootstrap, imps)
    for i in range(50):
        event = {"ts": i, "sparse": {"u": i}, "request_id": f"r{i}"}
        sink.send(json.dumps(event).encode())
    sink.send(b"not json")
    sink.close()
    sink = KafkaSink(kafka_bootstrap, acts)
    sink.send(json.dumps({"ts": 3, "request_id": "r1", "type": "click"}).encode())
    sink.close()
    port = free_port()
    args = [
        "join",
        "--impressions",
        f"kafka://{kafka_bootstrap}/{imps}",
        "--actions",
        f"kafka://{kafka_bootstrap}/{acts}",
        "--out",
        f"kafka://{kafka_bootstrap}/{out}",
        "--data-dir",
        str(tmp_path / "join"),
        "--window",
        "10",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(
        headrace_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        families = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.5)
                continue
            families = {f.name: f for f in text_string_to_metric_families(text) if f.samples}
            emitted = families.get("headrace_join_emitted_events")
            if emitted and sum(s.value for s in emitted.samples if s.name.endswith("_total")) > 0:
                break
            time.sleep(0.5)
        # What the trainer's dashboard reads of it (train --joiner-url).
        url = f"http://127.0.0.1:{port}"
        status = JoinerPoller([url]).poll(url)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    for spec in read_metric_list().values():
        if spec.exporter == "joiner":
            name = spec.name.removesuffix("_total") if spec.type == "counter" else spec.name
            assert name in families, f"{spec.name} is not exported"
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["impressions"] == 50 and summary["positives"] >= 1
    assert status.up and 1 <= status.emitted <= 50 and status.actions == 1
    assert status.pending is not None and status.early == 0 and status.late == 0
    assert summary["dead_impressions:not_json"] == 1


def test_generated_two_streams_join_through_kafka(kafka_bootstrap, topic_name, tmp_path):
    """`generate --actions-to` writes what `join` reads, as the compose file runs them."""
    imps, acts = topic_name("imps"), topic_name("acts")
    urls = [f"kafka://{kafka_bootstrap}/{t}" for t in (imps, acts)]
    generated = run_cli(
        "generate", "--events", "3000", "--seed", "5", "--mean-delay", "5",
        "--to", urls[0], "--actions-to", urls[1], "--partitions", "2",
    )  # fmt: skip
    assert generated["impressions"] == 3000 and 0 < generated["actions"] < 3000
    assert 0.5 < generated["bayes_auc"] < 1
    joined = run_cli(
        "join", "--impressions", urls[0], "--actions", urls[1],
        "--out", f"file://{tmp_path}/events.jsonl", "--data-dir", str(tmp_path / "join"),
        "--window", "3600", "--until-end",
    )  # fmt: skip
    assert joined["impressions"] == joined["closed"] == 3000
    # A 5 s mean delay within a 1 h window: every click joins.
    assert joined["positives"] == joined["actions"] == generated["actions"]
    assert "late_after_window" not in joined and "late_no_impression" not in joined


def test_generate_two_stream_logs_replay_into_the_joiner(tmp_path):
    """The compose file's way: two logs (replayed at a pace there), joined from files here."""
    imps, acts = tmp_path / "imps.jsonl.gz", tmp_path / "acts.jsonl.gz"
    generated = run_cli(
        "generate", "--events", "2000", "--seed", "5", "--mean-delay", "5",
        "--out", str(imps), "--actions-to", str(acts),
    )  # fmt: skip
    joined = run_cli(
        "join", "--impressions", f"file://{imps}", "--actions", f"file://{acts}",
        "--out", f"file://{tmp_path}/events.jsonl", "--data-dir", str(tmp_path / "join"),
        "--until-end",
    )  # fmt: skip
    assert joined["impressions"] == 2000
    assert joined["positives"] == joined["actions"] == generated["actions"] > 0


def test_generate_actions_to_names_what_it_takes(tmp_path):
    result = runner.invoke(
        app,
        ["generate", "--events", "5", "--out", str(tmp_path / "x.jsonl"), "--actions-to",
         str(tmp_path / "acts.txt")],
    )  # fmt: skip
    assert result.exit_code != 0 and "--actions-to" in result.output
