"""Kafka client settings: one model, from [kafka] and HEADRACE_KAFKA__*, secrets never shown."""

from __future__ import annotations

import pickle
import re

import pytest
from confluent_kafka import Producer
from kafka.net.sasl.oauth import SaslMechanismOAuth
from typer.testing import CliRunner

from headrace.cli import app
from headrace.config import ConfigError
from headrace.kafka_client import FileTokenProvider, KafkaClientSettings, load_kafka_settings
from headrace.trainer import load_trainer_config

SECRET = "p4ss-1e5-not-a-number"


def _sasl_env(**extra: str) -> dict[str, str]:
    return {
        "HEADRACE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "HEADRACE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "HEADRACE_KAFKA__SASL_PLAIN_USERNAME": "trainer",
        "HEADRACE_KAFKA__SASL_PLAIN_PASSWORD": SECRET,
    } | extra


def test_defaults_are_plaintext():
    assert KafkaClientSettings().client_options() == {"security_protocol": "PLAINTEXT"}
    assert load_kafka_settings(environ={}) == KafkaClientSettings()


def test_the_file_table_and_the_environment_give_kafka_python_options(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "headrace.toml"
    # The trainer's keys and the [kafka] table live in one file; each loader reads its part.
    config.write_text(f'batch_size = 64\n[kafka]\nssl_cafile = "{ca}"\n')
    settings = load_kafka_settings(config, environ=_sasl_env())
    assert settings.client_options() == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(ca),
        "ssl_certfile": None,
        "ssl_keyfile": None,
        "ssl_password": None,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "trainer",
        # Read verbatim: not the TOML float 1e5.
        "sasl_plain_password": SECRET,
    }
    assert load_trainer_config(config).batch_size == 64
    # Picklable, for the Kafka reader's child process.
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_the_same_settings_give_librdkafka_properties(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_kafka_settings(environ=_sasl_env(HEADRACE_KAFKA__SSL_CAFILE=str(ca)))
    assert settings.librdkafka_options() == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "trainer",
        "sasl.password": SECRET,
    }
    token = tmp_path / "token"
    token.write_text("token-1\n")
    oauth = KafkaClientSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=token,
    ).librdkafka_options()
    token.write_text("token-2\n")
    # librdkafka calls back for a token when it refreshes: the file as it is then.
    assert oauth["oauth_cb"]("")[0] == "token-2"
    # librdkafka knows every property name (a wrong one raises here).
    Producer(oauth | {"bootstrap.servers": "localhost:1"})


def test_secrets_never_show_in_repr_describe_or_errors(tmp_path):
    settings = load_kafka_settings(environ=_sasl_env())
    assert SECRET not in repr(settings) + str(settings) + settings.describe()
    assert settings.describe() == "SASL_SSL SCRAM-SHA-512 as trainer"
    with pytest.raises(ConfigError) as failure:
        load_kafka_settings(environ=_sasl_env(HEADRACE_KAFKA__SASL_MECHANISM="PLAINTEXT"))
    assert "sasl_mechanism" in str(failure.value) and SECRET not in str(failure.value)
    with pytest.raises(ConfigError) as failure:
        load_kafka_settings(environ=_sasl_env(HEADRACE_KAFKA__SECURITY_PROTOCOL="PLAINTEXT"))
    assert "use SASL_SSL" in str(failure.value) and SECRET not in str(failure.value)


