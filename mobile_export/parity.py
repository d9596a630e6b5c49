"""Parity of the exported .pte files with the served model, run by the real ExecuTorch runtime:
`python -m mobile_export.parity` (make export-parity) -> reports/mobile_parity.json.

- fp32 .pte vs eager PyTorch on every image of the split: the same labels and max |Δprob| <= 1e-4;
- int8 .pte: accuracy within 1 point of fp32 (goal 0.5), agreement with fp32, size ratio;
- Core ML .pte: cannot run on Linux (no CoreMLBackend in this runtime); its delegation is reported.
The eager reference is exactly the serving path: model(normalize(uint8)) then softmax.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mobile_export.export import (COREML_FILE, DEFAULT_OUT, FP32_FILE, INT8_FILE, METADATA_FILE, REPO, _display,
                                  ExportError, load_uint8_batch, sha256_file, verify_exported)
from model_src.bundle import BundleError, load_bundle
from model_src.cli import run_cli
from model_src.preprocess import normalize
from training.data import DataError, data_split

FP32_MAX_ABS_DIFF = 1e-4
INT8_MAX_DROP_PT = 1.0
INT8_GOAL_DROP_PT = 0.5


def load_forward(path: str | Path):
    """The `forward` method of a .pte, loaded by the ExecuTorch runtime (not a Python re-implementation)."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(Path(path)).load_method("forward")


def run_method(method, images: torch.Tensor, max_batch: int) -> torch.Tensor:
    """Probabilities for uint8 (N, 3, S, S) images, in chunks the program's batch range accepts."""
    outs = [method.execute([images[i:i + max_batch].contiguous()])[0]
            for i in range(0, len(images), max_batch)]
    return torch.cat(outs) if outs else torch.zeros(0, 0)


@torch.no_grad()
def eager_probs(model, spec, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([torch.softmax(model(normalize(images[i:i + batch_size], spec)), dim=1)
                      for i in range(0, len(images), batch_size)])


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return (probs.argmax(1) == y).float().mean().item() if len(y) else 0.0


def parity_report(weights: str | Path, out: str | Path, data: str | Path) -> dict:
    from executorch.runtime import Runtime
    from training.data import scan_image_folder

    out, data = Path(out), Path(data)
    try:
        model, spec, manifest = load_bundle(weights)
    except BundleError as e:
        raise ExportError(str(e)) from None
    meta = verify_exported(out, manifest, check_exporter=False)
    max_batch = meta["input"]["batch"]["max"]
    samples, _ = scan_image_folder(data, spec.labels)
    images, kept, skipped = load_uint8_batch([s.path for s in samples], spec)
    if not kept:
        raise ExportError(f"no readable images in {data}")
    y = torch.tensor([samples[i].label for i in kept])

    p_eager = eager_probs(model, spec, images)
    p_fp32 = run_method(load_forward(out / FP32_FILE), images, max_batch)
    p_int8 = run_method(load_forward(out / INT8_FILE), images, max_batch)

    acc_eager, acc_fp32, acc_int8 = accuracy(p_eager, y), accuracy(p_fp32, y), accuracy(p_int8, y)
    fp32_diff = (p_fp32 - p_eager).abs().max().item()
    fp32_mismatch = int((p_fp32.argmax(1) != p_eager.argmax(1)).sum())
    drop_pt = (acc_fp32 - acc_int8) * 100
    size_fp32, size_int8 = meta["programs"]["xnnpack_fp32"]["size_bytes"], meta["programs"]["xnnpack_int8"]["size_bytes"]
    coreml = meta["programs"]["coreml"]
    report = {
        "data": _display(data), "n": len(kept), "skipped": skipped,
        "weights_sha256": manifest["weights_sha256"], "input_size": spec.input_size,
        "executorch_version": meta["executorch_version"],
        "eager": {"accuracy": acc_eager},
        "xnnpack_fp32": {
            "accuracy": acc_fp32, "label_mismatches_vs_eager": fp32_mismatch,
            "max_abs_prob_diff_vs_eager": fp32_diff, "limit": FP32_MAX_ABS_DIFF,
            "pass": fp32_mismatch == 0 and fp32_diff <= FP32_MAX_ABS_DIFF,
        },
        "xnnpack_int8": {
            "accuracy": acc_int8, "accuracy_drop_vs_fp32_pt": drop_pt,
            "limit_pt": INT8_MAX_DROP_PT, "goal_pt": INT8_GOAL_DROP_PT,
            "within_goal": drop_pt <= INT8_GOAL_DROP_PT,
            "agreement_with_fp32": (p_int8.argmax(1) == p_fp32.argmax(1)).float().mean().item(),
            "max_abs_prob_diff_vs_fp32": (p_int8 - p_fp32).abs().max().item(),
            "size_bytes": size_int8, "fp32_size_bytes": size_fp32, "size_ratio_fp32_over_int8": size_fp32 / size_int8,
            "calibration_files_sha256": meta["programs"]["xnnpack_int8"]["quantization"]["calibration"]["files_sha256"],
            "pass": drop_pt <= INT8_MAX_DROP_PT,
        },
        "coreml": {
            "runs_here": Runtime.get().backend_registry.is_available("CoreMLBackend"),
            "note": "built and checked for full delegation; run it on an iOS 17+ device or macOS",
            "size_bytes": coreml["size_bytes"], "delegates": coreml["pte"]["delegates"],
            "cpu_operators": coreml["pte"]["cpu_operators"],
        },
    }
    report["pass"] = report["xnnpack_fp32"]["pass"] and report["xnnpack_int8"]["pass"]
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder written by mobile_export.export")
    parser.add_argument("--data", help="ImageFolder split to compare on (default: <data home>/hotdog/test)")
    parser.add_argument("--report", default=str(REPO / "reports" / "mobile_parity.json"))
    args = parser.parse_args(argv)
    report = parity_report(args.weights, args.out, args.data or data_split("test"))
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    fp32, int8 = report["xnnpack_fp32"], report["xnnpack_int8"]
    print(f"n={report['n']}  eager acc {report['eager']['accuracy']:.4f}  "
          f"fp32 .pte acc {fp32['accuracy']:.4f} max|Δp| {fp32['max_abs_prob_diff_vs_eager']:.2e} "
          f"mismatches {fp32['label_mismatches_vs_eager']}  "
          f"int8 .pte acc {int8['accuracy']:.4f} ({-int8['accuracy_drop_vs_fp32_pt']:+.2f} pt) "
          f"{int8['size_ratio_fp32_over_int8']:.2f}x smaller  -> {'PASS' if report['pass'] else 'FAIL'}",
          file=sys.stderr)
    return report


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (ExportError, DataError), passed=lambda report: report["pass"])


if __name__ == "__main__":
    sys.exit(cli())
