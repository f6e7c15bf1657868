"""The trainer's HTTP port: Prometheus ``/metrics``, a drift ``/dashboard`` and its JSON.

The dashboard is HTML with SVG charts drawn here on the server, so it needs
no JavaScript and no internet (no CDN); it reloads itself every few seconds.
Charts run over event time and show rolling AUC and log loss with drift
detections marked, label rate, ingest rate, consumer lag, embedding rows and
admitted / filtered / expired ids per slot, the published sync version and
each serving worker's version and sync lag (polled from the workers'
``/metrics`` by :class:`WorkerPoller`; the trainer imports nothing of serving)
and, when the trainer is given joiners, each joiner's joined events/s,
pending impressions, early actions, late share and window occupancy (polled
by :class:`JoinerPoller`).
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import math
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from headrace.trainer.history import (
    DriftMark,
    JoinerStatus,
    Sample,
    TrainingHistory,
    WorkerStatus,
)

__all__ = ["DashboardServer", "JoinerPoller", "WorkerPoller", "render_dashboard"]

S = TypeVar("S", WorkerStatus, JoinerStatus)

log = logging.getLogger(__name__)

#: Seconds between reloads of the dashboard page.
REFRESH_S = 3
#: Points drawn per series at most; longer series are thinned evenly.
MAX_POINTS = 600
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#d62728",
)
_WIDTH, _HEIGHT = 520, 190
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 12, 10, 26

Points = list[tuple[float, float]]


# -- serving workers -----------------------------------------------------------


def open_url(url: str, timeout_s: float, token: str | None = None) -> Any:
    """``urllib.request.urlopen`` of ``url``, with ``token`` as a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (always, without a token).

    Takes ``Bearer <token>`` (Prometheus, scripts) and HTTP Basic with any
    user name and the token as password (a browser's login prompt).
    """
    if token is None:
        return True
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(value.encode(), token.encode())


class _MetricsPoller(Generic[S]):
    """Polls processes' ``/metrics`` in a thread; :meth:`read` turns the values into a status.

    Parameters
    ----------
    urls
        Base URLs, e.g. ``http://127.0.0.1:8000``.
    every_s
        Seconds between polls.
    timeout_s
        How long one process may take to answer before it counts as down.
    token
        The API token, sent as a bearer token.
    """

    #: The status of a process that does not answer.
    down: S

    def __init__(
        self,
        urls: Sequence[str],
        every_s: float = 1.0,
        timeout_s: float = 1.0,
        token: str | None = None,
    ) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self.every_s = every_s
        self.timeout_s = timeout_s
        self._token = token
        self._status: dict[str, S] = dict.fromkeys(self.urls, self.down)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        name = f"{type(self).__name__.lower()}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)

    def status(self) -> dict[str, S]:
        """The latest status of every process, by URL."""
        with self._lock:
            return dict(self._status)

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                status = self.poll(url)
                with self._lock:
                    self._status[url] = status
            self._stop.wait(self.every_s)

    def poll(self, url: str) -> S:
        """One process's status now; :attr:`down` when it does not answer."""
        try:
            with open_url(f"{url}/metrics", self.timeout_s, self._token) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError):
            return self.down
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # Labelled series of one name are added up.
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return self.read(values)

    def read(self, values: Mapping[str, float]) -> S:
        raise NotImplementedError


class WorkerPoller(_MetricsPoller[WorkerStatus]):
    """Polls serving workers' ``/metrics`` for their version and sync lag."""

    down = WorkerStatus(up=False)

    def read(self, values: Mapping[str, float]) -> WorkerStatus:
        version = values.get("headrace_serving_version")
        lag = values.get("headrace_serving_sync_lag_seconds")
        # The worker reports version 0 before it has applied a snapshot.
        return WorkerStatus(
            up=True,
            version=int(version) if version else None,
            lag_s=round(lag, 3) if lag is not None and version else None,
        )


class JoinerPoller(_MetricsPoller[JoinerStatus]):
    """Polls joiners' (``headrace join --metrics-port``) ``/metrics`` for their figures."""

    down = JoinerStatus(up=False)

    def read(self, values: Mapping[str, float]) -> JoinerStatus:
        def total(name: str) -> int | None:
            value = values.get(name)
            return None if value is None else int(value)

        occupancy = values.get("headrace_join_window_occupancy_ratio")
        return JoinerStatus(
            up=True,
            emitted=total("headrace_join_emitted_events_total"),
            actions=total("headrace_join_actions_total"),
            late=total("headrace_join_late_actions_total"),
            pending=total("headrace_join_pending_impressions"),
            early=total("headrace_join_early_actions"),
            occupancy=None if occupancy is None else round(occupancy, 4),
        )


