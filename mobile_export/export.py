"""Export a trained-model folder to ExecuTorch `.pte` files for iOS: `python -m mobile_export.export`.

Writes into one folder (default exported/, committed: the shipped programs, like weights/):
  hotdog_xnnpack_fp32.pte  XNNPACK, float32, dynamic batch 1..max_batch
  hotdog_xnnpack_int8.pte  XNNPACK, PT2E int8 (per-channel symmetric weights), calibrated on training images
  hotdog_coreml.pte        Core ML delegate, fp16 compute, iOS 17+, batch 1
  hotdog.json              what an app needs to call them (input contract, labels, output, sha256s, versions)
and regenerates the iOS sample's PreprocessConstants.swift from the same spec.

Input contract: every .pte takes uint8 RGB NCHW at the model size (the app only decodes, resizes and
center-crops) and returns softmax probabilities. Normalization and softmax live inside the graph, so an
app cannot get mean/std, channel order or the [0, 1] scaling wrong.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from model_src.bundle import PROGRAMS_FILE, BundleError, check_programs, load_bundle, read_data_files, sha256_file
from model_src.cli import run_cli
from model_src.preprocess import HOTDOG_LABEL, ImageError, PreprocessSpec, decode_image, image_to_uint8
from training.data import REPO_ROOT as REPO, DataError, data_split, run_photo_root

DEFAULT_OUT = REPO / "exported"
SWIFT_CONSTANTS = REPO / "mobile_export" / "ios" / "Hotdog" / "PreprocessConstants.swift"
METADATA_FILE = PROGRAMS_FILE
FP32_FILE, INT8_FILE, COREML_FILE = "hotdog_xnnpack_fp32.pte", "hotdog_xnnpack_int8.pte", "hotdog_coreml.pte"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
FORMAT_VERSION = 1
DEFAULT_MAX_BATCH, DEFAULT_CALIB_IMAGES, DEFAULT_SEED = 32, 256, 0
# The code whose change changes the programs' bytes (besides the weights and the calibration photos).
EXPORTER_SOURCES = (Path(__file__).resolve(), REPO / "model_src" / "resnn.py")


class ExportError(RuntimeError):
    """A problem the user must fix (bad weights folder, calibration data under test/, ...)."""


class MobileClassifier(nn.Module):
    """uint8 RGB NCHW at model size -> softmax probabilities: the graph every .pte contains.

    Normalizing in the graph costs one fused multiply-add per pixel and removes the easiest app bug.
    """

    def __init__(self, model: nn.Module, spec: PreprocessSpec):
        super().__init__()
        self.model = model
        # (x/255 - mean)/std == (x - 255*mean) * 1/(255*std): one subtract and one multiply.
        self.register_buffer("offset", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("scale", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.to(torch.float32) - self.offset) * self.scale
        return torch.softmax(self.model(x), dim=1)


@contextmanager
def _no_mkldnn_nnpack():
    """XNNPACK lowering silently caps a dynamic batch Dim(max>=16) at 15 while mkldnn/nnpack are on;
    export, lowering and to_executorch must all run inside this."""
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(warnings.catch_warnings())
        # Toggling the mkldnn flag re-applies its TF32 setting, which warns on CPU-only builds.
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
        stack.enter_context(torch.backends.nnpack.flags(enabled=False))
        yield


def _example(spec: PreprocessSpec, batch: int = 2) -> tuple[torch.Tensor]:
    # Batch 2, not 1: export specializes a size-1 dimension and would refuse the dynamic batch.
    return (torch.zeros(batch, 3, spec.input_size, spec.input_size, dtype=torch.uint8),)


def _dynamic_shapes(max_batch: int):
    return ({0: Dim("batch", min=1, max=max_batch)},)


def export_program(module: nn.Module, spec: PreprocessSpec, max_batch: int | None) -> ExportedProgram:
    """torch.export the wrapper; max_batch=None gives a static batch-1 program."""
    with _no_mkldnn_nnpack():
        if max_batch is None:
            return torch.export.export(module, _example(spec, 1))
        return torch.export.export(module, _example(spec), dynamic_shapes=_dynamic_shapes(max_batch))


def lower_xnnpack(ep: ExportedProgram):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _no_mkldnn_nnpack():
        return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()


def quantize_int8(module: nn.Module, spec: PreprocessSpec, calibration: torch.Tensor, max_batch: int,
                  batch_size: int = 32) -> nn.Module:
    """PT2E post-training quantization for XNNPACK: int8 activations, per-channel symmetric int8 weights."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with _no_mkldnn_nnpack():
        graph = torch.export.export(module, _example(spec), dynamic_shapes=_dynamic_shapes(max_batch)).module()
        prepared = prepare_pt2e(graph, quantizer)
        batch_size = min(batch_size, max_batch)  # the exported graph refuses batches above max_batch
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start:start + batch_size])
        return convert_pt2e(prepared)


