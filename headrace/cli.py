"""The ``headrace`` command line.

Nothing imports this module: it is where the packages are wired together.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from headrace import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector
    from rich.progress import Progress

    from headrace.distributed import TrainingRun
    from headrace.kafka_client import KafkaClientSettings
    from headrace.serving import ParameterPublisher, SyncKey
    from headrace.stream import KafkaSink, LogSink
    from headrace.trainer import Trainer
    from headrace.trainer.dashboard import DashboardServer, JoinerPoller, WorkerPoller
    from headrace.trainer.history import RanksStatus, TrainingHistory

#: The dashboard's samples, in the trainer's data dir so that they outlive a restart.
DASHBOARD_HISTORY = "dashboard_history.jsonl"

app = typer.Typer(
    help="headrace: online training of recommendation/CTR models from event streams.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"headrace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """headrace: online training of recommendation/CTR models from event streams."""


@app.command("inspect-store")
def inspect_store(
    data_dir: Annotated[Path, typer.Argument(help="An embedding store directory.")],
) -> None:
    """Print the slots, row counts and checkpoint blobs of an embedding store as JSON."""
    from headrace.embedding_store import EmbeddingStore, StoreError

    if not data_dir.is_dir():
        typer.echo(f"error: {data_dir} is not a directory; pass the store's data dir", err=True)
        raise typer.Exit(2)
    try:
        store = EmbeddingStore.open(data_dir, read_only=True)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    with store:
        stats = store.stats()
        report = {
            "path": str(data_dir),
            "slots": {s.name: s.model_dump(mode="json") for s in store.slots},
            "rows": stats.rows,
            "memory_bytes": stats.memory_bytes,
            "extra": {name: len(blob) for name, blob in store.extra.items()},
        }
    typer.echo(json.dumps(report, indent=2))


def _kafka_target(url: str) -> tuple[str, str]:
    from headrace.stream import parse_kafka_url

    try:
        return parse_kafka_url(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--to") from exc


def _kafka_settings(config: Path | None) -> KafkaClientSettings:
    """The [kafka] table of ``config`` and HEADRACE_KAFKA__* variables, or exit naming the key."""
    from headrace.config import ConfigError
    from headrace.kafka_client import load_kafka_settings

    try:
        return load_kafka_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def _sync_key(path: Path | None) -> SyncKey | None:
    """The key that signs parameter updates (--sync-key-file or HEADRACE_SYNC_KEY), if any."""
    from headrace.config import ConfigError
    from headrace.serving import SyncKey

    try:
        return SyncKey.load(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def _api_token(path: Path | None) -> str | None:
    """The bearer token of the HTTP endpoints (--api-token-file or HEADRACE_API_TOKEN), if any."""
    from headrace.config import API_TOKEN_ENV, ConfigError, read_secret

    try:
        return read_secret(path, API_TOKEN_ENV)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc


def _open_kafka_sink(url: str, partitions: int, kafka: KafkaClientSettings) -> KafkaSink:
    """Create the topic if needed and connect a sink, or exit with a clear error."""
    from headrace.stream import BrokerUnavailable, KafkaSink, ensure_topic

    bootstrap, topic = _kafka_target(url)
    try:
        ensure_topic(bootstrap, topic, partitions, client=kafka)
        return KafkaSink(bootstrap, topic, client=kafka)
    except BrokerUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _progress(description: str) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _finish(sink: KafkaSink) -> None:
    """Wait for every acknowledgement, or exit non-zero saying how many were lost."""
    from headrace.stream import DeliveryError

    try:
        sink.close()
    except DeliveryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


PartitionsOption = Annotated[
    int,
    typer.Option(min=1, help="Partitions of the topic, when it has to be created."),
]
KafkaConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file whose \\[kafka] table holds the Kafka TLS/SASL settings; "
        "HEADRACE_KAFKA__* variables override it (secrets only from those or a file).",
    ),
]
SyncKeyOption = Annotated[
    Path | None,
    typer.Option(
        help="File holding the key that signs parameter updates (HMAC-SHA256); "
        "else the HEADRACE_SYNC_KEY variable, else unsigned."
    ),
]
ApiTokenOption = Annotated[
    Path | None,
    typer.Option(
        help="File holding the bearer token the HTTP endpoints require; "
        "else the HEADRACE_API_TOKEN variable, else open."
    ),
]


@app.command()
def generate(
    events: Annotated[int, typer.Option(min=1, help="How many events to generate.")],
    seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Write a log here: FILE.jsonl or FILE.jsonl.gz."),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Produce to kafka://HOST:PORT/TOPIC.")
    ] = None,
    partitions: PartitionsOption = 1,
    config: KafkaConfigOption = None,
    actions_to: Annotated[
        str | None,
        typer.Option(
            "--actions-to",
            help="Two streams for `headrace join`: impressions (events without a label) "
            "to --to or --out, and each converting impression's click, a delay later in "
            "event time, to this kafka://HOST:PORT/TOPIC or FILE.jsonl[.gz]; Kafka "
            "messages keyed by request id.",
        ),
    ] = None,
    mean_delay: Annotated[
        float,
        typer.Option(min=0.001, help="--actions-to: mean delay of a click, seconds of event time."),
    ] = 600.0,
) -> None:
    """Generate synthetic CTR events and print the Bayes-optimal AUC of their labels."""
    from headrace.stream import CtrGenerator, SyntheticConfig, generate_events

    if (out is None) == (to is None):
        raise typer.BadParameter("give exactly one of --out FILE.jsonl[.gz] or --to kafka://...")
    if out is not None and not out.name.endswith((".jsonl", ".jsonl.gz")):
        raise typer.BadParameter(f"{out} must end in .jsonl or .jsonl.gz", param_hint="--out")
    if (
        actions_to is not None
        and not actions_to.startswith("kafka://")
        and not (actions_to.endswith((".jsonl", ".jsonl.gz")))
    ):
        raise typer.BadParameter(
            f"give kafka://HOST:PORT/TOPIC or FILE.jsonl[.gz], not {actions_to!r}",
            param_hint="--actions-to",
        )
    kafka = _kafka_settings(config)
    sink = _open_kafka_sink(to, partitions, kafka) if to is not None else None
    if actions_to is not None:
        imps = sink if sink is not None else out
        assert imps is not None
        _generate_two_streams(seed, events, mean_delay, imps, actions_to, partitions, kafka)
        return
    generator = CtrGenerator(SyntheticConfig(seed=seed))
    with _progress("generating") as progress:
        task = progress.add_task("generate", total=events)
        auc = generate_events(
            generator,
            events,
            out if sink is None else sink,
            on_progress=lambda n: progress.advance(task, n),
        )
    if sink is not None:
        _finish(sink)
    typer.echo(json.dumps({"events": events, "seed": seed, "bayes_auc": round(auc.value(), 6)}))


def _generate_two_streams(
    seed: int,
    impressions: int,
    mean_delay: float,
    imps: KafkaSink | Path,
    actions_to: str,
    partitions: int,
    kafka: KafkaClientSettings,
) -> None:
    """``generate --actions-to``: impressions to ``imps``, their clicks to ``actions_to``."""
    from headrace.stream import LogSink, SyntheticConfig, TwoStreamConfig, TwoStreamGenerator

    files: list[LogSink] = []
    kafka_sinks: list[KafkaSink] = []
    sinks = []
    for where in (imps, actions_to):
        if isinstance(where, str) and where.startswith("kafka://"):
            where = _open_kafka_sink(where, partitions, kafka)
        if isinstance(where, str | Path):
            files.append(LogSink(Path(where)))
            sinks.append(files[-1])
        else:
            kafka_sinks.append(where)
            sinks.append(where)
    actions = _CountingSink(sinks[1])
    config = TwoStreamConfig(SyntheticConfig(seed=seed), mean_delay_s=mean_delay)
    with _progress("generating impressions") as progress:
        task = progress.add_task("generate", total=impressions)
        auc = TwoStreamGenerator(config).write(
            impressions, sinks[0], actions, on_progress=lambda n: progress.advance(task, n)
        )
    for log in files:
        log.close()
    for topic in kafka_sinks:
        _finish(topic)
    report = {"impressions": impressions, "actions": actions.sent, "seed": seed}
    # The labels a joiner with this window makes (a click after it is late).
    report |= {"window_s": config.window_s, "bayes_auc": round(auc.value(), 6)}
    typer.echo(json.dumps(report))


class _CountingSink:
    """Counts the messages passed on to a Kafka or file sink."""

    def __init__(self, sink: KafkaSink | LogSink) -> None:
        self.sink = sink
        self.sent = 0

    def send(self, value: bytes, key: bytes | None = None) -> None:
        self.sink.send(value, key)
        self.sent += 1


@app.command()
def replay(
    log: Annotated[Path, typer.Argument(help="An event log, .jsonl or .jsonl.gz.")],
    to: Annotated[str, typer.Option("--to", help="Produce to kafka://HOST:PORT/TOPIC.")],
    speed: Annotated[
        float | None,
        typer.Option(help="Replay at X (> 0) times the pace of the events' own ts."),
    ] = None,
    max_: Annotated[bool, typer.Option("--max", help="As fast as possible (the default).")] = False,
    partitions: PartitionsOption = 1,
    config: KafkaConfigOption = None,
) -> None:
    """Produce a historical log into Kafka in order; exit 0 once every message is acknowledged."""
    from headrace.stream import open_log, replay_log

    if speed is not None and max_:
        raise typer.BadParameter("give --speed X or --max, not both")
    if speed is not None and speed <= 0:
        raise typer.BadParameter(f"must be > 0, not {speed}", param_hint="--speed")
    if not log.is_file():
        raise typer.BadParameter(f"no event log at {log}", param_hint="LOG")
    sink = _open_kafka_sink(to, partitions, _kafka_settings(config))
    with open_log(log) as lines:
        total = sum(1 for line in lines if line.strip())
    with _progress("replaying") as progress:
        task = progress.add_task("replay", total=total)
        sent = replay_log(log, sink, speed=speed, on_progress=lambda n: progress.advance(task, n))
    _finish(sink)
    typer.echo(json.dumps({"sent": sent, "acked": sink.acked, "topic": sink.topic}))


datasets = typer.Typer(
    help="Turn public data sets into event logs in headrace's schema.", no_args_is_help=True
)
app.add_typer(datasets, name="datasets")


@datasets.command("movielens")
def movielens(
    directory: Annotated[
        Path, typer.Argument(help="A MovieLens directory with ratings.csv and movies.csv.")
    ],
    out: Annotated[Path, typer.Option(help="The event log to write: FILE.jsonl[.gz].")],
    history: Annotated[
        int,
        typer.Option(
            min=0,
            help="Add hist_item_ids: the user's last N items before the event, newest first "
            "(20 is a good start; with --config-out, item_id and hist_item_ids share a table "
            "and the model is DIN).",
        ),
    ] = 0,
    config_out: Annotated[
        Path | None,
        typer.Option(help="Also write a trainer config (TOML) naming the events' slots."),
    ] = None,
) -> None:
    """Write MovieLens ratings as events in timestamp order (label: rating >= 4).

    Slots: user_id, item_id, genres (multi-valued), year, and with --history
    hist_item_ids. Get the data from https://grouplens.org/datasets/movielens/
    (its licence forbids redistribution outside its terms).
    """
    from headrace.stream import MOVIELENS_SLOTS, MovieLensError, movielens_events, write_log

    if not out.name.endswith((".jsonl", ".jsonl.gz")):
        raise typer.BadParameter(f"{out} must end in .jsonl or .jsonl.gz", param_hint="--out")
    try:
        events = movielens_events(directory, history=history)
        with _progress("converting") as progress:
            task = progress.add_task("convert", total=None)
            written = write_log(events, out, on_progress=lambda n: progress.advance(task, n))
    except MovieLensError as exc:
        raise _fail(str(exc)) from exc
    slots = MOVIELENS_SLOTS + (("hist_item_ids",) if history else ())
    if config_out is not None:
        # With a history, the items share one table and DIN attends over the history.
        shared = {"item_id", "hist_item_ids"} if history else set()
        entries = "".join(
            f'\n[[slots]]\nname = "{slot}"\n' + ('table = "item"\n' if slot in shared else "")
            for slot in slots
        )
        model = 'kind = "din"\n' if history else ""
        config_out.write_text(
            f"# Trainer config for {out.name} (headrace datasets movielens).\n"
            f"[model]\n{model}dense_features = []\n{entries}"
            + ('\n[[tables]]\nname = "item"\n' if history else "")
        )
    typer.echo(json.dumps({"events": written, "out": str(out), "slots": list(slots)}))


def _progress_line(trainer: Trainer, started: float, first_records: int) -> str:
    records = trainer.stream.records_read - first_records
    rate = records / max(time.monotonic() - started, 1e-9)
    m = trainer.metrics
    lag = sum(trainer.lag.values()) if trainer.lag else "-"
    return (
        f"training  {records:>10,} events  {rate:>9,.0f}/s  lag {lag}  "
        f"auc {m.rolling_auc():.4f} (run {m.auc():.4f})  "
        f"logloss {m.rolling_logloss():.4f}  rows {sum(trainer.store.stats().rows.values()):,}"
    )


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT finish the batch in progress, checkpoint and exit 0."""

    def handle(signum: int, _frame: object) -> None:
        logging.getLogger("headrace").warning(
            "received %s: finishing the batch and checkpointing", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command()
def train(
    source: Annotated[
        str,
        typer.Option(
            help="kafka://HOST:PORT/TOPIC, file://PATH.jsonl[.gz] or synthetic://?events=N&seed=S."
        ),
    ],
    data_dir: Annotated[
        Path, typer.Option(help="Store, checkpoints and dead letters; a rerun resumes here.")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="Trainer config (TOML); HEADRACE_TRAINER__* variables override it. "
            "Its \\[kafka] table (and HEADRACE_KAFKA__*) holds the Kafka TLS/SASL settings."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve Prometheus /metrics, the drift /dashboard and /api/history on this port.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            help="Interface of the --metrics-port server: all by default, as Prometheus "
            "exporters do; 127.0.0.1 keeps it local."
        ),
    ] = "0.0.0.0",
    api_token_file: ApiTokenOption = None,
    serving_url: Annotated[
        list[str] | None,
        typer.Option(
            help="A serving worker's base URL (repeatable); the dashboard shows its version "
            "and sync lag."
        ),
    ] = None,
    joiner_url: Annotated[
        list[str] | None,
        typer.Option(
            help="A joiner's --metrics-port base URL (repeatable); the dashboard shows its "
            "joined events/s, pending impressions, late actions and window occupancy."
        ),
    ] = None,
    max_events: Annotated[
        int | None, typer.Option(min=1, help="Stop after reading this many records in this run.")
    ] = None,
    deterministic: Annotated[
        bool,
        typer.Option(help="One thread, deterministic kernels, batches fixed by positions."),
    ] = False,
    until_end: Annotated[
        bool,
        typer.Option(help="Kafka: stop once every partition is read to its end."),
    ] = False,
    publish: Annotated[
        str | None,
        typer.Option(help="Sync parameters to serving: dir://PATH or kafka://HOST:PORT/TOPIC."),
    ] = None,
    sync_interval: Annotated[
        float, typer.Option(min=0.0, help="Seconds between deltas of changed rows.")
    ] = 1.0,
    dense_sync_interval: Annotated[
        float, typer.Option(min=0.0, help="Seconds between publishing dense weights.")
    ] = 30.0,
    snapshot_interval: Annotated[
        float, typer.Option(min=1.0, help="Seconds between full snapshots.")
    ] = 600.0,
    sync_key_file: SyncKeyOption = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train with N ranks on this machine: starts torchrun's launcher, which runs "
            "this command once per rank (several machines: torchrun ... -m headrace.cli train).",
        ),
    ] = None,
    max_restarts: Annotated[
        int,
        typer.Option(min=0, help="With --nproc: restart all ranks this often after a failure."),
    ] = 3,
    dead_letters: Annotated[
        str | None,
        typer.Option(
            help="Where bad records go: topic (<topic>.dlq; Kafka sources), file "
            "(DATA_DIR/dead_letters.jsonl) or auto (the topic for Kafka, else the file). "
            "Default: the config's dead_letters, auto."
        ),
    ] = None,
) -> None:
    """Train a model online from a stream; rerun on the same --data-dir to resume exactly.

    Prints a progress line on stderr and, last, one JSON summary on stdout
    (one per rank when distributed).
    """
    from prometheus_client import CollectorRegistry
    from rich.live import Live

    from headrace.config import ConfigError
    from headrace.distributed import DistributedError, TrainingRun, World
    from headrace.stream import BrokerUnavailable
    from headrace.trainer import SourceUrlError, TrainerError, load_trainer_config

    if nproc is not None and nproc > 1 and World.from_env() is None:
        raise typer.Exit(_launch_ranks(nproc, max_restarts))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for option, urls in (("--serving-url", serving_url), ("--joiner-url", joiner_url)):
        for url in urls or []:
            if not url.startswith(("http://", "https://")):
                raise typer.BadParameter(
                    f"{url!r} is not a URL; give http://HOST:PORT", param_hint=option
                )
    if publish is not None:
        _check_params_location(publish, "--publish")
    if dead_letters not in (None, "auto", "topic", "file"):
        raise typer.BadParameter(
            f"expected topic, file or auto, not {dead_letters!r}", param_hint="--dead-letters"
        )
    try:
        trainer_config = load_trainer_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    kafka = _kafka_settings(config)
    if sync_key_file is not None and publish is None:
        raise typer.BadParameter(
            "signs what --publish sends; give --publish too", param_hint="--sync-key-file"
        )
    key = _sync_key(sync_key_file) if publish is not None else None
    token = _api_token(api_token_file)
    registry = CollectorRegistry()
    try:
        run = TrainingRun.open(
            trainer_config,
            data_dir,
            source,
            until_end=until_end,
            deterministic=deterministic,
            kafka=kafka,
            registry=registry,
            dead_letters=dead_letters,  # type: ignore[arg-type]  # checked above
        )
    except SourceUrlError as exc:
        raise typer.BadParameter(str(exc), param_hint="--source") from exc
    except (BrokerUnavailable, ValueError, FileNotFoundError, TrainerError) as exc:
        raise _fail(str(exc)) from exc
    except DistributedError as exc:
        raise _fail(str(exc)) from exc
    trainer = run.trainer
    publisher = dashboard = None
    try:
        if publish is not None:
            publisher = _attach_publisher(
                run,
                publish,
                registry,
                (sync_interval, dense_sync_interval, snapshot_interval),
                key,
                kafka,
            )
        if metrics_port is not None:
            # A rank's metrics carry its rank; rank 0 shows the figures of all ranks.
            exposed, ranks = run.watch_ranks(registry)
            dashboard = _start_dashboard(
                trainer,
                exposed,
                ranks,
                publisher,
                # Each rank on its own port.
                (metrics_host, metrics_port + run.rank),
                serving_url or [],
                joiner_url or [],
                run.data_dir / DASHBOARD_HISTORY,
                token,
            )
    except BaseException:
        run.close()  # stops the source's reader process, releases the store
        raise
    stop = threading.Event()
    _stop_on_signals(stop)
    started, first_records = time.monotonic(), trainer.stream.records_read
    # One progress line: rank 0's.
    console = Console(stderr=True, quiet=run.rank != 0)
    with run, Live("starting", console=console, refresh_per_second=4) as live:
        summary = trainer.run(
            max_events=max_events,
            stop=stop,
            on_tick=lambda t: live.update(_progress_line(t, started, first_records)),
        )
        live.update(_progress_line(trainer, started, first_records))
        if publisher is not None and trainer.state.batches:
            # What the last steps changed reaches serving before we exit.
            publisher.publish_delta(publisher.event_time)
    if dashboard is not None:
        dashboard.close()
    report = summary.to_json()
    if run.collectives is not None:
        report["rank"] = run.rank
        # Wall time in collectives (waits for slower ranks included) and bytes sent to others.
        report["collective_seconds"] = round(run.collectives.seconds, 3)
        report["bytes_sent"] = run.collectives.bytes_sent
    bayes = getattr(trainer.stream.source, "bayes_auc", None)
    if bayes is not None and bayes.count:
        report["bayes_auc"] = round(bayes.value(), 6)
    typer.echo(json.dumps(report))


