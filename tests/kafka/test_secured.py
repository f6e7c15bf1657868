"""Kafka with TLS and SASL: every client through one set of settings, clear failures.

The TLS broker is Tansu behind a TLS-terminating proxy that requires a
client certificate (see :mod:`tests.kafka.tls`, which says why). The SASL
broker is Tansu itself with ``--authentication``; Tansu 0.6.0 with memory
storage cannot be given a user (creating one needs an authenticated
connection), so only the refusal of wrong credentials is tested against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from headrace.kafka_client import KafkaClientSettings, load_kafka_settings
from headrace.serving import ParameterState, SyncKey, SyncLoop
from headrace.serving.transport import KafkaReader
from headrace.stream import (
    BrokerUnavailable,
    CtrGenerator,
    KafkaSource,
    KafkaSourceConfig,
    SyntheticConfig,
    generate_events,
)
from headrace.tansu import TansuBroker, free_port
from tests.kafka.tls import Certificates, TlsProxy, make_certificates
from tests.trainer.conftest import SMALL_CONFIG, headrace_command

pytestmark = pytest.mark.kafka

EVENTS = 3000
KEY_PASSWORD = "key-passphrase-6f1c2e"
SYNC_KEY = "sync-key-3b9d7a41c05e8f26"
API_TOKEN = "api-token-9e4f0b7c2d"
SASL_PASSWORD = "sasl-password-c81f5e"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"), KEY_PASSWORD)


@pytest.fixture(scope="module")
def tls_bootstrap(tansu_binary, certificates):
    """HOST:PORT of a broker that takes only TLS with a client certificate."""
    proxy_port = free_port()
    broker = TansuBroker(tansu_binary, advertised_port=proxy_port)
    broker.start()
    proxy = TlsProxy(proxy_port, broker.port, certificates)
    proxy.start()
    try:
        yield f"127.0.0.1:{proxy_port}"
    finally:
        proxy.stop()
        broker.stop()


def _tls_env(certs: Certificates, **overrides: str) -> dict[str, str]:
    env = {
        "HEADRACE_KAFKA__SECURITY_PROTOCOL": "SSL",
        "HEADRACE_KAFKA__SSL_CAFILE": str(certs.ca),
        "HEADRACE_KAFKA__SSL_CERTFILE": str(certs.client_cert),
        "HEADRACE_KAFKA__SSL_KEYFILE": str(certs.client_key),
        "HEADRACE_KAFKA__SSL_PASSWORD": certs.client_key_password,
    }
    return env | overrides


def _run(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        headrace_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONHASHSEED": "0"} | env,
    )


def test_replay_train_and_sync_through_the_tls_broker(tmp_path, tls_bootstrap, certificates):
    log = tmp_path / "events.jsonl"
    generate_events(CtrGenerator(SyntheticConfig(seed=3)), EVENTS, log)
    config = tmp_path / "trainer.toml"
    # The settings from both places: the file's [kafka] table, the rest from the environment.
    config.write_text(f'{SMALL_CONFIG}\n[kafka]\nssl_cafile = "{certificates.ca}"\n')
    env = _tls_env(certificates) | {"HEADRACE_SYNC_KEY": SYNC_KEY, "HEADRACE_API_TOKEN": API_TOKEN}
    del env["HEADRACE_KAFKA__SSL_CAFILE"]
    events, params = f"kafka://{tls_bootstrap}/events", f"kafka://{tls_bootstrap}/params"

    replayed = _run("replay", str(log), "--to", events, "--config", str(config), env=env)
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert json.loads(replayed.stdout.splitlines()[-1])["acked"] == EVENTS

    trained = _run(
        "train",
        "--source",
        events,
        "--data-dir",
        str(tmp_path / "data"),
        "--config",
        str(config),
        "--until-end",
        "--publish",
        params,
        "--metrics-port",
        str(free_port()),
        env=env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.splitlines()[-1])["trained"] == EVENTS

    # A worker with the key and the TLS settings applies the signed updates.
    client = load_kafka_settings(config, environ=env)
    state = ParameterState(lambda meta, dense: dense)
    registry = CollectorRegistry()
    loop = SyncLoop(
        KafkaReader(tls_bootstrap, "params", client=client),
        state,
        registry=registry,
        key=SyncKey(SYNC_KEY.encode()),
    )
    deadline = time.monotonic() + 30
    while state.version is None and time.monotonic() < deadline:
        loop.step(timeout_s=0.5)
    loop.stop()
    assert state.version is not None and state.version >= 2
    assert registry.get_sample_value(
        "headrace_serving_rejected_updates_total", {"reason": "signature"}
    ) in (None, 0.0)

    served = _serve_until_synced(params, env, config, tmp_path / "serve.log")

    # No secret in anything the commands printed.
    printed = replayed.stdout + replayed.stderr + trained.stdout + trained.stderr + served
    for secret in (KEY_PASSWORD, SYNC_KEY, API_TOKEN):
        assert secret not in printed
    assert "signed (HMAC-SHA256)" in trained.stderr
    assert "only updates signed with the sync key" in served


def _serve_until_synced(params: str, env: dict[str, str], config: Path, log: Path) -> str:
    """Run two ``headrace serve`` workers until both serve a version; returns their output."""
    port = free_port()
    while free_port() == port + 1:
        port = free_port()
    command = headrace_command(
        "serve", "--params", params, "--port", str(port), "--workers", "2", "--config", str(config)
    )
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, env=os.environ | env)
    try:
        for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"):
            version = None
            deadline = time.monotonic() + 90
            while not version and time.monotonic() < deadline and process.poll() is None:
                version = _version(url)
                time.sleep(0.5)
            assert version, f"{url} never synced:\n{log.read_text()[-3000:]}"
            assert _status(f"{url}/v1/version", None) == 401  # the token is required
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return log.read_text()


def _status(url: str, token: str | None) -> int | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2):
            return 200
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _version(url: str) -> int | None:
    request = urllib.request.Request(
        f"{url}/v1/version", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())["version"]
    except OSError:
        return None


def _assert_fails_fast(settings: KafkaClientSettings, bootstrap: str, *names: str) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as failure:
        KafkaSource(KafkaSourceConfig(bootstrap, "events", client=settings, bootstrap_timeout_s=5))
    assert time.monotonic() - started < 15
    for name in names:
        assert name in str(failure.value)


def test_an_untrusted_broker_certificate_fails_at_start_naming_ssl_cafile(
    tls_bootstrap, certificates
):
    env = _tls_env(certificates, HEADRACE_KAFKA__SSL_CAFILE=str(certificates.other_ca))
    _assert_fails_fast(load_kafka_settings(environ=env), tls_bootstrap, "ssl_cafile", "trusted")


def test_a_missing_client_certificate_fails_at_start_naming_ssl_certfile(
    tls_bootstrap, certificates
):
    settings = KafkaClientSettings(security_protocol="SSL", ssl_cafile=certificates.ca)
    _assert_fails_fast(settings, tls_bootstrap, "ssl_certfile")


def test_plaintext_against_the_tls_listener_fails_at_start(tls_bootstrap):
    _assert_fails_fast(KafkaClientSettings(), tls_bootstrap, "security_protocol")


@pytest.fixture(scope="module")
def sasl_bootstrap(tansu_binary):
    """A Tansu broker that requires SASL authentication of every client."""
    broker = TansuBroker(tansu_binary, authentication=True)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.mark.parametrize("command", ["replay", "train", "serve"])
def test_a_wrong_sasl_password_fails_fast_naming_the_setting_and_never_printing_it(
    tmp_path, sasl_bootstrap, command
):
    env = {
        "HEADRACE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "HEADRACE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "HEADRACE_KAFKA__SASL_PLAIN_USERNAME": "headrace",
        "HEADRACE_KAFKA__SASL_PLAIN_PASSWORD": SASL_PASSWORD,
    }
    log = tmp_path / "events.jsonl"
    log.write_text('{"ts": 1, "sparse": {"a": 1}}\n')
    url = f"kafka://{sasl_bootstrap}/events"
    args = {
        "replay": ["replay", str(log), "--to", url],
        "train": ["train", "--source", url, "--data-dir", str(tmp_path / "data")],
        "serve": ["serve", "--params", url, "--port", str(free_port())],
    }[command]
    started = time.monotonic()
    done = _run(*args, env=env)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert "SASL authentication failed" in done.stderr
    assert "HEADRACE_KAFKA__SASL_PLAIN_PASSWORD" in done.stderr
    assert SASL_PASSWORD not in done.stdout + done.stderr
    # The bootstrap timeout (10 s) plus the interpreter's start, not a hang.
    assert elapsed < 40