# The uint8 -> float cast: Core ML has no uint8 input type, so it runs on ExecuTorch's CPU kernels.
COREML_CPU_OPS = ("aten._to_copy.default", "dim_order_ops._to_dim_order_copy.default")


def lower_coreml(ep: ExportedProgram):
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.exir import to_edge_transform_and_lower

    specs = CoreMLBackend.generate_compile_specs(
        compute_precision=ct.precision.FLOAT16, minimum_deployment_target=ct.target.iOS17)
    partitioner = CoreMLPartitioner(compile_specs=specs, skip_ops_for_coreml_delegation=list(COREML_CPU_OPS))
    with torch.no_grad():
        return to_edge_transform_and_lower(ep, partitioner=[partitioner]).to_executorch()


# ---------------------------------------------------------------- calibration data (training images only)

@dataclass(frozen=True)
class Calibration:
    root: Path
    files: list[str]  # relative to root
    source: str  # "data_files.txt train rows" or "all images under root"
    seed: int

    def digest(self) -> str:
        """sha256 over (relative path, file sha256): identifies the exact calibration bytes."""
        h = hashlib.sha256()
        for rel in self.files:
            h.update(f"{rel}\t{sha256_file(self.root / rel)}\n".encode())
        return h.hexdigest()


def _refuse_test_split(root: Path, rel: str | None = None) -> None:
    """ImageFolder splits are named train/ and test/; calibrating on test/ would tune the model on it.
    Looks at the split level only (root, its parent, the path inside root), not at unrelated ancestors."""
    parts = Path(root).resolve().parts[-2:] + (Path(rel).parts if rel else ())
    if "test" in parts:
        where = Path(root) / rel if rel else Path(root)
        raise ExportError(f"refusing to calibrate on {where}: it is under a test/ split; "
                          "int8 calibration must use training images only")


def select_calibration(weights: Path, data_root: Path, n: int, seed: int) -> Calibration:
    """A seeded sample of training images: the run's own train rows when data_files.txt exists,
    else every image under data_root. Never validation rows, never a test/ folder."""
    data_root = Path(data_root)
    _refuse_test_split(data_root)
    listing = Path(weights) / "data_files.txt"
    if listing.exists():
        candidates = [path for split, path, _ in read_data_files(weights) if split == "train"]
        source = f"train rows of {listing.name}"
        missing = [rel for rel in candidates if not (data_root / rel).exists()]
        if missing:
            raise ExportError(f"{len(missing)} train file(s) of {listing} are missing under {data_root} "
                              f"(e.g. {missing[0]}); pass the folder the model was trained on with --calib-data")
    else:
        if not data_root.is_dir():
            raise ExportError(f"calibration folder not found: {data_root}")
        candidates = [str(p.relative_to(data_root)) for p in sorted(data_root.rglob("*"))
                      if p.suffix.lower() in IMAGE_EXTENSIONS]
        source = f"all images under {data_root.name}/"
    if not candidates:
        raise ExportError(f"no calibration images found ({source}, {data_root})")
    files = sorted(random.Random(seed).sample(sorted(candidates), min(n, len(candidates))))
    for rel in files:
        _refuse_test_split(data_root, rel)
    return Calibration(data_root, files, source, seed)


def load_uint8_batch(paths: list[Path], spec: PreprocessSpec) -> tuple[torch.Tensor, list[int], list[str]]:
    """Files -> uint8 (N, 3, S, S) exactly as an app must build the input; returns (batch, kept, skipped)."""
    images, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(image_to_uint8(decode_image(Path(path).read_bytes(), spec.max_pixels), spec))
            kept.append(i)
        except (ImageError, OSError) as e:
            skipped.append(f"{path}: {e}")
    size = spec.input_size
    batch = torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return batch, kept, skipped


