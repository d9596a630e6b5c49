"""A trained-model folder (weights/ or a run folder): model.pt + preprocess.json + manifest.json.

Loading checks the weights against the manifest's sha256 before torch sees them, and loads the
state_dict with weights_only=True, so a swapped or tampered file is refused, never unpickled.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from model_src.preprocess import PreprocessSpec
from model_src.resnn import ResNN, build_model

MANIFEST_FILE = "manifest.json"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (weights and .pte files are megabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BundleError(RuntimeError):
    pass


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        raise BundleError(f"no {MANIFEST_FILE} in {folder}")
    return json.loads(path.read_text())


def write_data_files(folder: str | Path, rows) -> None:
    """A run's data_files.txt: one tab-separated (split, path relative to the data root, source) row per image."""
    (Path(folder) / "data_files.txt").write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))


def read_data_files(folder: str | Path) -> list[tuple[str, str, str]]:
    """The rows write_data_files wrote: (split, path relative to the data root, source)."""
    listing = Path(folder) / "data_files.txt"
    return [tuple(line.split("\t")) for line in listing.read_text().splitlines() if line]


def load_bundle(folder: str | Path, device: str | torch.device = "cpu"
                ) -> tuple[ResNN, PreprocessSpec, dict]:
    """Return (model in eval mode on `device`, its preprocessing spec, its manifest)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / manifest.get("weights", "model.pt")
    if not weights.exists():
        raise BundleError(f"weights file missing: {weights}")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["weights_sha256"]:
        raise BundleError(f"{weights} sha256 {digest[:12]}… does not match the manifest "
                          f"({manifest['weights_sha256'][:12]}…): refusing to load")
    state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    model = build_model(manifest["arch"])
    model.load_state_dict(state)
    spec = PreprocessSpec.load(folder)
    if len(spec.labels) != manifest["arch"]["num_classes"]:
        raise BundleError(f"{folder}: {len(spec.labels)} labels but the model has "
                          f"{manifest['arch']['num_classes']} outputs")
    return model.to(device).eval(), spec, manifest
