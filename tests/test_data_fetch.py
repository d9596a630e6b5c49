"""`make data` offline: local git repositories laid out like the real sources (real repository paths from the
committed manifest, real sample photos as their content), fetched through file:// URLs by the same code."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, SAMPLE
from data_sources import SOURCES, Entry, Source, load_manifest, load_sources, write_catalog
from data_sources.catalog import build, git_blob_id
from data_sources.fetch import DOWNLOAD_DIR, GitCache, fetch_all, repo_url
from data_sources.recode import RULES, jpeg_q90, small_jpeg_q85
from imagegen import encode, exif_rotated, photo, with_alpha

SHARED = REPO.parent / "shared" / "data"
# One source per re-encode rule, plus the one whose paths hold spaces and parentheses.
TEST_SOURCES = ("kaggle", "extra", "sasyl_fastfood", "vishalpatel_hotdog")
# The tables of ../shared/data/hotdog/README.md and hotdog-more/README.md: (folder, label) -> photos.
README_COUNTS = {
    ("hotdog/train", "hot_dog"): 1853, ("hotdog/train", "not_hot_dog"): 2071,
    ("hotdog/test", "hot_dog"): 250, ("hotdog/test", "not_hot_dog"): 248,
    ("hotdog-more/sasyl_fastfood", "hot_dog"): 1288, ("hotdog-more/sasyl_fastfood", "not_hot_dog"): 1772,
    ("hotdog-more/vishalpatel_hotdog", "hot_dog"): 129, ("hotdog-more/vishalpatel_hotdog", "not_hot_dog"): 1864,
    ("hotdog-more/csluk_seefood_yolo", "hot_dog"): 109, ("hotdog-more/jessycebrian_tests", "hot_dog"): 55,
    ("hotdog-more/jessycebrian_tests", "not_hot_dog"): 23, ("hotdog-more/sangaravi_hotdog", "hot_dog"): 38,
    ("hotdog-more/hse_hotdog", "hot_dog"): 20,
}


@dataclass
class Mirror:
    url: str
    path: Path
    catalog: Path
    sources: tuple[Source, ...]
    entries: list[Entry]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def source_photos(source: Source) -> list[bytes]:
    """Real sample photos in the form each source stores them; hotdog-more also gets a sideways phone
    photo and a transparent PNG, the cases its rule handles."""
    if source.recode == "bytes":
        return [p.read_bytes() for p in sorted(SAMPLE.glob("*/[0-9]*.jpg"))]
    if source.recode == "jpeg_q90":
        return [p.read_bytes() for p in sorted(SAMPLE.glob("*/x*.jpg"))]
    return [exif_rotated(), encode(with_alpha(), "PNG")] + [p.read_bytes() for p in sorted(SAMPLE.glob("*/*.jpg"))]


def make_mirror(root: Path, per_label: int = 2) -> Mirror:
    """One committed git repository per test source at <root>/<owner>/<name>.git holding, at the real
    repository paths of the first manifest rows, sample photos; plus files the manifest does not name."""
    real = load_manifest()
    sources, entries = [], []
    for source in (s for s in SOURCES if s.name in TEST_SOURCES):
        rows = [e for label in ("hot_dog", "not_hot_dog")
                for e in [e for e in real if e.source == source.name and e.label == label][:per_label]]
        repo = root / f"{source.repo}.git"
        photos = source_photos(source)
        for i, e in enumerate(rows):
            (repo / e.repo_path).parent.mkdir(parents=True, exist_ok=True)
            (repo / e.repo_path).write_bytes(photos[i % len(photos)])
        (repo / "README.md").write_text("not a photo\n")
        (repo / "unused.jpg").write_bytes(photos[-1] + b"unused")
        git(repo, "init", "-q")
        git(repo, "config", "uploadpack.allowFilter", "true")  # GitHub serves partial clones
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "photos")
        commit = git(repo, "rev-parse", "HEAD")
        sources.append(replace(source, commit=commit))
        for e in rows:
            data = (repo / e.repo_path).read_bytes()
            stored = RULES[source.recode](data)
            entries.append(replace(e, blob=git_blob_id(data), sha256=hashlib.sha256(stored).hexdigest()))
    catalog = root.parent / "catalog"
    write_catalog(catalog, sources, entries)
    return Mirror(root.as_uri(), root, catalog, tuple(sources), entries)


@pytest.fixture
def mirror(tmp_path) -> Mirror:
    return make_mirror(tmp_path / "mirror")


def fetch_command(root: Path, mirror: Mirror, url: str | None = None) -> list[str]:
    return [sys.executable, "-m", "data_sources.fetch", "--root", str(root), "--mirror", url or mirror.url,
            "--catalog", str(mirror.catalog)]


def fetch_cli(root: Path, mirror: Mirror, url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(fetch_command(root, mirror, url), cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_tree_matches(root: Path, entries: list[Entry]) -> None:
    photos = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and DOWNLOAD_DIR not in p.parts)
    assert photos == sorted(e.path for e in entries)
    for e in entries:
        assert hashlib.sha256((root / e.path).read_bytes()).hexdigest() == e.sha256, e.path
        assert e.path.split("/")[-2] == e.label


def error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_fetch_assembles_the_tree_and_a_second_run_downloads_nothing(mirror, tmp_path):
    root = tmp_path / "data"
    stats = fetch_all(root, mirror.sources, mirror.entries, mirror.url)
    assert_tree_matches(root, mirror.entries)
    assert {s["source"]: s["written"] for s in stats} == dict(Counter(e.source for e in mirror.entries))
    assert (root / "hotdog/train/hot_dog").is_dir() and (root / "hotdog-more/sasyl_fastfood/not_hot_dog").is_dir()
    # A partial clone: the files the manifest does not name were never downloaded.
    for source in mirror.sources:
        repo = mirror.path / f"{source.repo}.git"
        cache = GitCache(root / DOWNLOAD_DIR / f"{source.name}.git", repo_url(mirror.url, source.repo))
        assert git(repo, "rev-parse", "HEAD:unused.jpg") not in cache.present()
        assert {e.blob for e in mirror.entries if e.source == source.name} <= cache.present()
    # The second run needs no network at all: its mirror does not exist. It names a photo the manifest
    # does not (training would read it), not a README.
    stray = root / "hotdog/train/hot_dog/stray.jpg"
    shutil.copy(SAMPLE / "hot_dog" / "x1.jpg", stray)
    (root / "hotdog/README.md").write_text("notes\n")
    done = fetch_cli(root, mirror, url=(tmp_path / "nowhere").as_uri())
    assert done.returncode == 0, done.stderr
    assert "note: 1 file(s)" in done.stderr and "hotdog/train/hot_dog/stray.jpg" in done.stderr
    stray.unlink()
    (root / "hotdog/README.md").unlink()
    assert f"{len(mirror.entries)} photos from 4 sources in place and verified" in done.stdout
    assert "downloaded 0 and wrote 0" in done.stdout
    assert_tree_matches(root, mirror.entries)


def test_resume_after_an_interrupted_run(mirror, tmp_path):
    """A run stopped by a vanished source, a half-downloaded clone of another and a half-written file of a
    killed run: the next run keeps what is verified, fetches only the missing blobs and finishes the tree."""
    root = tmp_path / "data"
    last = mirror.sources[-1]
    last_repo = mirror.path / f"{last.repo}.git"
    last_repo.rename(last_repo.with_name("away"))
    done = fetch_cli(root, mirror)
    assert last.name in error_line(done)
    done_before = [e for e in mirror.entries if e.source != last.name]
    assert_tree_matches(root, done_before)
    last_repo.with_name("away").rename(last_repo)

    # A clone of the sasyl source with its trees and one of its blobs, a truncated pack from a killed git
    # fetch, one photo missing and one half-written file of a killed assemble step.
    sasyl = next(s for s in mirror.sources if s.name == "sasyl_fastfood")
    sasyl_entries = [e for e in mirror.entries if e.source == sasyl.name]
    cache_path = root / DOWNLOAD_DIR / f"{sasyl.name}.git"
    shutil.rmtree(cache_path)
    cache = GitCache(cache_path, repo_url(mirror.url, sasyl.repo))
    cache.fetch([sasyl.commit], depth=True)
    cache.fetch([sasyl_entries[0].blob])
    (cache_path / "objects" / "pack" / "tmp_pack_interrupted").write_bytes(b"PACK\0\0\0\2 truncated")
    for e in sasyl_entries[1:]:
        (root / e.path).unlink()
    (root / sasyl_entries[1].path).write_bytes((root / sasyl_entries[0].path).read_bytes()[:100])
    (root / DOWNLOAD_DIR / "tmp").mkdir(exist_ok=True)
    (root / DOWNLOAD_DIR / "tmp" / "sasyl_fastfood.0.part").write_bytes(b"half")

    stats = {s["source"]: s for s in fetch_all(root, mirror.sources, mirror.entries, mirror.url)}
    assert_tree_matches(root, mirror.entries)
    assert stats[sasyl.name]["blobs_fetched"] == len({e.blob for e in sasyl_entries}) - 1
    assert stats[sasyl.name]["written"] == len(sasyl_entries) - 1
    assert stats[last.name]["written"] == sum(e.source == last.name for e in mirror.entries)
    assert stats["kaggle"]["blobs_fetched"] == stats["kaggle"]["written"] == 0
    assert not (root / DOWNLOAD_DIR / "tmp" / "sasyl_fastfood.0.part").exists()


def test_a_killed_run_leaves_only_whole_files_and_the_next_run_finishes(mirror, tmp_path):
    """SIGKILL (process and its git children) as soon as the first photo lands: every file then in the data
    tree is whole and verified, and the next run completes the tree."""
    root = tmp_path / "data"
    proc = subprocess.Popen(fetch_command(root, mirror), cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (root / "hotdog").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = [p for p in root.rglob("*") if p.is_file() and DOWNLOAD_DIR not in p.parts]
    assert len(landed) < len(mirror.entries), "the run finished before it was killed"
    assert_tree_matches(root, [e for e in mirror.entries if root / e.path in landed])

    done = fetch_cli(root, mirror)
    assert done.returncode == 0, done.stderr
    assert_tree_matches(root, mirror.entries)


def test_a_moved_source_or_no_network_is_one_line_naming_source_and_url(mirror, tmp_path):
    root = tmp_path / "data"
    first = mirror.sources[0]
    (mirror.path / f"{first.repo}.git").rename(mirror.path / "moved.git")
    line = error_line(fetch_cli(root, mirror))
    assert first.name in line and repo_url(mirror.url, first.repo) in line
    assert not [p for p in root.rglob("*") if DOWNLOAD_DIR not in p.parts], "something written in the data tree"
    assert (root / DOWNLOAD_DIR / f"{first.name}.git").is_dir(), "the partial download is kept aside"

    # No network: nothing listens on port 9.
    line = error_line(fetch_cli(root, mirror, url="https://127.0.0.1:9"))
    assert first.name in line and f"https://127.0.0.1:9/{first.repo}.git" in line

    # A pinned commit that the repository no longer has (history rewritten).
    (mirror.path / "moved.git").rename(mirror.path / f"{first.repo}.git")
    write_catalog(mirror.catalog, (replace(first, commit="0" * 40),) + mirror.sources[1:], mirror.entries)
    line = error_line(fetch_cli(root, mirror))
    assert first.name in line and repo_url(mirror.url, first.repo) in line and "000000000000" in line


def test_a_corrupt_download_is_detected_and_redone(mirror, tmp_path, capsys):
    root = tmp_path / "data"
    fetch_all(root, mirror.sources, mirror.entries, mirror.url)
    extra = [e for e in mirror.entries if e.source == "extra"]
    for pack in (root / DOWNLOAD_DIR / "extra.git" / "objects" / "pack").glob("*.pack"):
        data = bytearray(pack.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64  # a bad disk block
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
    for e in extra:
        (root / e.path).unlink()

    stats = {s["source"]: s for s in fetch_all(root, mirror.sources, mirror.entries, mirror.url)}
    assert "download corrupt" in capsys.readouterr().err
    assert (root / DOWNLOAD_DIR / "extra.git.corrupt").is_dir()
    assert stats["extra"]["written"] == len(extra)
    assert_tree_matches(root, mirror.entries)


def test_content_that_misses_its_checksums_is_refused_with_the_file_names(mirror, tmp_path):
    root = tmp_path / "data"
    bad_sha = next(e for e in mirror.entries if e.source == "vishalpatel_hotdog")
    entries = [replace(e, sha256="0" * 64) if e == bad_sha else e for e in mirror.entries]
    write_catalog(mirror.catalog, mirror.sources, entries)
    line = error_line(fetch_cli(root, mirror))
    assert "vishalpatel_hotdog" in line and bad_sha.path in line and "refused" in line
    assert not (root / bad_sha.path).exists()
    assert_tree_matches(root, [e for e in mirror.entries if e != bad_sha])

    # The repository at the pinned commit holds another blob than the manifest pins.
    bad_blob = next(e for e in mirror.entries if e.source == "kaggle")
    entries = [replace(e, blob="1" * 40) if e == bad_blob else e for e in mirror.entries]
    write_catalog(mirror.catalog, mirror.sources, entries)
    (root / bad_blob.path).unlink()
    line = error_line(fetch_cli(root, mirror))
    assert "kaggle" in line and bad_blob.repo_path in line and "refused" in line
    assert not (root / bad_blob.path).exists()


def test_make_data_as_the_readme_writes_it(mirror, tmp_path):
    readme = (REPO / "README.md").read_text()
    assert re.search(r"```bash\n(?:[^`]*\n)?make data(\s|$)", readme), "the README has no `make data` line"
    root = tmp_path / "data"
    done = subprocess.run(["make", "-s", "data", f"DATA_ROOT={root}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HOTDOG_DATA_MIRROR": mirror.url,
                                            "HOTDOG_DATA_CATALOG": str(mirror.catalog)})
    assert done.returncode == 0, done.stderr
    assert_tree_matches(root, mirror.entries)


def test_the_committed_manifest_is_the_shared_tree():
    """Equal to the manifest computed from ../shared when it is here; otherwise consistent with the data
    READMEs' tables."""
    sources, entries = load_sources(), load_manifest()
    assert sources == SOURCES and len(sources) == 8
    assert len(entries) == 9720 == len({e.path for e in entries})
    folders = {s.name: s.folder for s in sources}
    assert Counter((e.path.rsplit("/", 2)[0], e.label) for e in entries) == README_COUNTS
    for e in entries:
        assert e.path.startswith(folders[e.source] + "/") and e.path.split("/")[-2] == e.label
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and re.fullmatch(r"[0-9a-f]{40}", e.blob)
    assert all((e.source == "extra") == bool(re.fullmatch(r"x\d+\.jpg", e.path.rsplit("/", 1)[1]))
               for e in entries if e.path.startswith("hotdog/"))
    if SHARED.is_dir():
        assert build(SHARED) == (list(sources), entries)