# ---------------------------------------------------------------- exporter fingerprint and verification

def exporter_settings(max_batch: int = DEFAULT_MAX_BATCH, calib_images: int = DEFAULT_CALIB_IMAGES,
                      seed: int = DEFAULT_SEED) -> dict:
    """Everything besides the weights and the calibration photos that decides the programs' bytes."""
    import executorch.version

    return {"format_version": FORMAT_VERSION, "max_batch": max_batch, "calib_images": calib_images, "seed": seed,
            "torch": torch.__version__, "executorch": executorch.version.__version__,
            "sources_sha256": {_display(p): sha256_file(p) for p in EXPORTER_SOURCES}}


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def verify_exported(out: str | Path, manifest: dict, check_exporter: bool = True) -> dict:
    """hotdog.json, after checking that every program is the file it describes, exported from these
    weights (manifest: the weights' manifest.json) and, with check_exporter, by the current exporter
    (its defaults). A mismatch is one line naming both hashes."""
    try:
        meta = check_programs(out, manifest["weights_sha256"])
    except BundleError as e:
        raise ExportError(str(e)) from None
    if check_exporter:
        recorded = meta.get("exporter", {})
        current = exporter_settings()
        if recorded.get("fingerprint") != settings_fingerprint(current):
            changed = sorted(k for k in set(current) | set(recorded.get("settings", {}))
                             if current.get(k) != recorded.get("settings", {}).get(k))
            raise ExportError(f"{Path(out) / METADATA_FILE} was written by other exporter settings (fingerprint "
                              f"{recorded.get('fingerprint')}, the current exporter's is "
                              f"{settings_fingerprint(current)}; changed: {', '.join(changed)}): run `make export`")
    return meta


# ---------------------------------------------------------------- metadata and the iOS constants

def _display(path: Path) -> str:
    """Paths in the metadata relative to the repo when they sit beside it, so they read the same on any clone."""
    path = Path(path).resolve()
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO.parent) else str(path)


def _planned_memory_bytes(program) -> int:
    """Activation memory the runtime allocates for this program (sized for its largest batch)."""
    plan = program.executorch_program.execution_plan[0]
    return int(sum(plan.non_const_buffer_sizes))


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    namespace = getattr(target, "namespace", None)  # torch OpOverload names omit it; edge ops include it
    return f"{namespace}.{name}" if namespace and not name.startswith(f"{namespace}.") else name


def delegation_summary(program) -> dict:
    """What each delegate of a lowered program took over, and which ops stay on ExecuTorch's CPU kernels.

    Read from the lowered graph: `delegated_ops` counts the aten ops inside each delegate, so a test can
    check that every conv and linear of the model went to the backend."""
    gm = program.exported_program().graph_module
    delegates = []
    for node in gm.graph.nodes:
        if node.op == "get_attr" and hasattr(getattr(gm, node.target), "backend_id"):
            lowered = getattr(gm, node.target)
            ops: dict[str, int] = {}
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner.target).startswith("aten."):
                    ops[_op_name(inner.target)] = ops.get(_op_name(inner.target), 0) + 1
            delegates.append({"backend": lowered.backend_id, "ops": dict(sorted(ops.items()))})
    # Top-level ops outside every delegate (memory allocation and tuple indexing are not compute).
    cpu_ops = sorted({_op_name(n.target) for n in gm.graph.nodes if n.op == "call_function"
                      and isinstance(n.target, torch._ops.OpOverload)})
    return {"delegates": delegates, "cpu_ops": cpu_ops}


def pte_summary(data: bytes) -> dict:
    """Delegates and CPU operators as recorded in the serialized .pte itself."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(data).program.execution_plan[0]
    return {"delegates": [d.id for d in plan.delegates],
            "delegate_compile_specs": [{c.key: bytes(c.value).decode(errors="replace") for c in d.compile_specs}
                                       for d in plan.delegates],
            "cpu_operators": sorted(o.name for o in plan.operators)}


def _program_entry(path: Path, program, **info) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            "planned_memory_bytes": _planned_memory_bytes(program), **info,
            "delegation": delegation_summary(program), "pte": pte_summary(path.read_bytes())}


def swift_constants(spec: PreprocessSpec, source: str) -> str:
    """PreprocessConstants.swift: the part of the spec the app applies before the .pte."""
    # ensure_ascii=False: Swift has no \uXXXX escape (it spells \u{XXXX}), but takes UTF-8 as it is.
    labels = ", ".join(json.dumps(label, ensure_ascii=False) for label in spec.labels)
    return f"""// Generated by mobile_export/export.py from {source}. Do not edit: run `make export`
