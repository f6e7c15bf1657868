"""The ``headrace`` command line.

Nothing imports this module: it is where the packages are wired together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headrace import __version__

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


def main() -> None:
    app()
