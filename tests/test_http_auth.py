"""The API token: the dashboard and the predict API refuse requests without it."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Gauge

from headrace.serving import ParameterState, create_app
from headrace.trainer.dashboard import DashboardServer, WorkerPoller
from headrace.trainer.history import TrainingHistory

TOKEN = "t0ken-for-tests-4c1d"


@pytest.fixture
def dashboard():
    registry = CollectorRegistry()
    Gauge("headrace_serving_version", "a worker's version, for the poller", registry=registry).set(
        7
    )
    server = DashboardServer(registry, TrainingHistory(), "127.0.0.1", 0, token=TOKEN)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.close()


def _status(url: str, authorization: str | None = None) -> int:
    headers = {"Authorization": authorization} if authorization else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("path", ["/dashboard", "/metrics", "/api/history", "/nope"])
def test_the_dashboard_requires_the_token(dashboard, path):
    assert _status(dashboard + path) == 401
    assert _status(dashboard + path, "Bearer wrong") == 401
    assert _status(dashboard + path, _basic("anyone", "wrong")) == 401
    expected = 404 if path == "/nope" else 200
    assert _status(dashboard + path, f"Bearer {TOKEN}") == expected
    # A browser's login prompt: any user name, the token as password.
    assert _status(dashboard + path, _basic("me", TOKEN)) == expected


def test_a_refusal_asks_the_browser_to_log_in(dashboard):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{dashboard}/dashboard", timeout=5)
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic")


def test_the_worker_poller_sends_the_token(dashboard):
    assert WorkerPoller([dashboard], token=TOKEN).poll(dashboard).version == 7
    assert WorkerPoller([dashboard]).poll(dashboard).up is False


def test_the_predict_api_requires_the_token_but_probes_do_not():
    client = TestClient(
        create_app(ParameterState(lambda meta, dense: dense), CollectorRegistry(), TOKEN)
    )
    body = {"events": [{"ts": 1, "sparse": {"user_id": "u"}}]}
    assert client.post("/v1/predict", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/v1/predict", json=body, headers=wrong).status_code == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    # Past the token check: no parameters yet.
    assert client.post("/v1/predict", json=body, headers=right).status_code == 503
    for path in ("/v1/version", "/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=right).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # not ready, but not refused
    # OpenAPI documents the scheme.
    assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_without_a_token_everything_stays_open():
    client = TestClient(create_app(ParameterState(lambda meta, dense: dense), CollectorRegistry()))
    assert client.get("/v1/version").status_code == 200
    assert client.get("/metrics").status_code == 200
