"""Config loading: defaults, TOML, environment overrides and errors that name the key."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from headrace.cli import app
from headrace.config import ConfigError, env_overrides, load_config
from headrace.trainer import TrainerConfig, load_trainer_config


def test_defaults_fit_the_synthetic_events():
    config = load_trainer_config()
    assert config.model.kind == "deepfm"
    assert {s.name for s in config.slots} >= {"user_id", "item_id", "tags"}
    assert config.model.dense_features == ("price", "ctx_score")


def test_file_then_environment(tmp_path, monkeypatch):
    path = tmp_path / "t.toml"
    path.write_text('batch_size = 128\n[model]\nkind = "fm"\nhidden = [32]\n')
    monkeypatch.setenv("HEADRACE_TRAINER__BATCH_SIZE", "16")
    monkeypatch.setenv("HEADRACE_TRAINER__DRIFT__DETECTOR", "page_hinkley")
    config = load_trainer_config(path)
    assert config.batch_size == 16  # the environment beats the file
    assert config.model.kind == "fm" and config.model.hidden == (32,)
    assert config.drift.detector == "page_hinkley"


def test_environment_values_parse_as_toml_or_strings():
    environ = {"P__A": "[1, 2]", "P__B__C": "true", "P__D": "plain text", "OTHER": "1"}
    assert env_overrides("P__", environ) == {"a": [1, 2], "b": {"c": True}, "d": "plain text"}


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("batch_sise = 64\n", "batch_sise"),
        ("[model]\nkind = 'deepfm'\nhiden = [8]\n", "model.hiden"),
        ("[[slots]]\nname = 'a'\ndimension = 4\n", "slots.0.dimension"),
    ],
)
def test_unknown_key_is_named(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_trainer_config(path)


def test_unknown_environment_key_is_named(monkeypatch):
    monkeypatch.setenv("HEADRACE_TRAINER__MODEL__KINDS", "lr")
    with pytest.raises(
        ConfigError, match=r"model.kinds: unknown key \(set by HEADRACE_TRAINER__MODEL__KINDS\)"
    ):
        load_trainer_config()


def test_invalid_value_and_inconsistent_slots(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("batch_size = 0\n")
    with pytest.raises(ConfigError, match="batch_size: Input should be greater than or equal"):
        load_trainer_config(path)
    path.write_text("[[slots]]\nname = 'a'\ndim = 4\n[[slots]]\nname = 'b'\ndim = 8\n")
    with pytest.raises(ConfigError, match="share one dim"):
        load_trainer_config(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        load_config(TrainerConfig, tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("batch_size = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(TrainerConfig, broken)


def test_cli_fails_at_start_naming_the_bad_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[drift]\ndetektor = 'adwin'\n")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--source",
            "synthetic://?events=10",
            "--data-dir",
            str(tmp_path / "d"),
            "--config",
            str(path),
        ],
    )
    assert result.exit_code == 2
    assert "drift.detektor: unknown key" in result.output
    assert not (tmp_path / "d").exists()  # nothing was created


def test_cli_rejects_a_bad_source_url(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "--source", "synthetic://?events=ten", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "events='ten' must be an integer" in result.output


@pytest.mark.parametrize(
    ("flag", "env", "message"),
    [
        (["--dead-letters", "topic"], {}, "use --dead-letters file"),
        ([], {"HEADRACE_TRAINER__DEAD_LETTERS": "topic"}, "use --dead-letters file"),
        (["--dead-letters", "kafka"], {}, "expected topic, file or auto, not 'kafka'"),
        ([], {"HEADRACE_TRAINER__DEAD_LETTERS": "kafka"}, "dead_letters"),
    ],
)
def test_a_dead_letter_topic_needs_a_kafka_source(tmp_path, monkeypatch, flag, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        app,
        ["train", "--source", "synthetic://?events=10", "--data-dir", str(tmp_path), *flag],
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
