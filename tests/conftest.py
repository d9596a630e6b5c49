import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "sample"  # a few real photos per class, so tests need no ../shared
sys.path.insert(0, str(REPO))

from bench.harness import config_copy as serve_config_copy, free_ports  # noqa: E402  (after the path insert)

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


def logs_of_a_failed_load(tmp_path: Path, mar: Path) -> str:
    """Start a real TorchServe on `mar` whose model must never load; return all of its logs."""
    from serving import server
    from serving.config import ServeError

    (tmp_path / "work").mkdir()
    with pytest.raises(ServeError, match="not READY|could not load|exited"):
        # The worker retries loading; 45 s lets a slow first try (a loaded machine) reach the log.
        server.start(serve_config_copy(tmp_path), tmp_path / "work", tmp_path / "tmp", mar, timeout=45)
    return "\n".join(p.read_text(errors="replace") for p in (tmp_path / "work" / "logs").glob("*.log"))


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory):
    """A real TorchServe on model_store/hotdog.mar (`make mar`), free ports, own working dir and
    TMPDIR (so stopping it never touches a user's server), READY before the first test; always stopped.
    Yields serving.server.Server: .cfg (URLs/ports), .keys (from its key_file.json), .workdir (logs/)."""
    from serving import server
    from serving.archive import mar_inputs
    from serving.config import MAR

    if not MAR.exists():
        pytest.fail(f"{MAR} is missing: run the tests with `make test` (it builds the archive)")
    stale = [p.name for p in mar_inputs() if p.stat().st_mtime > MAR.stat().st_mtime]
    if stale:
        pytest.fail(f"{MAR} is older than {', '.join(stale)}: run `make mar` (or `make test`)")
    base = tmp_path_factory.mktemp("torchserve")
    workdir, tmpdir = base / "work", base / "tmp"
    workdir.mkdir()
    srv = server.start(serve_config_copy(base), workdir, tmpdir, MAR, timeout=180)
    try:
        yield srv
    finally:
        server.stop(workdir, tmpdir)
