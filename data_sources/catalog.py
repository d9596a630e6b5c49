"""Regenerate sources.json and manifest.tsv from the shared data tree and its provenance files:
`python -m data_sources.catalog ../shared/data`. Files kept byte for byte are checked against their git
blob id on the way."""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

from data_sources import CATALOG, Entry, Source, write_catalog

# hotdog/provenance.csv names two repositories; their rows differ in how the stored file was made
# (hotdog/README.md): Kaggle photos byte for byte, the extra `x*.jpg` re-encoded as JPEG quality 90.
HOTDOG_SOURCES = {"marleenhaubitz/Hot-Dog---Not-Hot-Dog": ("kaggle", "bytes"),
                  "samitmohan/seefood": ("extra", "jpeg_q90")}
MORE_RECODE = "small_jpeg_q85"  # hotdog-more/README.md


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build(shared: Path) -> tuple[list[Source], list[Entry]]:
    """Sources and entries of the tree under `shared` (holding hotdog/ and hotdog-more/), sorted by path."""
    shared = Path(shared)
    sources: dict[str, Source] = {}
    rows: list[tuple[str, str, str, str]] = []  # path, label, source, repo_path, blob
    for r in read_csv(shared / "hotdog" / "provenance.csv"):
        name, recode = HOTDOG_SOURCES[r["repo"]]
        sources.setdefault(name, Source(name, r["repo"], r["commit"], "hotdog", recode))
        if sources[name].commit != r["commit"]:
            raise ValueError(f"{r['file']}: {r['repo']} at two commits")
        rows.append((f"hotdog/{r['file']}", r["label"], name, r["repo_path"], r["blob"]))
    for meta_path in sorted((shared / "hotdog-more").glob("*/source.json")):
        meta = json.loads(meta_path.read_text())
        folder = f"hotdog-more/{meta['name']}"
        sources[meta["name"]] = Source(meta["name"], meta["repo"], meta["commit"], folder, MORE_RECODE)
        rows += [(f"{folder}/{r['file']}", r["label"], meta["name"], r["repo_path"], r["blob"])
                 for r in read_csv(meta_path.parent / "provenance.csv")]
    entries = []
    for path, label, name, repo_path, blob in sorted(rows):
        data = (shared / path).read_bytes()
        if sources[name].recode == "bytes" and git_blob_id(data) != blob:
            raise ValueError(f"{path}: kept byte for byte, yet its git blob id is not {blob}")
        entries.append(Entry(path, label, hashlib.sha256(data).hexdigest(), name, repo_path, blob))
    return list(sources.values()), entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared", type=Path, help="folder holding hotdog/ and hotdog-more/")
    parser.add_argument("--out", type=Path, default=CATALOG)
    args = parser.parse_args(argv)
    sources, entries = build(args.shared)
    write_catalog(args.out, sources, entries)
    print(f"{args.out}: {len(sources)} sources, {len(entries)} files")


if __name__ == "__main__":
    main()
