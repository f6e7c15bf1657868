"""``headrace train`` as a process: /metrics while it runs, SIGTERM, the JSON summary."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

from tests.tansu import free_port
from tests.trainer.conftest import headrace_command, run_cli, saved_training
from tests.trainer.test_loop import ISSUE_METRICS


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return response.read().decode()


def test_sigterm_checkpoints_and_exits_zero_with_metrics_served(tmp_path, small_config):
    port = free_port()
    data_dir = tmp_path / "d"
    proc = subprocess.Popen(
        headrace_command(
            "train",
            "--source",
            "synthetic://?seed=2",
            "--data-dir",
            str(data_dir),
            "--config",
            str(small_config),
            "--metrics-port",
            str(port),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        text = ""
        while "headrace_train_examples_total 0.0" in text or "examples_total" not in text:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
            try:
                text = _scrape(port)
            except OSError:
                continue
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err
    for name in ISSUE_METRICS:
        if name != "headrace_kafka_consumer_lag_records":  # only for Kafka sources
            assert f"# TYPE {name.removesuffix('_total')}" in text, name
    summary = json.loads(out.strip().splitlines()[-1])
    state, _, _ = saved_training(data_dir)
    assert summary["trained"] == state.trained > 0
    assert set(summary) >= {
        "events",
        "trained",
        "dead_letters",
        "auc",
        "logloss",
        "rows",
        "seconds",
    }


def test_a_finite_source_ends_with_exit_zero_and_resumes(tmp_path, small_config):
    args = ["train", "--data-dir", str(tmp_path), "--config", str(small_config)]
    first = run_cli(*args, "--source", "synthetic://?events=700&seed=4", "--max-events", "500")
    assert (first["events"], first["trained"]) == (500, 500)
    second = run_cli(*args, "--source", "synthetic://?events=700&seed=4")
    assert (second["events"], second["trained"]) == (200, 700)
    assert 0 < second["auc"] < 1 and second["rows"] > 0
