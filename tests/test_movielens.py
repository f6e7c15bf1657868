"""MovieLens CSVs -> events, and `headrace datasets movielens`."""

import json
import subprocess
import sys

import pytest

from headrace.stream import MovieLensError, movielens_events, open_log
from headrace.trainer import load_trainer_config

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation
2,"American President, The (1995)",Comedy|Drama|Romance
3,Untitled,(no genres listed)
"""
# Out of time order on purpose; users 7 and 9 each rate in a burst.
RATINGS = """userId,movieId,rating,timestamp
9,1,2.0,300
7,2,4.5,100
7,1,3.5,100
7,3,4.0,200
9,2,5.0,301
"""


@pytest.fixture
def movielens(tmp_path):
    (tmp_path / "movies.csv").write_text(MOVIES)
    (tmp_path / "ratings.csv").write_text(RATINGS)
    return tmp_path


def test_events_are_in_time_order_with_labels_and_slots(movielens):
    events = list(movielens_events(movielens))
    assert [e["ts"] for e in events] == [100.0, 100.0, 200.0, 300.0, 301.0]
    # Ratings of one second keep the file's order.
    assert [e["sparse"]["item_id"] for e in events[:2]] == ["2", "1"]
    assert [e["label"] for e in events] == [1, 0, 1, 0, 1]
    first = events[0]["sparse"]
    assert first == {
        "user_id": "7",
        "item_id": "2",
        "genres": ["Comedy", "Drama", "Romance"],
        "year": "1995",
    }
    assert events[2]["sparse"]["genres"] == [] and "year" not in events[2]["sparse"]


def test_history_holds_only_earlier_items_newest_first(movielens):
    events = list(movielens_events(movielens, history=2))
    assert [e["sparse"]["hist_item_ids"] for e in events] == [[], ["2"], ["1", "2"], [], ["1"]]


def test_a_directory_without_the_files_says_where_to_get_them(tmp_path):
    with pytest.raises(MovieLensError, match=r"no ratings\.csv.*grouplens"):
        movielens_events(tmp_path)
    (tmp_path / "ratings.csv").write_text("user,item\n1,2\n")
    (tmp_path / "movies.csv").write_text(MOVIES)
    with pytest.raises(MovieLensError, match="unexpected MovieLens CSV"):
        movielens_events(tmp_path)


def _headrace(*args):
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_the_cli_writes_the_log_and_a_trainer_config(movielens, tmp_path):
    out, config = tmp_path / "ml.jsonl.gz", tmp_path / "ml.toml"
    result = _headrace(
        "datasets", "movielens", str(movielens), "--out", str(out), "--config-out", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["events"] == 5
    with open_log(out) as lines:
        assert [json.loads(line)["ts"] for line in lines] == [100, 100, 200, 300, 301]
    trainer = load_trainer_config(config)
    assert [s.name for s in trainer.slots] == ["user_id", "item_id", "genres", "year"]
    assert trainer.model.dense_features == ()
    # Slots named in the file take the trainer's slot defaults.
    assert trainer.slots[0] == load_trainer_config().slots[0].model_copy(update={"name": "user_id"})


def test_the_cli_refuses_a_directory_without_data(tmp_path):
    result = _headrace("datasets", "movielens", str(tmp_path), "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert "grouplens.org" in result.stderr
