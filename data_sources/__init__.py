"""The photos' public sources, one definition: `SOURCES` (sources.json: repository, pinned commit, folder,
re-encode rule) and the manifest (manifest.tsv: every file under the data root with its label, sha256,
source, path in the source repository and git blob id). `make data` (data_sources/fetch.py) rebuilds the
tree from them; data_sources/catalog.py regenerates both from ../shared/data."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

CATALOG = Path(__file__).resolve().parent
MANIFEST_COLUMNS = ("path", "label", "sha256", "source", "repo_path", "blob")


@dataclass(frozen=True)
class Source:
    name: str    # e.g. "kaggle", "sasyl_fastfood"
    repo: str    # GitHub owner/name
    commit: str  # the pinned commit, 40 hex digits
    folder: str  # where its files go under the data root: "hotdog" or "hotdog-more/<name>"
    recode: str  # how a blob becomes the stored file: a key of data_sources.recode.RULES


@dataclass(frozen=True)
class Entry:
    path: str       # relative to the data root, e.g. "hotdog/train/hot_dog/1000288.jpg"
    label: str
    sha256: str     # of the stored file
    source: str
    repo_path: str  # in the source repository at its pinned commit
    blob: str       # git blob id of repo_path at that commit


def load_sources(catalog: Path = CATALOG) -> tuple[Source, ...]:
    return tuple(Source(**s) for s in json.loads((Path(catalog) / "sources.json").read_text()))


def load_manifest(catalog: Path = CATALOG) -> list[Entry]:
    with open(Path(catalog) / "manifest.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", lineterminator="\n"))
    if tuple(rows[0]) != MANIFEST_COLUMNS:
        raise ValueError(f"{catalog}/manifest.tsv: header {rows[0]} is not {list(MANIFEST_COLUMNS)}")
    return [Entry(*row) for row in rows[1:]]


def write_catalog(catalog: Path, sources: list[Source] | tuple[Source, ...], entries: list[Entry]) -> None:
    catalog = Path(catalog)
    catalog.mkdir(parents=True, exist_ok=True)
    (catalog / "sources.json").write_text(json.dumps([s.__dict__ for s in sources], indent=1) + "\n")
    with open(catalog / "manifest.tsv", "w", newline="") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n")
        out.writerow(MANIFEST_COLUMNS)
        out.writerows([e.path, e.label, e.sha256, e.source, e.repo_path, e.blob] for e in entries)


SOURCES = load_sources()