def _launch_ranks(nproc: int, max_restarts: int) -> int:
    """Run this ``train`` command on ``nproc`` ranks under torchrun's elastic launcher.

    The ranks rendezvous on a free local port (``--standalone``); a rank
    that dies makes the launcher restart all of them, up to ``max_restarts``
    times, and each resumes from the last generation all ranks committed.
    """
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--nproc", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            argv.append(arg)
    args = get_args_parser().parse_args(
        [
            "--standalone",
            f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}",
            "--module",
            "headrace.cli",
            *argv,
        ]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        typer.echo(f"error: a rank failed {max_restarts + 1} times: {exc}", err=True)
        return 1
    except SignalException as exc:
        # The launcher passed the signal on and waited for the ranks, which
        # agree to stop, finish the batch and checkpoint, as one process does.
        logging.getLogger("headrace").warning(
            "received %s: stopped the ranks, each after its batch and a checkpoint", exc.sigval.name
        )
    return 0


@app.command("dead-letters")
def print_dead_letters(
    topic: Annotated[str, typer.Argument(help="A dead-letter topic: kafka://HOST:PORT/TOPIC.dlq.")],
    config: Annotated[
        Path | None,
        typer.Option(help="A config whose \\[kafka] table holds the TLS/SASL settings."),
    ] = None,
) -> None:
    """Print a dead-letter topic's letters as JSON lines, as in dead_letters.jsonl.

    Each line has the reason, the detail, the source position (partition
    key and offset) and the raw bytes in base64; it stops at the topic's end.
    """
    from headrace.stream import BrokerUnavailable, parse_kafka_url, read_dead_letters

    try:
        bootstrap, name = parse_kafka_url(topic)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TOPIC") from exc
    kafka = _kafka_settings(config)
    try:
        for letter in read_dead_letters(bootstrap, name, client=kafka):
            typer.echo(json.dumps(letter.to_json()))
    except (BrokerUnavailable, ValueError) as exc:
        raise _fail(str(exc)) from exc


