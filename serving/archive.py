"""Build model_store/hotdog.mar from a weights folder: `python -m serving.archive` (make mar).

The archive holds the weights folder as evaluation reads it (model.pt, preprocess.json,
manifest.json), the model_src package (model + preprocessing, torch-only), the handler,
index_to_name.json (the labels, for TorchServe's tooling) and a model-config.yaml: by default
serve_config/model-config.yaml, whose ExecuTorch int8 runtime also packs the shipped
exported/hotdog_xnnpack_int8.pte with its hotdog.json (checked first: exported from these weights by
the current exporter, else a one-line error naming both hashes). serve_config/model-config.eager.yaml
gives the plain PyTorch archive (make mar-eager).
The archive's version is the weights' sha256 prefix, the same `model_version` the handler answers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mobile_export.export import DEFAULT_OUT as EXPORTED, INT8_FILE, METADATA_FILE, ExportError, verify_exported
from model_src.bundle import PTE_PROGRAMS, BundleError, read_manifest
from model_src.cli import run_cli
from model_src.preprocess import SPEC_FILE, PreprocessSpec
from serving.config import MODEL_NAME, MODEL_STORE, REPO, ServeError

HANDLER = REPO / "handlers" / "hotdog_handler.py"
MODEL_CONFIG = REPO / "serve_config" / "model-config.yaml"
EAGER_MODEL_CONFIG = REPO / "serve_config" / "model-config.eager.yaml"
# Only what the handler imports; training code never ships in the archive.
MODEL_SRC_FILES = ("__init__.py", "resnn.py", "preprocess.py", "bundle.py")


def mar_inputs(weights: Path = REPO / "weights") -> list[Path]:
    """Files whose change makes an archive stale, for the tests' check: the Makefile's MAR_INPUTS
    (tests/test_server_lifecycle.py keeps the two equal). Every model_src module counts, not only the
    packed ones, and so does this builder: a change to how the archive is built makes it stale too."""
    weights = Path(weights)
    return [weights / "model.pt", weights / SPEC_FILE, weights / "manifest.json", HANDLER,
            *sorted((REPO / "model_src").glob("*.py")), MODEL_CONFIG, Path(__file__).resolve(),
            EXPORTED / METADATA_FILE, EXPORTED / INT8_FILE]


def packed_programs(model_config: Path, manifest: dict, exported: Path = EXPORTED,
                    check_exporter: bool = True) -> list[Path]:
    """The .pte the config's runtime runs (none for eager/compile), after verify_exported's checks."""
    runtime = ((yaml.safe_load(Path(model_config).read_text()) or {}).get("handler") or {}).get("runtime", "eager")
    if runtime not in PTE_PROGRAMS:
        return []
    try:
        meta = verify_exported(exported, manifest, check_exporter)
    except ExportError as e:
        raise ServeError(str(e)) from None
    return [Path(exported) / meta["programs"][PTE_PROGRAMS[runtime]]["file"]]


def build_mar(weights: Path, store: Path = MODEL_STORE, name: str = MODEL_NAME,
              model_config: Path = MODEL_CONFIG, exported: Path = EXPORTED, check_exporter: bool = True) -> Path:
    """exported: the folder of .pte files + hotdog.json an executorch runtime takes its program from;
    check_exporter=False accepts programs exported with other settings (tests, sweeps)."""
    weights = Path(weights)
    try:
        manifest = read_manifest(weights)
    except BundleError as e:
        raise ServeError(str(e)) from None
    pte = packed_programs(model_config, manifest, Path(exported), check_exporter)
    spec = PreprocessSpec.load(weights)
    model_pt = weights / manifest.get("weights", "model.pt")
    if not model_pt.exists():
        raise ServeError(f"weights file missing: {model_pt}")
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hotdog-mar-") as tmp:
        # torch-model-archiver copies an --extra-files folder's children to the archive root, so
        # the staging folder holds exactly the archive's extra files (and no __pycache__).
        extra = Path(tmp) / "extra"
        (extra / "model_src").mkdir(parents=True)
        for f in MODEL_SRC_FILES:
            shutil.copy2(REPO / "model_src" / f, extra / "model_src" / f)
        shutil.copy2(weights / SPEC_FILE, extra / SPEC_FILE)
        shutil.copy2(weights / "manifest.json", extra / "manifest.json")
        for program in pte:
            shutil.copy2(program, extra / program.name)
            shutil.copy2(program.parent / METADATA_FILE, extra / METADATA_FILE)
        (extra / "index_to_name.json").write_text(
            json.dumps({str(i): label for i, label in enumerate(spec.labels)}, indent=2) + "\n")
        cmd = [str(archiver), "--model-name", name, "--version", manifest["weights_sha256"][:12],
               "--model-file", str(REPO / "model_src" / "resnn.py"),
               "--serialized-file", str(model_pt),
               "--handler", str(HANDLER),
               "--extra-files", str(extra),
               "--config-file", str(model_config),
               "--export-path", str(store), "--force"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServeError(f"torch-model-archiver failed ({done.returncode}):\n{done.stderr or done.stdout}")
    return store / f"{name}.mar"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"), help="trained-model folder")
    parser.add_argument("--store", default=str(MODEL_STORE), help="model store folder")
    parser.add_argument("--name", default=MODEL_NAME, help="archive (and model) name")
    parser.add_argument("--model-config", default=str(MODEL_CONFIG), help="model-config.yaml to pack")
    parser.add_argument("--exported", default=str(EXPORTED),
                        help="folder of the .pte files + hotdog.json (make export) for an executorch runtime")
    args = parser.parse_args(argv)
    mar = build_mar(Path(args.weights), Path(args.store), args.name, Path(args.model_config), Path(args.exported))
    print(f"wrote {mar.relative_to(REPO) if mar.is_relative_to(REPO) else mar} ({mar.stat().st_size / 1e6:.1f} MB)")
    return mar


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (ServeError,))


if __name__ == "__main__":
    sys.exit(cli())