# -- charts --------------------------------------------------------------------


def _thin(points: Points) -> Points:
    if len(points) <= MAX_POINTS:
        return points
    step = math.ceil(len(points) / MAX_POINTS)
    return points[::step] if points[-1] == points[::step][-1] else [*points[::step], points[-1]]


def _fmt_value(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3f}" if magnitude < 10 else f"{value:.1f}"


def _fmt_time(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%m-%d %H:%M" if span > 86400 else "%H:%M:%S")


def _range(values: Sequence[float]) -> tuple[float, float]:
    """The y range: the data with a margin, never below 0 for counts and rates."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 if high - low >= 1e-12 else abs(high) * 0.05 or 1.0
    return (max(low - pad, 0.0) if low >= 0 else low - pad), high + pad


def line_chart(
    chart_id: str,
    title: str,
    series: Mapping[str, Points],
    drifts: Sequence[DriftMark] = (),
) -> str:
    """A titled SVG line chart over event time, with optional drift markers.

    Every series is a ``<polyline class="series">`` whose ``data-points``
    attribute says how many points it holds; drift detections are red
    dashed vertical lines (``class="drift"``) with the signal as tooltip.
    """
    drawn = {name: _thin(points) for name, points in series.items() if points}
    total = sum(len(points) for points in drawn.values())
    head = (
        f'<figure class="chart" id="chart-{chart_id}" data-chart="{chart_id}" '
        f'data-points="{total}"><figcaption>{html.escape(title)}</figcaption>'
    )
    if not drawn:
        return f'{head}<p class="empty">no data yet</p></figure>'
    xs = [x for points in drawn.values() for x, _ in points]
    x_low, x_high = min(xs), max(xs)
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 1.0, x_high + 1.0
    y_low, y_high = _range([y for points in drawn.values() for _, y in points])
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return _TOP + (1.0 - (y - y_low) / (y_high - y_low)) * plot_h

    parts = [
        f'<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" height="{_HEIGHT}" '
        'xmlns="http://www.w3.org/2000/svg" role="img">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = y_low + fraction * (y_high - y_low)
        y = sy(value)
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" class="ytick">{_fmt_value(value)}</text>'
        )
    span = x_high - x_low
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        x = x_low + fraction * span
        parts.append(
            f'<text x="{sx(x):.1f}" y="{_HEIGHT - 8}" text-anchor="{anchor}" '
            f'class="xtick">{_fmt_time(x, span)}</text>'
        )
    for mark in drifts:
        if x_low <= mark.event_time <= x_high:
            x = sx(mark.event_time)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" class="drift">'
                f"<title>drift: {html.escape(mark.signal)} ({html.escape(mark.detector)})</title>"
                "</line>"
            )
    legend = []
    for k, (name, points) in enumerate(drawn.items()):
        color = _PALETTE[k % len(_PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-series="{html.escape(name)}" '
            f'data-points="{len(points)}" stroke="{color}" points="{coords}"/>'
        )
        if len(points) == 1:
            parts.append(
                f'<circle cx="{coords.split(",")[0]}" cy="{coords.split(",")[1]}" '
                f'r="2.5" fill="{color}"/>'
            )
        legend.append(f'<span style="color:{color}">&#9632; {html.escape(name)}</span>')
    parts.append("</svg>")
    return f'{head}{"".join(parts)}<div class="legend">{" ".join(legend)}</div></figure>'


def _series(samples: Sequence[Sample], value: str) -> Points:
    """(event time, value) of every sample where the field is known."""
    points = []
    for sample in samples:
        y = getattr(sample, value)
        if y is not None:
            points.append((sample.event_time, float(y)))
    return points


def _per_slot(samples: Sequence[Sample], value: str) -> dict[str, Points]:
    slots: dict[str, Points] = {}
    for sample in samples:
        for slot, y in getattr(sample, value).items():
            slots.setdefault(slot, []).append((sample.event_time, float(y)))
    return slots


def _per_worker(samples: Sequence[Sample], value: str) -> dict[str, Points]:
    workers: dict[str, Points] = {}
    for sample in samples:
        for url, status in sample.workers.items():
            points = workers.setdefault(url.removeprefix("http://"), [])
            y = getattr(status, value)
            if y is not None:
                points.append((sample.event_time, float(y)))
    return workers


def _per_joiner(samples: Sequence[Sample], value: str) -> dict[str, Points]:
    joiners: dict[str, Points] = {}
    for sample in samples:
        for url, status in sample.joiners.items():
            points = joiners.setdefault(url.removeprefix("http://"), [])
            y = getattr(status, value)
            if y is not None:
                points.append((sample.event_time, float(y)))
    return joiners


def _joiner_rates(samples: Sequence[Sample]) -> dict[str, Points]:
    """Each joiner's emitted events per wall second, between consecutive samples."""
    rates: dict[str, Points] = {}
    last: dict[str, tuple[float, int]] = {}
    for sample in samples:
        for url, status in sample.joiners.items():
            if status.emitted is None:
                continue
            before = last.get(url)
            last[url] = (sample.wall_time, status.emitted)
            if before is not None and sample.wall_time > before[0]:
                rate = (status.emitted - before[1]) / (sample.wall_time - before[0])
                rates.setdefault(url.removeprefix("http://"), []).append(
                    (sample.event_time, max(rate, 0.0))
                )
    return rates


def _late_shares(samples: Sequence[Sample]) -> dict[str, Points]:
    """Each joiner's late actions as a share of its actions (running totals)."""
    shares: dict[str, Points] = {}
    for sample in samples:
        for url, status in sample.joiners.items():
            if status.late is not None and status.actions:
                shares.setdefault(url.removeprefix("http://"), []).append(
                    (sample.event_time, status.late / status.actions)
                )
    return shares


def _joiner_section(samples: Sequence[Sample]) -> list[tuple[str, list[str]]]:
    """The joiner's charts, when the trainer polls joiners (``--joiner-url``)."""
    if not any(sample.joiners for sample in samples):
        return []
    waiting = _per_joiner(samples, "pending")
    early = {f"{url} early actions": p for url, p in _per_joiner(samples, "early").items()}
    pending = {f"{url} pending impressions": p for url, p in waiting.items()} | early
    charts = [
        line_chart("joined_rate", "Joined events/s", _joiner_rates(samples)),
        line_chart("joiner_pending", "Pending impressions, early actions", pending),
        line_chart("late_share", "Late actions (share of actions)", _late_shares(samples)),
        line_chart("occupancy", "Window occupancy", _per_joiner(samples, "occupancy")),
    ]
    return [("Online joiner", charts)]


def _all_ranks(samples: Sequence[Sample], *names: str) -> dict[str, Points]:
    """The named all-rank metrics of every sample that has them."""
    series: dict[str, Points] = {name.replace("_", " "): [] for name in names}
    for sample in samples:
        if sample.ranks is None:
            continue
        for name in names:
            y = sample.ranks.metrics.get(name)
            if y is not None:
                series[name.replace("_", " ")].append((sample.event_time, float(y)))
    return series


def _per_rank(samples: Sequence[Sample], value: str) -> dict[str, Points]:
    ranks: dict[str, Points] = {}
    for sample in samples:
        for rank, status in (sample.ranks.ranks if sample.ranks else {}).items():
            points = ranks.setdefault(f"rank {rank}", [])
            y = getattr(status, value)
            if y is not None:
                points.append((sample.event_time, float(y)))
    return ranks


def _ranks_section(samples: Sequence[Sample]) -> list[tuple[str, list[str]]]:
    """Metrics over all ranks' events and each rank's ingest (rank 0 of a distributed run)."""
    if not any(sample.ranks for sample in samples):
        return []
    charts = [
        line_chart("all_ranks_auc", "AUC, all ranks", _all_ranks(samples, "auc", "rolling_auc")),
        line_chart(
            "all_ranks_logloss",
            "Log loss, all ranks",
            _all_ranks(samples, "logloss", "rolling_logloss"),
        ),
        line_chart("rank_ingest", "Ingest per rank (events/s)", _per_rank(samples, "ingest_rate")),
        line_chart(
            "rank_lag", "Consumer lag per rank (records)", _per_rank(samples, "consumer_lag")
        ),
    ]
    return [("All ranks (progressive validation over every rank's events)", charts)]


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 18px 0 6px; }
.summary { border-collapse: collapse; margin: 8px 0; }
.summary td { padding: 2px 12px 2px 0; } .summary td:first-child { color: #666; }
.grid-charts { display: flex; flex-wrap: wrap; gap: 10px; }
figure.chart { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; }
figcaption { font-weight: 600; margin-bottom: 2px; }
.plot { fill: #fff; stroke: #ccc; } .grid { stroke: #eee; }
.ytick { font-size: 10px; text-anchor: end; fill: #555; } .xtick { font-size: 10px; fill: #555; }
polyline.series { fill: none; stroke-width: 1.6; }
line.drift { stroke: #d62728; stroke-width: 1.2; stroke-dasharray: 4 3; }
.legend { font-size: 11px; max-width: 520px; } .empty { color: #999; width: 520px; }
.drifts td { padding: 1px 10px 1px 0; font-size: 12px; } .muted { color: #777; }
"""


def _summary(samples: Sequence[Sample], drifts: Sequence[DriftMark]) -> str:
    if not samples:
        return '<p class="muted">Waiting for the first trained batches&hellip;</p>'
    last = samples[-1]

    def fmt(value: float | None, spec: str = ",.4f") -> str:
        return "&ndash;" if value is None else format(value, spec)

    workers = ", ".join(
        f"{html.escape(url.removeprefix('http://'))}: "
        + (
            "down"
            if not status.up
            else f"v{status.version} lag {fmt(status.lag_s, '.2f')} s"
            if status.version is not None
            else "waiting for a snapshot"
        )
        for url, status in last.workers.items()
    )
    rows = [
        ("event time", datetime.fromtimestamp(last.event_time, UTC).isoformat(" ", "seconds")),
        ("events trained", f"{last.trained:,}"),
        ("rolling AUC / log loss", f"{fmt(last.rolling_auc)} / {fmt(last.rolling_logloss)}"),
        *_ranks_summary(last, fmt),
        ("label rate", fmt(last.label_rate)),
        ("ingest", f"{last.ingest_rate:,.0f} events/s, consumer lag {fmt(last.consumer_lag, ',')}"),
        ("embedding rows", f"{sum(last.rows.values()):,}"),
        ("embedding table", _table_summary(last)),
        ("drift detections (this run)", str(len(drifts))),
        ("published sync version", fmt(last.sync_version, "d")),
        ("serving workers", workers or "&ndash;"),
    ]
    cells = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="summary">{cells}</table>'


def _ranks_summary(last: Sample, fmt: Callable[..., str]) -> list[tuple[str, str]]:
    """Summary rows of a distributed run's rank 0: all ranks' metrics and each rank's ingest."""
    if last.ranks is None:
        return []
    m = last.ranks.metrics
    ingest = ", ".join(
        f"rank {rank}: {status.ingest_rate:,.0f} events/s, lag {fmt(status.consumer_lag, ',')}"
        for rank, status in last.ranks.ranks.items()
    )
    return [
        ("AUC / log loss, all ranks", f"{fmt(m.get('auc'))} / {fmt(m.get('logloss'))}"),
        ("rolling, all ranks", f"{fmt(m.get('rolling_auc'))} / {fmt(m.get('rolling_logloss'))}"),
        ("ingest per rank", ingest),
    ]


def _table_summary(sample: Sample) -> str:
    """Where the rows are: all in memory, or the hot ones under a budget (and the hit ratio)."""
    if sample.memory_budget is None:
        return "every row in memory"
    looked_up = sample.cache_hits + sample.cache_misses
    ratio = f"{sample.cache_hits / looked_up:.1%}" if looked_up else "&ndash;"
    return (
        f"{sample.memory_rows:,} rows in memory (budget {sample.memory_budget:,} bytes), "
        f"the rest in RocksDB; cache hit ratio {ratio}"
    )


def _drift_table(drifts: Sequence[DriftMark]) -> str:
    if not drifts:
        return '<p class="muted">No drift detected in this run yet.</p>'
    rows = "".join(
        f"<tr><td>{datetime.fromtimestamp(d.event_time, UTC).isoformat(' ', 'seconds')}</td>"
        f"<td>{html.escape(d.signal)}</td><td>{html.escape(d.detector)}</td></tr>"
        for d in reversed(drifts[-20:])
    )
    head = "<tr><th>event time</th><th>signal</th><th>detector</th></tr>"
    return f'<table class="drifts">{head}{rows}</table>'


def render_dashboard(history: TrainingHistory) -> str:
    """The dashboard page for the history's current samples."""
    samples, drifts = history.samples(), history.drifts()
    published = _series(samples, "sync_version")
    versions = {"published": published} | {
        f"served by {url}": points for url, points in _per_worker(samples, "version").items()
    }
    sections = [
        (
            "Model quality (progressive validation, rolling window)",
            [
                line_chart("auc", "Rolling AUC", {"AUC": _series(samples, "rolling_auc")}, drifts),
                line_chart(
                    "logloss",
                    "Rolling log loss",
                    {"log loss": _series(samples, "rolling_logloss")},
                    drifts,
                ),
                line_chart(
                    "label_rate", "Label rate", {"label rate": _series(samples, "label_rate")}
                ),
            ],
        ),
        (
            "Ingest",
            [
                line_chart(
                    "ingest_rate",
                    "Ingest rate (events/s)",
                    {"events/s": _series(samples, "ingest_rate")},
                ),
                line_chart(
                    "consumer_lag",
                    "Consumer lag (records)",
                    {"lag": _series(samples, "consumer_lag")},
                ),
            ],
        ),
        (
            "Embedding table, per slot (admitted, filtered, expired: since the trainer started)",
            [
                line_chart("rows", "Rows", _per_slot(samples, "rows")),
                line_chart("admitted", "Admitted ids", _per_slot(samples, "admitted")),
                line_chart("filtered", "Filtered lookups", _per_slot(samples, "filtered")),
                line_chart("expired", "Expired rows", _per_slot(samples, "expired")),
            ],
        ),
        (
            "Parameter sync and serving",
            [
                line_chart("sync_version", "Sync version", versions),
                line_chart(
                    "serving_lag",
                    "Serving sync lag (s)",
                    _per_worker(samples, "lag_s"),
                ),
            ],
        ),
        *_ranks_section(samples),
        *_joiner_section(samples),
    ]
    body = "".join(
        f'<h2>{html.escape(title)}</h2><div class="grid-charts">{"".join(charts)}</div>'
        for title, charts in sections
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        f"<title>headrace drift dashboard</title><style>{_STYLE}</style></head><body>"
        "<h1>headrace &mdash; drift dashboard</h1>"
        f'<p class="muted">Over event time; red dashed lines are drift detections. '
        f'Reloads every {REFRESH_S} s. Series as JSON: <a href="/api/history">/api/history</a>, '
        'Prometheus: <a href="/metrics">/metrics</a>.</p>'
        f"{_summary(samples, drifts)}{body}<h2>Recent drift detections</h2>"
        f"{_drift_table(drifts)}</body></html>"
    )


# -- the HTTP server -----------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if not authorized(self.headers.get("Authorization"), self.server.token):
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="headrace", charset="UTF-8"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/dashboard":
            page = render_dashboard(self.server.history).encode()
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page)
        elif path == "/api/history":
            last = parse_qs(query).get("last", [""])[-1]
            if last and not last.isdigit():
                body = b"last= takes a number of samples\n"
                self._send(HTTPStatus.BAD_REQUEST, "text/plain; charset=utf-8", body)
                return
            history = self.server.history.to_json(int(last) if last else None)
            self._send(HTTPStatus.OK, "application/json", json.dumps(history).encode())
        elif path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/dashboard")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = b"not found: try /dashboard, /metrics or /api/history\n"
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", body)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Prometheus scrapes every few seconds: access lines would drown the log.
        log.debug(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry | Collector,
        history: TrainingHistory,
        token: str | None,
    ) -> None:
        self.registry = registry
        self.history = history
        self.token = token
        super().__init__(address, _Handler)


class DashboardServer:
    """Serves ``/metrics``, ``/dashboard`` and ``/api/history`` from a thread.

    Parameters
    ----------
    registry
        The trainer's (and publisher's) Prometheus registry (a rank's: with a rank label).
    history
        The samples the dashboard draws.
    host, port
        Where to listen; port 0 picks a free one (see :attr:`port`).
    token
        Required of every request when given: as a bearer token, or as the
        password of HTTP Basic (any user name) so that a browser can log in.

    Raises
    ------
    OSError
        When the address is taken or cannot be bound.
    """

    def __init__(
        self,
        registry: CollectorRegistry | Collector,
        history: TrainingHistory,
        host: str,
        port: int,
        token: str | None = None,
    ) -> None:
        self._server = _Server((host, port), registry, history, token)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
