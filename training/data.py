"""ImageFolder scanning, the source-stratified validation split, and the decoded-image cache."""
from __future__ import annotations

import fnmatch
import hashlib
import multiprocessing
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from model_src.preprocess import ImageError, decode_image, pil_to_uint8, resize_and_crop

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_HOME = REPO_ROOT.parent / "shared" / "data"  # holds hotdog/ and hotdog-more/
LOCAL_DATA_HOME = REPO_ROOT / "data"  # where `make data` assembles the same tree
SHARED_DATA = SHARED_DATA_HOME / "hotdog"
CACHE_DIR = Path(os.environ.get("HOTDOG_CACHE", REPO_ROOT / ".cache"))


class DataError(RuntimeError):
    """A problem with the data tree that the user must fix; printed without a traceback."""


def data_home() -> Path:
    """The folder holding hotdog/ and hotdog-more/: $DATA_ROOT, else ../shared/data, else data/."""
    if os.environ.get("DATA_ROOT"):
        home = Path(os.environ["DATA_ROOT"]).resolve()
        if not (home / "hotdog").is_dir():
            raise DataError(f"DATA_ROOT={home} holds no hotdog/ folder: run `make data DATA_ROOT={home}`")
        return home
    for home in (SHARED_DATA_HOME, LOCAL_DATA_HOME):
        if (home / "hotdog").is_dir():
            return home
    raise DataError(f"no photos at {SHARED_DATA_HOME} or {LOCAL_DATA_HOME}: run `make data` (or set DATA_ROOT)")


def data_split(name: str) -> Path:
    """<data home>/hotdog/<name> (train or test): the default of every command that reads photos."""
    return data_home() / "hotdog" / name


def run_data_root(saved_data: str | Path) -> Path:
    """The data folder a run's config.yaml names. `make` trains from the repo root, so a relative path
    there (the Makefile's ../shared/...) is relative to the repo, whatever the reader's cwd."""
    return (REPO_ROOT / saved_data).resolve()


def display_path(path: Path) -> str:
    """A path as a committed manifest records it: relative to the repo when it sits beside it (../shared/...)."""
    path = Path(path).resolve()
    return os.path.relpath(path, REPO_ROOT) if path.is_relative_to(REPO_ROOT.parent) else str(path)


def run_photo_root(run: str | Path) -> Path:
    """The folder a run's data_files.txt paths are relative to: its `data` folder, else its data home."""
    saved = Path(run) / "config.yaml"
    if not saved.exists():
        raise DataError(f"{run}: no config.yaml (not a training run folder)")
    cfg = yaml.safe_load(saved.read_text()) or {}
    if cfg.get("data"):
        return run_data_root(cfg["data"])
    return Path(cfg["data_home"]) if cfg.get("data_home") else data_home()


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    source: str


def scan_image_folder(root: str | Path, labels: tuple[str, ...] | None = None,
                      source_patterns: dict[str, str] | None = None,
                      default_source: str = "default",
                      classes: tuple[str, ...] | None = None) -> tuple[list[Sample], tuple[str, ...]]:
    """List `<root>/<class>/<image>` files. Class order is `labels` if given, else sorted folder names.

    `classes` (a subset of labels) are the folders this root must hold, for a source of one class only."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labels is None:
        labels = tuple(folders)
    wanted = labels if classes is None else tuple(classes)
    unknown = [c for c in wanted if c not in labels]
    if unknown:
        raise DataError(f"{root}: classes {unknown} are not labels {list(labels)}")
    missing = [c for c in wanted if c not in folders]
    if missing:
        raise DataError(f"class folder missing in {root}: {', '.join(missing)} (expected {list(wanted)})")
    if len(labels) < 2:
        raise DataError(f"need at least 2 class folders in {root}, found {folders}")
    samples = []
    for idx, cls in enumerate(labels):
        if cls not in wanted:
            continue
        files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder has no images: {root / cls}")
        for p in files:
            source = next((name for name, pat in (source_patterns or {}).items()
                           if fnmatch.fnmatch(p.name, pat)), default_source)
            samples.append(Sample(p, idx, source))
    return samples, tuple(labels)


@dataclass(frozen=True)
class DataRoot:
    """One source of a recipe: an ImageFolder under the data home, and the classes it holds."""
    source: str
    path: Path
    classes: tuple[str, ...] | None = None  # None: every label


def parse_data_roots(entries: dict, home: Path) -> list[DataRoot]:
    """A recipe's `data_roots` ({source: path} or {source: {path, classes}}) resolved under `home`."""
    roots = []
    for source, entry in entries.items():
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        classes = entry.get("classes")
        roots.append(DataRoot(source, home / entry["path"], tuple(classes) if classes else None))
    return roots


