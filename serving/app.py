"""The HTTP API of a serving worker (FastAPI)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from headrace.serving.params import ParameterState
from headrace.serving.scorer import Scorer
from headrace.stream import Batch, Record

__all__ = ["PredictRequest", "PredictResponse", "create_app"]

MAX_EVENTS = 10_000


class PredictRequest(BaseModel):
    """Events in the event schema; ``label`` is not needed."""

    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_EVENTS)


class PredictResponse(BaseModel):
    """Click probabilities, one per event, all computed at ``version``."""

    version: int
    scores: list[float]


class VersionResponse(BaseModel):
    version: int | None
    event_time: float
    rows: dict[str, int]


_BEARER = HTTPBearer(auto_error=False, description="The worker's API token.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


class _RequireToken:
    """A dependency that lets a request through only with ``Authorization: Bearer <token>``."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def __call__(self, credentials: Credentials) -> None:
        if self._token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), self._token.encode()):
            raise HTTPException(
                401, "missing or wrong API token", headers={"WWW-Authenticate": "Bearer"}
            )


def create_app(
    state: ParameterState[Scorer], registry: CollectorRegistry, token: str | None = None
) -> FastAPI:
    """The worker's API over ``state``, with its metrics in ``registry``.

    With ``token`` every route but ``/healthz`` and ``/readyz`` (probes,
    which reveal nothing) requires ``Authorization: Bearer <token>``.
    """
    app = FastAPI(
        title="headrace serving",
        summary="Scores events with the newest parameters synced from the trainer.",
    )
    authorized = [Depends(_RequireToken(token))]
    requests = Counter(
        "headrace_serving_requests", "HTTP requests by status code.", ["code"], registry=registry
    )
    duration = Histogram(
        "headrace_serving_request_duration_seconds",
        "Time to answer an HTTP request.",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    )

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        requests.labels(str(response.status_code)).inc()
        duration.observe(time.perf_counter() - started)
        return response

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=authorized)
    async def predict(body: PredictRequest) -> PredictResponse:
        """Score events against one parameter version, named in the response."""
        # Scoring takes about a millisecond, so it runs on the event loop:
        # a thread pool would only add thread start-ups and lock contention
        # in a process whose Python code runs on one core anyway.
        if not state.ready:
            raise HTTPException(503, "no parameters yet: waiting for the first snapshot")
        with state.read() as view:
            scorer = view.model
            batch = _parse(scorer, body.events)
            inputs = scorer.embed(batch, view.lookup)
            version = view.version
        scores = scorer.predict(inputs, batch)
        return PredictResponse(version=version, scores=np.asarray(scores).tolist())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, Any]:
        """Ready once a snapshot has been applied."""
        if not state.ready:
            response.status_code = 503
        return {"ready": state.ready, "version": state.version}

    @app.get("/v1/version", response_model=VersionResponse, dependencies=authorized)
    def version() -> VersionResponse:
        """The version served, the event time it reaches and its rows per slot."""
        return VersionResponse(
            version=state.version, event_time=state.event_time, rows=state.rows()
        )

    @app.get("/metrics", dependencies=authorized)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _parse(scorer: Scorer, events: list[dict[str, Any]]) -> Batch:
    """A batch of the request's events, or a 422 naming every bad one."""
    try:
        records = [Record("request", i, orjson.dumps(e)) for i, e in enumerate(events)]
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise HTTPException(422, {"message": f"an event cannot be encoded: {exc}"}) from exc
    result = scorer.parser.parse(records, {})
    if result.dead_letters:
        problems = [
            {"event": letter.offset, "reason": str(letter.reason), "detail": letter.detail}
            for letter in result.dead_letters
        ]
        raise HTTPException(
            422, {"message": "some events break the event schema", "errors": problems}
        )
    return result.batch
