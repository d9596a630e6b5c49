"""`make data`: download every photo of the manifest from its public source at the pinned commit and
assemble the data tree (<root>/hotdog/..., <root>/hotdog-more/<source>/...).

Per source: a partial git clone in <root>/.download/<source>.git (trees at the pinned commit, then only the
blobs the manifest names, fetched in chunks, so an interrupted run continues where it stopped). Every blob is
checked against its git blob id, re-encoded by the source's rule (data_sources/recode.py) and checked against
the manifest's sha256; a file is written under a temporary name outside the data tree, then renamed into it.
Files already in place with the right sha256 are kept, so a second run verifies and downloads nothing."""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from data_sources import CATALOG, Entry, Source, load_manifest, load_sources
from data_sources.catalog import git_blob_id
from data_sources.recode import RULES

DEFAULT_MIRROR = "https://github.com"
CHUNK = 200  # blobs per git fetch: what an interrupted run can lose
DOWNLOAD_DIR = ".download"
# Never ask for a password (GitHub answers a missing repository with 401) and give up on a stalled link.
GIT_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}
GIT_OPTIONS = ["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60", "-c", "fetch.negotiationAlgorithm=noop",
               "-c", "gc.auto=0", "-c", "maintenance.auto=false"]


class FetchError(RuntimeError):
    """One line for the user: which source, which URL or files, what to do."""


class CorruptCache(Exception):
    pass


def repo_url(mirror: str, repo: str) -> str:
    return f"{mirror.rstrip('/')}/{repo}.git"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_in_place(root: Path, entry: Entry) -> bool:
    path = root / entry.path
    return path.is_file() and sha256_file(path) == entry.sha256


class GitCache:
    """A bare partial clone of one source holding its pinned commit's trees and the blobs fetched so far."""

    def __init__(self, path: Path, url: str):
        self.path, self.url = path, url
        if not (path / "HEAD").is_file():
            shutil.rmtree(path, ignore_errors=True)
            self.git("init", "--quiet", "--bare", str(path), where=None)
        self.git("config", "remote.origin.url", url)
        self.git("config", "remote.origin.promisor", "true")
        self.git("config", "remote.origin.partialclonefilter", "blob:none")
        self.git("config", "extensions.partialClone", "origin")
        self.git("config", "core.repositoryformatversion", "1")

    def git(self, *args: str, stdin: str | None = None, where: Path | None | str = "cache") -> str:
        base = ["git", *GIT_OPTIONS] + (["-C", str(self.path)] if where == "cache" else [])
        done = subprocess.run(base + list(args), input=stdin, capture_output=True, text=True, env=GIT_ENV)
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            raise subprocess.CalledProcessError(done.returncode, args[0], done.stdout, lines[-1] if lines else "")
        return done.stdout

    def present(self) -> set[str]:
        """Object ids already here; listing them never triggers a lazy fetch."""
        try:
            out = self.git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
        except subprocess.CalledProcessError as err:
            raise CorruptCache(err.stderr) from err
        return set(out.split())

    def fetch(self, oids: list[str], *, depth: bool = False) -> None:
        self.git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--filter=blob:none",
                 *(["--depth", "1"] if depth else []), "origin", "--stdin", stdin="\n".join(oids) + "\n")

    def tree(self, commit: str) -> dict[str, str]:
        """repo path -> blob id of every file at `commit`."""
        try:
            out = self.git("ls-tree", "-r", "-z", "--full-tree", commit)
        except subprocess.CalledProcessError as err:
            raise CorruptCache(err.stderr) from err
        files = {}
        for record in out.split("\0"):
            if record:
                meta, path = record.split("\t", 1)
                mode, kind, oid = meta.split()
                if kind == "blob":
                    files[path] = oid
        return files

    def read(self, oids: list[str]):
        """Yield (oid, bytes) for each blob, each checked against its id."""
        proc = subprocess.Popen(["git", "-C", str(self.path), "cat-file", "--batch"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env={**GIT_ENV, "GIT_NO_LAZY_FETCH": "1"})
        try:
            for oid in oids:
                proc.stdin.write(oid.encode() + b"\n")
                proc.stdin.flush()
                header = proc.stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise CorruptCache(f"blob {oid} unreadable ({b' '.join(header).decode() or 'git stopped'})")
                data = proc.stdout.read(int(header[2]))
                proc.stdout.read(1)
                if git_blob_id(data) != oid:
                    raise CorruptCache(f"blob {oid} does not match its id")
                yield oid, data
        except BrokenPipeError as err:
            raise CorruptCache(f"git cat-file stopped reading {self.path}") from err
        finally:
            proc.kill()
            proc.wait()


def fetch_source(root: Path, source: Source, entries: list[Entry], mirror: str) -> dict:
    """Bring `entries` (all of one source) in place under `root`; returns counts for the summary."""
    todo = [e for e in entries if not is_in_place(root, e)]
    stats = {"source": source.name, "files": len(entries), "kept": len(entries) - len(todo), "blobs_fetched": 0,
             "written": 0}
    if not todo:
        return stats
    cache_path = root / DOWNLOAD_DIR / f"{source.name}.git"
    url = repo_url(mirror, source.repo)
    for attempt in (1, 2):
        try:
            cache = GitCache(cache_path, url)
            stats["blobs_fetched"] += download(cache, source, todo)
            stats["written"] += assemble(root, cache, source, todo)
            return stats
        except CorruptCache as err:
            aside = cache_path.with_name(cache_path.name + ".corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            cache_path.rename(aside)
            if attempt == 2:
                raise FetchError(f"source {source.name}: the download from {url} is corrupt twice ({err}); "
                                 f"kept aside in {aside}") from err
            print(f"{source.name}: download corrupt ({err}), moved aside to {aside}; downloading again",
                  file=sys.stderr)
        except subprocess.CalledProcessError as err:
            raise FetchError(f"source {source.name}: cannot fetch {url} at {source.commit[:12]}: {err.stderr} "
                             f"(what was downloaded is kept in {cache_path}; run make data again)") from err
    raise AssertionError("unreachable")


def download(cache: GitCache, source: Source, todo: list[Entry]) -> int:
    """Trees at the pinned commit, a check of the manifest against them, then the missing blobs."""
    if source.commit not in cache.present():
        cache.fetch([source.commit], depth=True)
    tree = cache.tree(source.commit)
    moved = [f"{e.repo_path} ({tree.get(e.repo_path, 'absent')[:12]}, expected {e.blob[:12]})"
             for e in todo if tree.get(e.repo_path) != e.blob]
    if moved:
        raise FetchError(f"source {source.name}: {len(moved)} file(s) at {source.commit[:12]} of {cache.url} do not "
                         f"match their pinned blob id, refused: {some(moved)}")
    present = cache.present()
    missing = sorted({e.blob for e in todo} - present)
    with tqdm(total=len(missing), desc=f"{source.name}: download", unit="photo", disable=not missing) as bar:
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start:start + CHUNK]
            cache.fetch(chunk)
            bar.update(len(chunk))
    return len(missing)


def assemble(root: Path, cache: GitCache, source: Source, todo: list[Entry]) -> int:
    """Re-encode and write every entry; the ones whose result misses the manifest's sha256 are refused."""
    tmp_dir = root / DOWNLOAD_DIR / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    by_blob = defaultdict(list)
    for e in todo:
        by_blob[e.blob].append(e)
    recode, refused, written = RULES[source.recode], [], 0
    with tqdm(total=len(todo), desc=f"{source.name}: assemble", unit="photo") as bar:
        for oid, data in cache.read(sorted(by_blob)):
            out = recode(data)
            digest = hashlib.sha256(out).hexdigest()
            for e in by_blob[oid]:
                bar.update(1)
                if digest != e.sha256:
                    refused.append(e.path)
                    continue
                tmp = tmp_dir / f"{source.name}.{written}.part"
                tmp.write_bytes(out)
                (root / e.path).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, root / e.path)
                written += 1
    if refused:
        raise FetchError(f"source {source.name}: {len(refused)} file(s) do not match the manifest's sha256 after "
                         f"the {source.recode} rule, refused (Pillow {pillow_version()}): {some(refused)}")
    return written


