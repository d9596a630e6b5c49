"""Which photos a benchmark runs on, where its report goes, and how a report names paths.

The committed reports/ are runs on the test split; a run on other photos never replaces one. Reports
are committed, so paths in them are relative to the repo root (no machine's directories).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mobile_export.export import _display
from serving.config import REPO

SAMPLE = REPO / "tests" / "data" / "sample"
COMMITTED = REPO / "reports"
OTHER_DATA_REPORTS = REPO / "build" / "reports"  # git-ignored: where a run on the sample photos goes


def repo_relative(path: str | Path) -> str:
    """`path` as a report records it: relative to the repo root when it sits beside it (../shared/...)."""
    return _display(Path(path))


def test_images(data: str | Path, out: str | Path) -> tuple[list[bytes], str, Path]:
    """The JPEGs of the ImageFolder split `data`, that folder as the report names it, and the report's path.

    Without JPEGs there, the tests' sample photos are used, and a report bound for reports/ goes to
    build/reports/ instead, which is said on stderr."""
    paths = sorted(Path(data).glob("*/*.jpg"))
    out = Path(out)
    if paths:
        return [p.read_bytes() for p in paths], repo_relative(data), out
    paths = sorted(SAMPLE.glob("*/*.jpg"))
    if out.resolve().parent == COMMITTED.resolve():
        moved = OTHER_DATA_REPORTS / out.name
        print(f"note: no JPEGs in {data}: running on the {len(paths)} sample photos of {repo_relative(SAMPLE)} "
              f"and writing {repo_relative(moved)}; {repo_relative(out)} stays the committed run on the test "
              "split (make data, or DATA_ROOT, for the real one)", file=sys.stderr)
        out = moved
    return [p.read_bytes() for p in paths], repo_relative(SAMPLE), out
