"""What one request costs inside a worker: `python -m bench.handler_cost` (make bench-handler) ->
reports/handler_cost.json.

The archive is unpacked and loaded the way TorchServe's Python worker loads it (ts.model_loader, the
archive's model-config.yaml, so the same runtime and thread count), and real JPEGs go through
`Service.predict` in batches, as raw request bodies: TorchServe's own per-batch Python work (request
unpacking, metrics, response encoding) plus the handler's preprocess, inference and postprocess, each
timed in process CPU time. Set beside `make bench-serve`'s server CPU per request, it shows how much of a
request is ours and how much is TorchServe's (the frontend and the socket protocol are not in here).
A benchmark: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.reports import repo_relative, test_images
from mobile_export.bench import _cpu_model
from serving.config import MAR, MODEL_NAME, REPO
from training.data import SHARED_DATA

HANDLER_STEPS = ("preprocess", "inference", "postprocess")


def load_service(model_dir: Path, batch_size: int):
    """The archive's handler behind a real ts.service.Service, as ts.model_service_worker builds it."""
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import ModelLoaderFactory

    sys.path.insert(0, str(model_dir))  # the worker imports the handler and model_src from the archive
    # The worker logs INFO to its stdout, which the frontend reads; here the lines are written and dropped.
    logging.basicConfig(stream=open(os.devnull, "w"), format="%(message)s", level=logging.INFO, force=True)
    metrics = MetricsCacheYamlImpl(str(REPO / "serve_config" / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    handler = manifest["model"]["handler"]
    service = ModelLoaderFactory.get_model_loader().load(
        MODEL_NAME, str(model_dir), handler, None, batch_size, metrics_cache=metrics)
    service.cl_socket = None
    return service


def request_rows(images: list[bytes], start: int) -> list[dict]:
    """Requests as the worker receives them from the frontend: a raw body per request."""
    return [{"requestId": f"r{start + i}".encode(), "headers": [],
             "parameters": [{"name": "body", "contentType": "image/jpeg", "value": data}]}
            for i, data in enumerate(images)]


def cost_per_request(service, images: list[bytes], batch: int, rounds: int) -> dict:
    """CPU ms per request of Service.predict, and of the handler's three steps, best of `rounds`."""
    handler = service._entry_point.__self__
    step_time = {name: 0.0 for name in HANDLER_STEPS}

    answers = []

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                out = fn(*args, **kwargs)
            finally:
                step_time[name] += time.process_time() - start
            if name == "postprocess":
                answers.extend(out)
            return out
        return wrapper

    originals = {name: getattr(handler, name) for name in HANDLER_STEPS}
    for name, fn in originals.items():
        setattr(handler, name, timed(name, fn))
    best = None
    try:
        for _ in range(rounds):
            for name in step_time:
                step_time[name] = 0.0
            n, start = 0, time.process_time()
            for i in range(0, len(images) - len(images) % batch, batch):
                response = service.predict(request_rows(images[i:i + batch], i))
                if not response:
                    raise RuntimeError("the service returned no response")
                n += batch
            total = time.process_time() - start
            if best is None or total < best[0]:
                best = (total, n, dict(step_time))
    finally:
        for name, fn in originals.items():
            setattr(handler, name, fn)
    total, n, steps = best
    # Every request answered with a label, or the figures time error paths.
    row = {"requests": n, "answered": sum("label" in json.loads(a) for a in answers) // rounds,
           "total_ms": total / n * 1000}
    row.update({f"{name}_ms": t / n * 1000 for name, t in steps.items()})
    row["torchserve_python_ms"] = row["total_ms"] - sum(row[f"{name}_ms"] for name in HANDLER_STEPS)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mar", type=Path, default=MAR, help="archive to load (default: make mar's)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "test",
                        help="ImageFolder split of JPEGs (without it: the tests' sample, reported to build/reports/)")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the images; the fastest counts")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "handler_cost.json")
    args = parser.parse_args(argv)
    if not args.mar.exists():
        print(f"error: {args.mar} not found: run `make mar` first", file=sys.stderr)
        return 2
    images, data, out = test_images(args.data, args.out)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="hotdog-handler-cost-") as tmp:
        with zipfile.ZipFile(args.mar) as archive:
            archive.extractall(tmp)
        service = load_service(Path(tmp), max(batches))
        handler = service._entry_point.__self__
        rows = {str(b): cost_per_request(service, images, b, args.rounds) for b in batches}
    report = {"mar": repo_relative(args.mar), "data": data, "images": len(images), "cpu": _cpu_model(),
              "runtime": handler.runtime, "worker_threads": __import__("torch").get_num_threads(),
              "jpeg_draft": handler.draft_min_side is not None, "cpu_ms_per_request_by_batch": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for b, row in rows.items():
        print(f"batch {b}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_ms")))
    print(f"wrote {repo_relative(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
