import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "sample"  # a few real photos per class, so tests need no ../shared
sys.path.insert(0, str(REPO))

# A ResNN small enough to train for a few epochs in seconds on 2 cores.
TINY_TRAIN_ARGS = [
    "--widths", "[8, 16, 16, 32]", "--input-size", "64", "--resize-size", "72", "--cache-size", "72",
    "--train-sizes", "[48, 64]", "--val-fraction", "{kaggle: 0.34, extra: 0.34}", "--batch-size", "8",
    "--eval-every", "1", "--decode-workers", "1", "--lr", "0.003",
]


@pytest.fixture
def sample_tree(tmp_path) -> Path:
    """A writable copy of the sample ImageFolder tree."""
    dst = tmp_path / "data"
    shutil.copytree(SAMPLE, dst)
    for f in dst.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    return dst


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOTDOG_CACHE", str(tmp_path / "cache"))
    import training.data

    monkeypatch.setattr(training.data, "CACHE_DIR", tmp_path / "cache")
