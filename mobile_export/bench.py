"""Latency, eager PyTorch vs the fp32 and int8 XNNPACK .pte: `python -m mobile_export.bench`
(make bench-mobile) -> reports/bench_mobile.json. Batch 1 (the phone) by default; `--batch N` gives the
per-photo cost at a server's batch size.

All three run in this one process on the same real photo, interleaved call by call (eager, fp32, int8,
eager, ...), so a neighbour's load on this shared machine hits all three alike. Reported: median and
p10/p90 over many calls after a warm-up, and the thread counts. x86 XNNPACK is not an iPhone: the
numbers rank the variants on this host; they are not phone latencies. One thread each by default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mobile_export.export import (DEFAULT_OUT, FP32_FILE, INT8_FILE, REPO, ExportError, MobileClassifier, _display,
                                  load_uint8_batch, verify_exported)
from mobile_export.parity import load_forward
from model_src.bundle import BundleError, load_bundle
from model_src.cli import run_cli

DEFAULT_IMAGE = REPO / "tests" / "data" / "sample" / "hot_dog" / "133012.jpg"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _et_threads() -> int | None:
    try:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count
        return int(_threadpool_get_thread_count())
    except (ImportError, AttributeError):
        return None


def _stats(ns: list[int]) -> dict:
    ms = sorted(v / 1e6 for v in ns)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return {"median_ms": statistics.median(ms), "p10_ms": pick(0.10), "p90_ms": pick(0.90),
            "mean_ms": statistics.fmean(ms), "min_ms": ms[0], "runs": len(ms)}


def bench(weights: str | Path, out: str | Path, image: str | Path, runs: int, warmup: int,
          threads: int | None = None, batch: int = 1) -> dict:
    if threads:  # the same count for both runtimes, or the comparison measures thread counts
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        torch.set_num_threads(threads)
        _unsafe_reset_threadpool(threads)
    try:
        model, spec, manifest = load_bundle(weights)
    except BundleError as e:
        raise ExportError(str(e)) from None
    out = Path(out)
    max_batch = verify_exported(out, manifest, check_exporter=False)["input"]["batch"]["max"]
    x, kept, skipped = load_uint8_batch([Path(image)], spec)
    if not kept:
        raise ExportError(f"cannot read benchmark image: {skipped[0]}")
    if not 1 <= batch <= max_batch:
        raise ExportError(f"--batch {batch}: the .pte files take batches of 1 to {max_batch}")
    x = x.expand(batch, -1, -1, -1).contiguous()
    eager = MobileClassifier(model, spec).eval()  # same graph as the .pte: uint8 in, probabilities out
    fp32, int8 = load_forward(out / FP32_FILE), load_forward(out / INT8_FILE)

    def run_eager():
        with torch.inference_mode():
            return eager(x)

    variants = {"eager": run_eager, "xnnpack_fp32": lambda: fp32.execute([x])[0],
                "xnnpack_int8": lambda: int8.execute([x])[0]}
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[int]] = {k: [] for k in variants}
    load_before = os.getloadavg()
    for _ in range(runs):
        for name, fn in variants.items():
            t0 = time.perf_counter_ns()
            fn()
            times[name].append(time.perf_counter_ns() - t0)
    result = {name: _stats(ns) for name, ns in times.items()}
    base = result["eager"]["median_ms"]
    for name in ("xnnpack_fp32", "xnnpack_int8"):
        result[name]["speedup_vs_eager"] = base / result[name]["median_ms"]
    for r in result.values():
        r["median_ms_per_image"] = r["median_ms"] / batch
    return {
        "batch": batch, "input_size": spec.input_size, "image": _display(Path(image)), "warmup": warmup,
        "order": "interleaved: one call of each variant per round",
        "weights_sha256": manifest["weights_sha256"],
        "torch_threads": torch.get_num_threads(), "executorch_threadpool_threads": _et_threads(),
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "torch_version": torch.__version__, "results": result,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder written by mobile_export.export")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--runs", type=int, default=300, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=20)
    # One thread each by default: on a shared 2-core host a multi-threaded eager run mostly measures
    # OpenMP threads waiting for a neighbour's cores (seen here: median 112 ms at 2 threads vs 9 ms at 1).
    parser.add_argument("--threads", type=int, default=1, help="threads for both torch and the ExecuTorch "
                        "threadpool; 0 keeps each runtime's own default")
    parser.add_argument("--batch", type=int, default=1, help="copies of the image per call (the server batches)")
    parser.add_argument("--report", default=str(REPO / "reports" / "bench_mobile.json"))
    args = parser.parse_args(argv)
    report = bench(args.weights, args.out, args.image, args.runs, args.warmup, args.threads, args.batch)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report["results"].items():
        print(f"{name:>13}: median {r['median_ms']:.3f} ms per call of {report['batch']}, "
              f"{r['median_ms_per_image']:.3f} per image (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f})"
              + (f", {r['speedup_vs_eager']:.2f}x eager" if "speedup_vs_eager" in r else ""), file=sys.stderr)
    return report


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (ExportError,))


if __name__ == "__main__":
    sys.exit(cli())
