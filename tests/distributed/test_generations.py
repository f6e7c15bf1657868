"""Which generation folders rank 0 removes, at start and after a commit."""

from __future__ import annotations

from pathlib import Path

from headrace.distributed import Generations


def _folders(tmp_path: Path, *generations: int) -> Generations:
    folders = Generations(tmp_path, collectives=None)  # type: ignore[arg-type]  # not written
    for generation in generations:
        folders.part(generation, 0).mkdir(parents=True)
    return folders


def _left(folders: Generations) -> list[int]:
    return sorted(int(folder.name) for folder in folders.root.iterdir())


def test_after_a_commit_the_next_generation_being_written_stays(tmp_path: Path) -> None:
    # Other ranks may be writing generation 4 while rank 0 commits 3.
    folders = _folders(tmp_path, 2, 3, 4)
    folders.prune(3, newer=False)
    assert _left(folders) == [3, 4]


def test_at_start_uncommitted_generations_go(tmp_path: Path) -> None:
    folders = _folders(tmp_path, 2, 3, 4)
    folders.prune(3, newer=True)
    assert _left(folders) == [3]
    folders.prune(None, newer=True)
    assert _left(folders) == []