# --- The re-encode rules on synthetic originals (the real originals are on GitHub, out of reach here) ---

def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    return img.convert("RGB")


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return sum(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes())) / len(a.tobytes())


def test_extra_photos_rule_is_rgb_jpeg_q90_same_pixels_byte_stable():
    original = Image.open(SAMPLE / "hot_dog" / "x1.jpg").convert("RGB")
    for source in (original, original.convert("L"), original.convert("CMYK")):
        data = encode(source, "PNG" if source.mode != "CMYK" else "JPEG")
        out = jpeg_q90(data)
        assert out == jpeg_q90(data)
        img = decoded(out)
        assert img.mode == "RGB" and img.size == original.size
        assert mean_abs_diff(img, Image.open(io.BytesIO(data)).convert("RGB")) < 3
    # Quality 90: finer than Pillow's default 75, coarser than 95.
    sizes = [len(encode(original, "JPEG", quality=q)) for q in (75, 95)]
    assert sizes[0] < len(jpeg_q90(encode(original, "PNG"))) < sizes[1]


def test_more_photos_rule_orients_flattens_and_shrinks_to_224():
    w, h = photo().size  # landscape, stored sideways by exif_rotated()
    out = decoded(small_jpeg_q85(exif_rotated()))
    assert out.size == ((round(w * 224 / h), 224) if h > 224 else (w, h)), "EXIF orientation not applied"

    out = decoded(small_jpeg_q85(encode(with_alpha(), "PNG")))  # left half transparent
    assert out.getpixel((2, out.height // 2)) >= (250, 250, 250)
    palette = with_alpha().convert("RGB").quantize(64)
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert min(decoded(small_jpeg_q85(encode(palette, "PNG"))).getpixel((0, 0))) >= 240

    original = SAMPLE / "hot_dog" / "133015.jpg"  # 512 x 341
    out = decoded(small_jpeg_q85(original.read_bytes()))
    assert out.size == (round(512 * 224 / 341), 224)
    with Image.open(original) as img:
        assert mean_abs_diff(out, img.convert("RGB").resize(out.size, Image.Resampling.LANCZOS)) < 3
        small = encode(img.resize((150, 100)), "PNG")
    assert decoded(small_jpeg_q85(small)).size == (150, 100), "a small photo is never enlarged"
    assert small_jpeg_q85(small) == small_jpeg_q85(small)
