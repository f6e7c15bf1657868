"""MovieLens ratings as a time-ordered stream of events in headrace's schema.

The GroupLens MovieLens data sets (``ratings.csv`` and ``movies.csv``; e.g.
ml-latest-small from https://grouplens.org/datasets/movielens/) are real
rating logs with timestamps: replayed in time order they have the bursts,
popularity skew and cold ids of a live stream. Each rating becomes one event
with ``label = rating >= 4`` and the slots ``user_id``, ``item_id``,
``genres`` (multi-valued) and ``year`` (from the title; absent when the
title has none). With ``history=N`` each event also has ``hist_item_ids``:
the user's last ``N`` items, newest first, from events earlier in the replay
order only, so no future leaks into a feature.

The data's licence forbids redistribution outside its terms: headrace never
ships it; point :func:`movielens_events` at your copy.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MOVIELENS_SLOTS", "MovieLensError", "movielens_events"]

#: The slots of the events, in model order (``hist_item_ids`` only with history).
MOVIELENS_SLOTS = ("user_id", "item_id", "genres", "year")

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_NO_GENRES = "(no genres listed)"
_WHERE = (
    "download a MovieLens data set (e.g. ml-latest-small) from "
    "https://grouplens.org/datasets/movielens/ and pass its directory"
)


class MovieLensError(ValueError):
    """The directory holds no readable MovieLens data; the message says what to do."""


def _movies(path: Path) -> dict[str, tuple[list[str], str | None]]:
    movies = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            genres = [] if row["genres"] == _NO_GENRES else row["genres"].split("|")
            year = _YEAR.search(row["title"].strip())
            movies[row["movieId"]] = (genres, year.group(1) if year else None)
    return movies


def _ratings(path: Path) -> list[tuple[float, int, str, str, float]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [
            (float(r["timestamp"]), i, r["userId"], r["movieId"], float(r["rating"]))
            for i, r in enumerate(csv.DictReader(handle))
        ]
    # Stable: ratings of one second keep the file's order.
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows


def movielens_events(directory: str | Path, history: int = 0) -> Iterator[dict[str, Any]]:
    """Events of a MovieLens directory, in timestamp order.

    Parameters
    ----------
    directory
        Holds ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
        ``movies.csv`` (``movieId,title,genres``).
    history
        Length of the ``hist_item_ids`` slot (0: no such slot).

    Yields
    ------
    dict
        One event per rating, in headrace's event schema.

    Raises
    ------
    MovieLensError
        When a file is missing or lacks the expected columns.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "movies.csv").write_text(
    ...     "movieId,title,genres\\n1,Toy Story (1995),Animation|Comedy\\n2,Heat (1995),Crime\\n")
    >>> _ = (d / "ratings.csv").write_text(
    ...     "userId,movieId,rating,timestamp\\n7,2,3.5,20\\n7,1,4.0,10\\n")
    >>> [e["sparse"]["hist_item_ids"] for e in movielens_events(d, history=2)]
    [[], ['1']]
    >>> next(movielens_events(d))
    {'ts': 10.0, 'label': 1, 'sparse': {'user_id': '7', 'item_id': '1', 'genres': ['Animation', 'Comedy'], 'year': '1995'}, 'dense': {}}
    """  # noqa: E501
    directory = Path(directory)
    if history < 0:
        raise ValueError(f"history must be >= 0, not {history}")
    for name in ("ratings.csv", "movies.csv"):
        if not (directory / name).is_file():
            raise MovieLensError(f"{directory} has no {name}: {_WHERE}")
    try:
        movies = _movies(directory / "movies.csv")
        ratings = _ratings(directory / "ratings.csv")
    except (KeyError, ValueError) as exc:
        raise MovieLensError(f"{directory}: unexpected MovieLens CSV content ({exc})") from exc
    return _events(movies, ratings, history)


def _events(
    movies: dict[str, tuple[list[str], str | None]],
    ratings: list[tuple[float, int, str, str, float]],
    history: int,
) -> Iterator[dict[str, Any]]:
    recent: dict[str, deque[str]] = {}
    for ts, _, user, item, rating in ratings:
        genres, year = movies.get(item, ([], None))
        sparse: dict[str, Any] = {"user_id": user, "item_id": item, "genres": genres}
        if year is not None:
            sparse["year"] = year
        if history:
            seen = recent.setdefault(user, deque(maxlen=history))
            sparse["hist_item_ids"] = list(reversed(seen))
            seen.append(item)
        yield {"ts": ts, "label": int(rating >= 4.0), "sparse": sparse, "dense": {}}