def some(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def pillow_version() -> str:
    import PIL
    return PIL.__version__


def fetch_all(root: Path, sources: tuple[Source, ...], entries: list[Entry], mirror: str) -> list[dict]:
    root = Path(root)
    shutil.rmtree(root / DOWNLOAD_DIR / "tmp", ignore_errors=True)  # our own half-written files of a killed run
    by_source = defaultdict(list)
    for e in entries:
        by_source[e.source].append(e)
    unknown = set(by_source) - {s.name for s in sources}
    if unknown:
        raise FetchError(f"manifest names unknown source(s): {', '.join(sorted(unknown))}")
    return [fetch_source(root, s, by_source[s.name], mirror) for s in sources if by_source[s.name]]


def stray_photos(root: Path, sources: tuple[Source, ...], entries: list[Entry]) -> list[str]:
    """Images in the sources' folders that the manifest does not name (training would read them too)."""
    from training.data import IMAGE_EXTENSIONS  # imports torch: only asked once the tree is complete

    known = {e.path for e in entries}
    return sorted(rel for folder in {s.folder for s in sources} for p in (root / folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and (rel := str(p.relative_to(root))) not in known)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data"), help="the data root (default: data)")
    parser.add_argument("--mirror", default=os.environ.get("HOTDOG_DATA_MIRROR", DEFAULT_MIRROR),
                        help="URL base of the source repositories, <mirror>/<owner>/<name>.git "
                             "(default: $HOTDOG_DATA_MIRROR or https://github.com)")
    parser.add_argument("--catalog", type=Path, default=Path(os.environ.get("HOTDOG_DATA_CATALOG", CATALOG)),
                        help="folder with sources.json and manifest.tsv (default: data_sources/)")
    args = parser.parse_args(argv)
    if shutil.which("git") is None:
        print("error: make data needs git (apt-get install git)", file=sys.stderr)
        return 1
    sources, entries = load_sources(args.catalog), load_manifest(args.catalog)
    try:
        stats = fetch_all(args.root, sources, entries, args.mirror)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was downloaded is kept in {args.root / DOWNLOAD_DIR}; run make data again to "
              "continue", file=sys.stderr)
        return 130
    stray = stray_photos(args.root, sources, entries)
    if stray:
        print(f"note: {len(stray)} file(s) under {args.root} are not in the manifest and training would read them: "
              f"{some(stray, 3)}", file=sys.stderr)
    fetched, written = sum(s["blobs_fetched"] for s in stats), sum(s["written"] for s in stats)
    print(f"{args.root}: {len(entries)} photos from {len(stats)} sources in place and verified (sha256); "
          f"this run downloaded {fetched} and wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
