"""SIGKILL the joiner at random moments: the trainer still trains every joined example once."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from headrace.stream import (
    FileSource,
    LogSink,
    SyntheticConfig,
    TwoStreamConfig,
    TwoStreamGenerator,
)
from headrace.trainer import Trainer, load_trainer_config
from tests.trainer.conftest import SMALL_CONFIG, run_cli
from tests.trainer.killing import kill_at_progress

IMPRESSIONS = 60_000


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def _labels(path: Path) -> tuple[dict[str, int], int]:
    """event_id -> label of an output file (checking repeats agree), and its line count."""
    labels: dict[str, int] = {}
    lines = path.read_text().splitlines()
    for line in lines:
        event = json.loads(line)
        assert labels.setdefault(event["event_id"], event["label"]) == event["label"]
    return labels, len(lines)


def test_joiner_killed_three_times_then_trainer_trains_each_example_once(tmp_path):
    generator = TwoStreamGenerator(
        TwoStreamConfig(SyntheticConfig(seed=4), mean_delay_s=60.0, window_s=300.0)
    )
    imps, acts = LogSink(tmp_path / "imps.jsonl"), LogSink(tmp_path / "acts.jsonl")
    generator.write(IMPRESSIONS, imps, acts)
    imps.close()
    acts.close()
    with (tmp_path / "imps.jsonl").open("a") as f:
        f.write("not json\n")  # a bad record among good ones

    def args(name: str) -> list[str]:
        return [
            "join",
            "--impressions", f"file://{tmp_path}/imps.jsonl",
            "--actions", f"file://{tmp_path}/acts.jsonl",
            "--out", f"file://{tmp_path}/{name}.jsonl",
            "--data-dir", str(tmp_path / name),
            "--window", "300",
            "--until-end",
        ]  # fmt: skip

    # Several cycles between commits, so that kills land after output that
    # was written but not committed: the restart emits it again.
    env = os.environ | {"HEADRACE_JOIN__COMMIT_EVERY_S": "0.5"}
    killed_out = tmp_path / "killed.jsonl"
    rng = random.Random(3)
    targets = sorted(rng.uniform(0.1, 0.8) * IMPRESSIONS for _ in range(3))
    kill_at_progress(args("killed"), lambda: _lines(killed_out), targets, rng, env)
    killed_summary = run_cli(*args("killed"))
    clean_summary = run_cli(*args("clean"))

    clean, clean_lines = _labels(tmp_path / "clean.jsonl")
    killed, killed_lines = _labels(killed_out)
    assert clean_lines == len(clean) == IMPRESSIONS
    assert killed == clean  # same events, same labels
    # Each restart cut the output back to its last commit: no line twice.
    assert killed_lines == IMPRESSIONS
    late = [
        sorted((tmp_path / name / "late_actions.jsonl").read_bytes().splitlines())
        for name in ("killed", "clean")
    ]
    late_count = sum(v for k, v in killed_summary.items() if k.startswith("late_"))
    assert late[0] == late[1] and len(late[0]) == late_count > 0
    assert killed_summary["impressions"] == clean_summary["impressions"] == IMPRESSIONS
    letters = (tmp_path / "killed" / "dead_letters" / "impressions.jsonl").read_text()
    assert [json.loads(line)["reason"] for line in letters.splitlines()] == ["not_json"]

    (tmp_path / "trainer.toml").write_text(SMALL_CONFIG)
    config = load_trainer_config(tmp_path / "trainer.toml")
    with Trainer.open(config, tmp_path / "trained", FileSource(killed_out)) as trainer:
        summary = trainer.run()
    assert summary.trained == IMPRESSIONS
    assert trainer.state.duplicates == 0
