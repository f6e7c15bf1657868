"""The ``headrace`` command line.

Nothing imports this module: it is where the packages are wired together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from headrace import __version__

if TYPE_CHECKING:
    from rich.progress import Progress

    from headrace.stream import KafkaSink

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


def _open_kafka_sink(url: str, partitions: int) -> KafkaSink:
    """Create the topic if needed and connect a sink, or exit with a clear error."""
    from headrace.stream import BrokerUnavailable, KafkaSink, ensure_topic

    bootstrap, topic = _kafka_target(url)
    try:
        ensure_topic(bootstrap, topic, partitions)
        return KafkaSink(bootstrap, topic)
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
) -> None:
    """Generate synthetic CTR events and print the Bayes-optimal AUC of their labels."""
    from headrace.stream import CtrGenerator, SyntheticConfig, generate_events

    if (out is None) == (to is None):
        raise typer.BadParameter("give exactly one of --out FILE.jsonl[.gz] or --to kafka://...")
    if out is not None and not out.name.endswith((".jsonl", ".jsonl.gz")):
        raise typer.BadParameter(f"{out} must end in .jsonl or .jsonl.gz", param_hint="--out")
    sink = _open_kafka_sink(to, partitions) if to is not None else None
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
) -> None:
    """Produce a historical log into Kafka in order; exit 0 once every message is acknowledged."""
    from headrace.stream import open_log, replay_log

    if speed is not None and max_:
        raise typer.BadParameter("give --speed X or --max, not both")
    if speed is not None and speed <= 0:
        raise typer.BadParameter(f"must be > 0, not {speed}", param_hint="--speed")
    if not log.is_file():
        raise typer.BadParameter(f"no event log at {log}", param_hint="LOG")
    sink = _open_kafka_sink(to, partitions)
    with open_log(log) as lines:
        total = sum(1 for line in lines if line.strip())
    with _progress("replaying") as progress:
        task = progress.add_task("replay", total=total)
        sent = replay_log(log, sink, speed=speed, on_progress=lambda n: progress.advance(task, n))
    _finish(sink)
    typer.echo(json.dumps({"sent": sent, "acked": sink.acked, "topic": sink.topic}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