// (or `python -m mobile_export.export --swift-only`).
// The app resizes and crops with these; normalization (mean/std) is inside the .pte.

enum PreprocessConstants {{
    /// Side of the square uint8 RGB NCHW input the .pte takes.
    static let inputSize = {spec.input_size}
    /// The shorter image side is resized to this ({spec.interpolation}), then center-cropped to inputSize.
    static let resizeSize = {spec.resize_size}
    /// Class order of the output probabilities.
    static let labels: [String] = [{labels}]
    /// The label that means "hot dog" (Prediction.isHotdog).
    static let hotdogLabel = {json.dumps(HOTDOG_LABEL, ensure_ascii=False)}
    /// Images above this many pixels are refused, as the server does.
    static let maxPixels = {spec.max_pixels}
}}
"""


def parse_swift_constants(text: str) -> dict:
    """Read back the values of PreprocessConstants.swift (used by the tests and the parity report)."""
    import re

    values = {}
    for name in ("inputSize", "resizeSize", "maxPixels"):
        m = re.search(rf"static let {name} = (\d+)", text)
        values[name] = int(m.group(1)) if m else None
    m = re.search(r"static let labels: \[String\] = \[(.*)\]", text)
    values["labels"] = json.loads(f"[{m.group(1)}]") if m else None
    m = re.search(r"static let hotdogLabel = (\".*\")", text)
    values["hotdogLabel"] = json.loads(m.group(1)) if m else None
    return values


def build_metadata(spec: PreprocessSpec, manifest: dict, weights: Path, programs: dict, settings: dict) -> dict:
    import executorch.version

    size = spec.input_size
    return {
        "format_version": FORMAT_VERSION,
        "model": manifest["arch"].get("name", "ResNN"),
        "arch": manifest["arch"],
        "source_weights": {"file": _display(Path(weights) / manifest.get("weights", "model.pt")),
                           "sha256": manifest["weights_sha256"]},
        "executorch_version": executorch.version.__version__,
        "executorch_git": executorch.version.git_version,
        "torch_version": torch.__version__,
        "input": {
            "name": "image",
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "value_range": [0, 255],
            "shape": ["batch", 3, size, size],
            "batch": {"min": 1, "max": settings["max_batch"], "note": "coreml program: batch 1 only"},
            "app_preprocessing": [
                "decode; apply EXIF orientation; transparency composited on white",
                f"resize the shorter side to {spec.resize_size} ({spec.interpolation}), keep aspect",
                f"center-crop {size}x{size}",
                "write the bytes as planar R, G, B planes (NCHW), no scaling",
            ],
            "in_graph": "x = (uint8 - 255*mean) / (255*std); probabilities = softmax(model(x))",
        },
        "preprocess": spec.to_dict(),
        "labels": list(spec.labels),
        "output": {
            "name": "probabilities",
            "dtype": "float32",
            "shape": ["batch", len(spec.labels)],
            "meaning": "softmax probabilities over `labels`, in that order; they sum to 1",
            "decision_rule": "argmax",
        },
        "programs": programs,
        "exporter": {"settings": settings, "fingerprint": settings_fingerprint(settings)},
    }


def export_all(weights: str | Path, out: str | Path, calib_data: str | Path, calib_images: int = DEFAULT_CALIB_IMAGES,
               seed: int = DEFAULT_SEED, max_batch: int = DEFAULT_MAX_BATCH, swift_path: str | Path | None = SWIFT_CONSTANTS,
               log=print) -> dict:
    """Write the three .pte files, hotdog.json and (optionally) the Swift constants; return the metadata."""
    if max_batch < 2:
        raise ExportError("max_batch must be at least 2 for a dynamic batch")
    weights, out = Path(weights), Path(out)
    try:
        model, spec, manifest = load_bundle(weights)
    except BundleError as e:
        raise ExportError(str(e)) from None
    wrapper = MobileClassifier(model, spec).eval()
    out.mkdir(parents=True, exist_ok=True)
    programs = {}

    # Check the calibration source before minutes of lowering: a test/ folder is refused up front.
    calibration = select_calibration(weights, Path(calib_data), calib_images, seed)
    calib_x, kept, skipped = load_uint8_batch([calibration.root / f for f in calibration.files], spec)
    if not kept:
        raise ExportError(f"none of the {len(calibration.files)} calibration images could be read")
    used = [calibration.files[i] for i in kept]
    calibration = Calibration(calibration.root, used, calibration.source, seed)

    log(f"fp32: exporting {weights} (input {spec.input_size}, batch 1..{max_batch}) to XNNPACK")
    fp32 = lower_xnnpack(export_program(wrapper, spec, max_batch))
    (out / FP32_FILE).write_bytes(fp32.buffer)
    programs["xnnpack_fp32"] = _program_entry(out / FP32_FILE, fp32, backend="XnnpackBackend",
                                              precision="float32", batch={"min": 1, "max": max_batch})

    log(f"int8: calibrating on {len(used)} training images ({calibration.source})")
    int8 = lower_xnnpack(export_program(quantize_int8(wrapper, spec, calib_x, max_batch), spec, max_batch))
    (out / INT8_FILE).write_bytes(int8.buffer)
    programs["xnnpack_int8"] = _program_entry(
        out / INT8_FILE, int8, backend="XnnpackBackend", precision="int8 weights and activations",
        batch={"min": 1, "max": max_batch},
        quantization={"method": "PT2E post-training static", "quantizer": "XNNPACKQuantizer",
                      "config": "symmetric, per-channel weights",
                      "calibration": {"root": _display(calibration.root), "source": calibration.source,
                                      "seed": seed, "num_images": len(used), "skipped": skipped,
                                      "files_sha256": calibration.digest(), "files": used}})

    log("coreml: lowering to Core ML (fp16 compute, iOS 17), batch 1")
    coreml = lower_coreml(export_program(wrapper, spec, None))
    (out / COREML_FILE).write_bytes(coreml.buffer)
    programs["coreml"] = _program_entry(out / COREML_FILE, coreml, backend="CoreMLBackend",
                                        compute_precision="float16", minimum_deployment_target="iOS17",
                                        batch={"min": 1, "max": 1}, cpu_ops=list(COREML_CPU_OPS))

    text = json.dumps(build_metadata(spec, manifest, weights, programs,
                                     exporter_settings(max_batch, calib_images, seed)), indent=2) + "\n"
    (out / METADATA_FILE).write_text(text)
    metadata = json.loads(text)  # return exactly what an app reads
    if swift_path is not None:
        Path(swift_path).write_text(swift_constants(spec, f"{weights.name}/preprocess.json"))
    for entry in programs.values():
        log(f"  {entry['file']}: {entry['size_bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}…")
    return metadata


def quiet_toolchain() -> None:
    """Silence the exporters' progress chatter so the CLI's own lines stay readable."""
    for name in ("coremltools", "executorch.backends.apple.coreml"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"), help="trained-model folder")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder for .pte files and hotdog.json")
    parser.add_argument("--calib-data", default=None,
                        help="the folder data_files.txt paths are relative to (default: the weights' own data)")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, help="int8 calibration sample size")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the calibration sample")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of the XNNPACK programs")
    parser.add_argument("--swift", default=str(SWIFT_CONSTANTS), help="PreprocessConstants.swift to regenerate")
    parser.add_argument("--swift-only", action="store_true", help="only regenerate the Swift constants (seconds)")
    args = parser.parse_args(argv)
    if args.swift_only:
        Path(args.swift).write_text(swift_constants(PreprocessSpec.load(args.weights),
                                                    f"{Path(args.weights).name}/preprocess.json"))
        return {}
    quiet_toolchain()
    weights_run = Path(args.weights) / "config.yaml"
    calib_data = args.calib_data or (run_photo_root(args.weights) if weights_run.exists() else data_split("train"))
    return export_all(args.weights, args.out, calib_data, args.calib_images, args.seed, args.max_batch,
                      args.swift, log=lambda msg: print(msg, file=sys.stderr))


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (ExportError, DataError))


if __name__ == "__main__":
    sys.exit(cli())