class _Dashboard:
    """The trainer's HTTP server and the pollers of serving workers and joiners behind it."""

    def __init__(
        self,
        server: DashboardServer,
        pollers: list[WorkerPoller | JoinerPoller],
        history: TrainingHistory,
    ) -> None:
        self.server = server
        self.pollers = pollers
        self.history = history

    def close(self) -> None:
        self.server.close()
        for poller in self.pollers:
            poller.stop()
        self.history.close()


def _start_dashboard(
    trainer: Trainer,
    registry: CollectorRegistry | Collector,
    ranks: Callable[[], RanksStatus | None] | None,
    publisher: ParameterPublisher | None,
    address: tuple[str, int],
    serving_urls: list[str],
    joiner_urls: list[str],
    history_path: Path,
    token: str | None,
) -> _Dashboard:
    """Serve /metrics, /dashboard and /api/history; sample the trainer after each step.

    The samples are kept in ``history_path`` too, so that the dashboard of a
    restarted trainer goes on where the last run's left off. With ``token``
    every page requires it, and the serving workers are asked with it.
    ``ranks`` returns the figures of all ranks (rank 0 of a distributed run).
    """
    from headrace.config import API_TOKEN_ENV
    from headrace.trainer.dashboard import DashboardServer, JoinerPoller, WorkerPoller
    from headrace.trainer.history import TrainingHistory

    poller = WorkerPoller(serving_urls, token=token) if serving_urls else None
    joiners = JoinerPoller(joiner_urls, token=token) if joiner_urls else None
    history = TrainingHistory(
        sync_version=(lambda: publisher.version) if publisher is not None else None,
        workers=poller.status if poller is not None else None,
        joiners=joiners.status if joiners is not None else None,
        ranks=ranks,
        path=history_path,
    )
    host, port = address
    # After the publisher's hook, so each sample sees the version just published.
    history.attach(trainer)
    try:
        server = DashboardServer(registry, history, host, port, token=token)
    except OSError as exc:
        history.close()
        raise _fail(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
            "pick a free --metrics-port"
        ) from exc
    server.start()
    pollers = [p for p in (poller, joiners) if p is not None]
    for each in pollers:
        each.start()
    logger = logging.getLogger("headrace")
    logger.info(
        "metrics on http://%s:%d/metrics, drift dashboard on http://%s:%d/dashboard (%s)",
        host,
        server.port,
        host,
        server.port,
        "bearer token required" if token else "no token: open to whoever reaches the port",
    )
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "the dashboard and /metrics on %s are open to anyone who can reach port %d; "
            "set %s (or --api-token-file) or --metrics-host 127.0.0.1 to close them",
            host,
            server.port,
            API_TOKEN_ENV,
        )
    return _Dashboard(server, pollers, history)