def scan_sources(roots: list[DataRoot], labels: tuple[str, ...],
                 source_patterns: dict[str, str] | None = None) -> list[Sample]:
    """Every photo of every root, tagged with its root's source (or a `source_patterns` file-name match).

    All roots are checked before any is scanned, so a typo fails in one line before minutes of decoding."""
    for root in roots:
        if not root.path.is_dir():
            raise DataError(f"data root of source {root.source!r} not found: {root.path} "
                            f"(run `make data`, or fix data_roots)")
        for cls in root.classes or labels:
            if not (root.path / cls).is_dir():
                raise DataError(f"data root of source {root.source!r} has no {cls}/ folder: {root.path}")
    samples = []
    for root in roots:
        samples += scan_image_folder(root.path, labels, source_patterns, root.source, root.classes)[0]
    return samples


def source_mask(sources: list[str], source: str, exclude: str = "") -> torch.Tensor:
    """Which photos belong to `source` ("all": every photo) other than `exclude`'s, a left-out source that
    must not choose anything in its own leave-one-source-out run."""
    return torch.tensor([source in ("all", s) and s != exclude for s in sources], dtype=torch.bool)


def recall_per_class(hits: torch.Tensor, targets: torch.Tensor, labels, mask: torch.Tensor) -> dict[str, float]:
    """Accuracy on each class's photos under `mask`: on an imbalanced source, accuracy alone hides a class."""
    return {name: hits[mask & (targets == c)].float().mean().item()
            for c, name in enumerate(labels) if bool((mask & (targets == c)).any())}


def stratified_split(samples: list[Sample], val_fraction: dict[str, float] | float, seed: int
                     ) -> tuple[list[Sample], list[Sample]]:
    """Hold out a fraction of each (source, class) group, so validation mirrors each source's difficulty."""
    groups: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.source, s.label), []).append(s)
    train, val = [], []
    for (source, label), group in sorted(groups.items()):
        frac = val_fraction if isinstance(val_fraction, float) else val_fraction.get(source, 0.0)
        group = sorted(group, key=lambda s: s.path.name)
        # One generator per group: adding a source (or class) never reshuffles another's split.
        random.Random(f"{seed}/{source}/{label}").shuffle(group)
        n_val = round(len(group) * frac)
        if frac > 0 and len(group) > 1:
            n_val = min(max(n_val, 1), len(group) - 1)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def file_list_sha256(samples: list[Sample], root: Path) -> str:
    """Hash of the relative paths, sizes and labels: identifies the exact data a model saw."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        h.update(f"{s.path.relative_to(root)}\t{s.path.stat().st_size}\t{s.label}\n".encode())
    return h.hexdigest()


def _decode_one(args: tuple[str, int, int, int]) -> torch.Tensor | str:
    path, resize_size, crop_size, max_pixels = args
    try:
        img = decode_image(Path(path).read_bytes(), max_pixels)
    except (ImageError, OSError) as e:
        return f"{path}: {e}"
    return resize_and_crop(pil_to_uint8(img), resize_size, crop_size)


def load_cached(samples: list[Sample], resize_size: int, crop_size: int, max_pixels: int,
                workers: int = 2, quiet: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image once to uint8 (N, 3, crop, crop); cached on disk keyed by files and sizes.

    Returns (images, labels, kept, skipped): `kept` indexes the readable samples, `skipped` lists
    'path: reason' for the others, so one bad file is reported instead of ending the run.
    """
    key = hashlib.sha256()
    for s in samples:
        st = s.path.stat()
        key.update(f"{s.path}\t{st.st_size}\t{st.st_mtime_ns}\t{s.label}\n".encode())
    key.update(f"{resize_size}/{crop_size}/{max_pixels}/v2".encode())  # v2: torch's resize kernel
    cache_file = CACHE_DIR / f"images-{crop_size}-{key.hexdigest()[:16]}.pt"
    if cache_file.exists():
        blob = torch.load(cache_file, weights_only=False)
        return blob["images"], blob["labels"], blob["kept"], blob["skipped"]
    jobs = [(str(s.path), resize_size, crop_size, max_pixels) for s in samples]
    if not quiet:
        print(f"decoding {len(jobs)} images to {crop_size}px (cached in {CACHE_DIR})", file=sys.stderr)
    if workers > 1 and len(jobs) > 64:
        # spawn, not fork: a fork after torch has started its thread pools can deadlock the children.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_decode_one, jobs, chunksize=32))
    else:
        results = [_decode_one(j) for j in jobs]
    skipped = [r for r in results if isinstance(r, str)]
    kept = torch.tensor([i for i, r in enumerate(results) if not isinstance(r, str)], dtype=torch.long)
    if len(kept) == 0:
        raise DataError(f"no readable images among {len(samples)} files: " + "; ".join(skipped[:3]))
    images = torch.stack([results[i] for i in kept])
    labels = torch.tensor([samples[i].label for i in kept])
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")  # torchrun ranks may write the same cache at once
    torch.save({"images": images, "labels": labels, "kept": kept, "skipped": skipped}, tmp)
    os.replace(tmp, cache_file)
    return images, labels, kept, skipped