def test_a_secret_in_the_config_file_is_refused_naming_the_key(tmp_path):
    config = tmp_path / "headrace.toml"
    config.write_text(f'[kafka]\nsasl_plain_password = "{SECRET}"\n')
    with pytest.raises(ConfigError) as failure:
        load_kafka_settings(config, environ={})
    message = str(failure.value)
    assert "sasl_plain_password: secrets are not read from config files" in message
    assert "sasl_plain_password_file" in message and SECRET not in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HEADRACE_KAFKA__SSL_CAFLE": "x"}, "ssl_cafle: unknown key (set by HEADRACE_KAFKA__"),
        ({"HEADRACE_KAFKA__SECURITY_PROTOCOL": "TLS"}, "security_protocol: Input should be"),
        (
            {"HEADRACE_KAFKA__SECURITY_PROTOCOL": "SSL", "HEADRACE_KAFKA__SSL_CAFILE": "/nope"},
            "ssl_cafile: no readable file at /nope",
        ),
        ({"HEADRACE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
        (
            {
                "HEADRACE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "HEADRACE_KAFKA__SASL_MECHANISM": "PLAIN",
            },
            "needs sasl_plain_username and HEADRACE_KAFKA__SASL_PLAIN_PASSWORD",
        ),
        (
            {
                "HEADRACE_KAFKA__SECURITY_PROTOCOL": "SSL",
                "HEADRACE_KAFKA__SSL_CHECK_HOSTNAME": "maybe",
            },
            "ssl_check_hostname",
        ),
    ],
)
def test_bad_settings_fail_naming_the_key(env, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_kafka_settings(environ=env)


def test_secret_files_are_read_when_a_client_is_built(tmp_path):
    password, token = tmp_path / "password", tmp_path / "token"
    password.write_text("first\n")
    token.write_text("token-1\n")
    settings = load_kafka_settings(
        environ={
            "HEADRACE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "HEADRACE_KAFKA__SASL_MECHANISM": "PLAIN",
            "HEADRACE_KAFKA__SASL_PLAIN_USERNAME": "u",
            "HEADRACE_KAFKA__SASL_PLAIN_PASSWORD_FILE": str(password),
        }
    )
    assert settings.client_options()["sasl_plain_password"] == "first"
    password.write_text("rotated")
    assert settings.client_options()["sasl_plain_password"] == "rotated"
    oauth = KafkaClientSettings(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_file=token
    )
    provider = oauth.client_options()["sasl_oauth_token_provider"]
    assert isinstance(provider, FileTokenProvider) and provider.token() == "token-1"
    assert pickle.loads(pickle.dumps(provider)).token() == "token-1"
    # kafka-python takes it, and sends what the file holds now.
    token.write_text("token-2\n")
    mechanism = SaslMechanismOAuth(**oauth.client_options())
    assert b"auth=Bearer token-2" in mechanism.auth_bytes()


@pytest.mark.parametrize("command", ["train", "serve", "replay", "generate", "demo"])
def test_help_names_the_settings_and_shows_no_secret(command, monkeypatch):
    monkeypatch.setenv("HEADRACE_KAFKA__SASL_PLAIN_PASSWORD", SECRET)
    monkeypatch.setenv("HEADRACE_SYNC_KEY", SECRET)
    monkeypatch.setenv("HEADRACE_API_TOKEN", SECRET)
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps help text at the terminal's width
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "[kafka]" in result.output and "HEADRACE_KAFKA__" in result.output
    assert SECRET not in result.output


def test_a_bad_kafka_setting_stops_the_cli_at_start_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADRACE_KAFKA__SASL_PLAIN_PASSWORD", SECRET)
    monkeypatch.setenv("HEADRACE_KAFKA__SECURITY_PROTOCL", "SSL")
    log = tmp_path / "events.jsonl"
    log.write_text('{"ts": 1, "sparse": {"a": 1}}\n')
    result = CliRunner().invoke(app, ["replay", str(log), "--to", "kafka://127.0.0.1:1/t"])
    assert result.exit_code == 2
    assert "security_protocl: unknown key" in result.output
    assert SECRET not in result.output


def test_the_demo_refuses_secured_settings_for_its_own_plaintext_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADRACE_KAFKA__SECURITY_PROTOCOL", "SSL")
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path), "--duration", "1"])
    assert result.exit_code == 2
    assert "the demo's own broker speaks plaintext" in result.output
    assert "--bootstrap-servers" in result.output


def test_a_sync_key_without_publish_is_refused(tmp_path):
    key = tmp_path / "sync.key"
    key.write_text("k" * 32)
    args = ["train", "--source", "synthetic://?events=10", "--data-dir", str(tmp_path / "d")]
    result = CliRunner().invoke(app, [*args, "--sync-key-file", str(key)])
    assert result.exit_code == 2
    assert "--sync-key-file" in result.output and "--publish" in result.output