def _check_params_location(url: str, option: str) -> None:
    """Fail at start, naming ``option``, unless ``url`` is dir://PATH or kafka://HOST:PORT/TOPIC."""
    from headrace.serving import parse_location

    try:
        parse_location(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _check_params_reachable(url: str, kafka: KafkaClientSettings) -> None:
    """Fail at start when a kafka:// location's broker cannot be reached or refuses us.

    Here rather than in each worker, where the error would end a process
    with a traceback instead of saying what to fix.
    """
    from headrace.serving import parse_location
    from headrace.stream import BrokerUnavailable, ensure_topic

    kind, servers, topic = parse_location(url)
    if kind != "kafka":
        return
    try:
        ensure_topic(servers, topic, 1, client=kafka)
    except BrokerUnavailable as exc:
        raise _fail(f"--params: {exc}") from exc


def _attach_publisher(
    run: TrainingRun,
    url: str,
    registry: CollectorRegistry,
    intervals: tuple[float, float, float],
    key: SyncKey | None,
    kafka: KafkaClientSettings,
) -> ParameterPublisher:
    """A parameter publisher called after every training step (or, by ranks, together),
    signing with ``key``."""
    from headrace.serving import open_writer
    from headrace.stream import BrokerUnavailable

    try:
        writer = open_writer(url, key=key, client=kafka)
    except BrokerUnavailable as exc:
        raise _fail(f"--publish: {exc}") from exc
    logging.getLogger("headrace").info(
        "publishing parameters to %s, %s",
        url,
        "signed (HMAC-SHA256)" if key is not None else "unsigned: no sync key",
    )
    sync_interval, dense_sync_interval, snapshot_interval = intervals
    return run.attach_publisher(
        writer,
        sync_interval=sync_interval,
        dense_sync_interval=dense_sync_interval,
        snapshot_interval=snapshot_interval,
        registry=registry,
    )


@app.command()
def serve(
    params: Annotated[
        str,
        typer.Option(help="Where the trainer publishes: dir://PATH or kafka://HOST:PORT/TOPIC."),
    ],
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="HTTP port of the first worker.")
    ] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes, on ports PORT, PORT+1, ...")
    ] = 1,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between looks for new parameters.")
    ] = 0.1,
    config: KafkaConfigOption = None,
    sync_key_file: SyncKeyOption = None,
    api_token_file: ApiTokenOption = None,
    memory_budget: Annotated[
        int | None,
        typer.Option(
            min=4096,
            help="Bytes of memory for embedding rows per worker; the rows live in a local "
            "RocksDB replica and the most recently used stay in memory. Default: all in memory.",
        ),
    ] = None,
    replica_dir: Annotated[
        Path | None,
        typer.Option(help="Where workers keep their replicas (with --memory-budget)."),
    ] = None,
) -> None:
    """Serve predictions over HTTP from parameters synced from a trainer.

    Each worker bootstraps from the newest complete snapshot, then applies
    deltas in version order; POST /v1/predict, GET /healthz, /readyz,
    /v1/version, /metrics and /docs (OpenAPI). With a sync key only updates
    signed with it apply; with an API token all but /healthz and /readyz
    require it.
    """
    from headrace.serving import WorkerOptions, run_workers

    _check_params_location(params, "--params")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = WorkerOptions(
        poll_interval=poll_interval,
        key=_sync_key(sync_key_file),
        kafka=_kafka_settings(config),
        token=_api_token(api_token_file),
        memory_budget=memory_budget,
        replica_dir=None if replica_dir is None else str(replica_dir),
    )
    _check_params_reachable(params, options.kafka)
    logging.getLogger("headrace").info(
        "parameters: %s; API: %s",
        "only updates signed with the sync key" if options.key else "unsigned updates accepted",
        "bearer token required" if options.token else "open (no token)",
    )
    raise typer.Exit(run_workers(params, host, range(port, port + workers), options))


