"""``make lint``'s import-layer check: import-linter over the ``headrace`` namespace.

pyproject maps top-level folders under ``headrace`` (``headrace.stream =
"stream"``, ...), which grimp, import-linter's graph builder, cannot follow:
it walks the directory of the ``headrace`` package only. This mirrors the
mapped packages into one ``headrace`` tree in a temporary directory, puts it
first on ``PYTHONPATH`` and runs ``lint-imports`` with the contracts in
pyproject (``[tool.importlinter]``).

Run ``python tests/layers.py`` (exits with lint-imports' status).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mirror(root: Path, dest: Path) -> Path:
    """Copy every package of ``root``'s pyproject into ``dest`` as one tree; returns ``dest``."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in sorted(config["package-dir"].items()):
        target = dest.joinpath(*package.split("."))
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(root / folder, target, dirs_exist_ok=True, ignore=ignore)
    return dest


def lint_imports(root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on a mirror of ``root``; the result holds its report."""
    with tempfile.TemporaryDirectory(prefix="headrace-layers-") as tmp:
        mirror(root, Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp)
        exe = Path(sys.executable).with_name("lint-imports")
        return subprocess.run(
            [str(exe), str(root / "pyproject.toml"), "--no-cache"],
            # lint-imports puts its working directory first on sys.path.
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )


if __name__ == "__main__":
    result = lint_imports()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    sys.exit(result.returncode)
