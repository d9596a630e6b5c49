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
PROGRAMS_FILE = "hotdog.json"  # written by mobile_export/export.py beside the .pte files it describes
# The handler's ExecuTorch runtimes (model-config.yaml `handler: runtime:`) -> their program in PROGRAMS_FILE.
PTE_PROGRAMS = {"executorch": "xnnpack_fp32", "executorch_int8": "xnnpack_int8"}


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


def check_programs(folder: str | Path, weights_sha256: str, keys: list[str] | None = None) -> dict:
    """The PROGRAMS_FILE of `folder`, after checking that its programs (all, or those named in `keys`)
    are the files it records and were exported from the weights with this sha256. A mismatch raises
    one line naming both hashes."""
    folder = Path(folder)
    meta_path = folder / PROGRAMS_FILE
    if not meta_path.exists():
        raise BundleError(f"no {PROGRAMS_FILE} in {folder}: run `make export`")
    meta = json.loads(meta_path.read_text())
    exported_from = meta["source_weights"]["sha256"]
    if exported_from != weights_sha256:
        raise BundleError(f"the programs in {folder} were exported from weights sha256 {exported_from}, "
                          f"but the weights are sha256 {weights_sha256}: run `make export`")
    for key in keys if keys is not None else list(meta["programs"]):
        entry = meta["programs"][key]
        path = folder / entry["file"]
        if not path.exists():
            raise BundleError(f"{path} is missing ({PROGRAMS_FILE} records sha256 {entry['sha256']}): "
                              "run `make export`")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(f"{path} has sha256 {actual}, but {PROGRAMS_FILE} records {entry['sha256']}: "
                              "run `make export`")
    return meta


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