@app.command()
def demo(
    data_dir: Annotated[
        Path, typer.Option(help="Trainer store, checkpoints, logs; a second run resumes here.")
    ] = Path("headrace-data"),
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of an existing Kafka cluster; by default the demo starts Tansu."
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(min=1.0, help="Synthetic events produced per second.")
    ] = 2000.0,
    duration: Annotated[
        float | None, typer.Option(min=1.0, help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the synthetic world.")] = 0,
    drift_every: Annotated[
        int, typer.Option(min=1000, help="Events between scheduled drifts of the world.")
    ] = 100_000,
    publish: Annotated[
        str | None,
        typer.Option(
            help="Where parameters go: dir://PATH or kafka://HOST:PORT/TOPIC "
            "(default: a params topic on the demo's broker)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Trainer config (TOML); by default the demo writes one with short expiry. "
            "Its \\[kafka] table (and HEADRACE_KAFKA__*) holds the Kafka TLS/SASL settings."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Trainer's HTTP port (dashboard, metrics); default free."
        ),
    ] = None,
    serving_port: Annotated[
        int | None,
        typer.Option(min=1, max=65534, help="Ports of the two serving workers: this and the next."),
    ] = None,
    topic: Annotated[str, typer.Option(help="Events topic.")] = "headrace-events",
    params_topic: Annotated[str, typer.Option(help="Parameters topic.")] = "headrace-params",
    joiner: Annotated[
        bool,
        typer.Option(
            help="Generate impressions and delayed clicks, and join them with `headrace join`."
        ),
    ] = False,
    join_window: Annotated[
        float, typer.Option(min=1.0, help="--joiner: the join window, seconds of event time.")
    ] = 600.0,
    join_mode: Annotated[str, typer.Option(help="--joiner: wait or fake-negative.")] = "wait",
) -> None:
    """Run everything locally: broker, event generator with drift, trainer, two serving workers.

    Prints the dashboard, metrics and predict URLs and a live status line;
    Ctrl-C (or --duration) stops every process it started and prints a
    summary, last as one JSON line on stdout. Run it again to resume.
    """
    from headrace.demo import DemoError, DemoOptions, run_demo

    if config is not None and not config.is_file():
        raise typer.BadParameter(f"no config file at {config}", param_hint="--config")
    if publish is not None:
        _check_params_location(publish, "--publish")
    if join_mode not in ("wait", "fake-negative"):
        raise typer.BadParameter(
            f"wait or fake-negative, not {join_mode!r}", param_hint="--join-mode"
        )
    options = DemoOptions(
        kafka=_kafka_settings(config),
        data_dir=data_dir,
        bootstrap_servers=bootstrap_servers,
        rate=rate,
        duration=duration,
        seed=seed,
        drift_every=drift_every,
        publish=publish,
        config=config,
        port=port,
        serving_port=serving_port,
        topic=topic,
        params_topic=params_topic,
        joiner=joiner,
        join_window=join_window,
        join_mode=join_mode,
    )
    try:
        summary = run_demo(options)
    except DemoError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(json.dumps(summary))


def _join_line(joiner: object, started: float) -> str:
    core = joiner.core  # type: ignore[attr-defined]
    c = core.counters
    emitted = c["positives"] + c["negatives"]
    rate = joiner.emitted_this_run / max(time.monotonic() - started, 1e-9)  # type: ignore[attr-defined]
    late = sum(v for k, v in c.items() if k.startswith("late_"))
    return (
        f"joining  {emitted:>10,} emitted ({rate:,.0f}/s)  positives {c['positives']:,}  "
        f"pending {core.pending:,}  early {core.early:,}  late {late:,}  "
        f"window {core.occupancy():.0%}"
    )


@app.command()
def join(
    impressions: Annotated[
        str, typer.Option(help="Impressions: kafka://HOST:PORT/TOPIC or file://PATH.jsonl[.gz].")
    ],
    actions: Annotated[
        str, typer.Option(help="Actions: kafka://HOST:PORT/TOPIC or file://PATH.jsonl[.gz].")
    ],
    out: Annotated[
        str, typer.Option(help="Labelled events: kafka://HOST:PORT/TOPIC or file://PATH.jsonl.")
    ],
    data_dir: Annotated[
        Path, typer.Option(help="The joiner's state (RocksDB) and dead letters; a rerun resumes.")
    ],
    window: Annotated[
        float | None, typer.Option(help="Seconds of event time an impression waits for actions.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="wait (emit at window close) or fake-negative.")
    ] = None,
    negative_rate: Annotated[
        float | None, typer.Option(help="Keep each negative with this probability (0, 1].")
    ] = None,
    item_key: Annotated[
        str | None,
        typer.Option(help="Field naming the item, when a request shows several items."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Joiner config (TOML); HEADRACE_JOIN__* variables override it."),
    ] = None,
    late_out: Annotated[
        str | None,
        typer.Option(help="Where late actions go (default file://DATA_DIR/late_actions.jsonl)."),
    ] = None,
    rank: Annotated[int, typer.Option(min=0, help="This joiner's index among --ranks.")] = 0,
    ranks: Annotated[
        int, typer.Option(min=1, help="Joiner processes splitting the input partitions.")
    ] = 1,
    out_partitions: PartitionsOption = 1,
    until_end: Annotated[
        bool,
        typer.Option(help="Stop once both inputs are read to their end, closing every window."),
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve Prometheus /metrics on this port.")
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface of the --metrics-port server.")
    ] = "0.0.0.0",
) -> None:
    """Join impressions with delayed actions in event time into labelled events.

    Prints a progress line on stderr and, last, one JSON summary on stdout.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from pydantic import ValidationError
    from rich.live import Live

    from headrace.config import ConfigError
    from headrace.joiner import (
        EndpointError,
        Joiner,
        JoinStateError,
        load_join_config,
        open_inputs,
        open_sink,
    )
    from headrace.stream import BrokerUnavailable, JsonlDeadLetterSink

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        join_config = load_join_config(
            config, window_s=window, mode=mode, negative_rate=negative_rate, item_key=item_key
        )
    except (ConfigError, ValidationError) as exc:
        raise _fail(str(exc)) from exc
    if rank >= ranks:
        raise typer.BadParameter(
            f"must be below --ranks ({ranks}), not {rank}", param_hint="--rank"
        )
    late_url = late_out or f"file://{(data_dir / 'late_actions.jsonl').resolve()}"
    kafka = _kafka_settings(config)
    opened: list = []
    try:
        imps, acts = open_inputs(impressions, actions, rank, ranks, kafka)
        opened += [imps, acts]
        sink = open_sink(out, "--out", out_partitions, kafka)
        opened.append(sink)
        late = open_sink(late_url, "--late-out", client=kafka)
        opened.append(late)
        letters = {
            name: JsonlDeadLetterSink(data_dir / "dead_letters" / f"{name}.jsonl")
            for name in ("impressions", "actions")
        }
        registry = CollectorRegistry()
        joiner = Joiner(
            join_config,
            data_dir,
            imps,
            acts,
            sink,
            late,
            letters,
            identity={"rank": rank, "ranks": ranks},
            registry=registry,
        )
    except (EndpointError, BrokerUnavailable, ValueError, FileNotFoundError, JoinStateError) as exc:
        for item in opened:
            item.close()
        raise _fail(str(exc)) from exc
    if metrics_port is not None:
        try:
            start_http_server(metrics_port, metrics_host, registry)
        except OSError as exc:
            joiner.close()
            raise _fail(f"cannot serve metrics on port {metrics_port}: {exc}") from exc
    stop = threading.Event()
    _stop_on_signals(stop)
    started = time.monotonic()
    with joiner, Live("starting", console=Console(stderr=True), refresh_per_second=4) as live:
        summary = joiner.run(
            stop=stop, until_end=until_end, on_tick=lambda j: live.update(_join_line(j, started))
        )
        live.update(_join_line(joiner, started))
    typer.echo(json.dumps(summary.to_json()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
