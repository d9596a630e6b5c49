"""Served vs offline predictions on a whole split: `python -m bench.parity` (make serve-parity).

Every image of the split goes through the running TorchServe (HTTP, several requests in flight so
the server batches them, as in production) and through training.evaluate's eager predictions on the
same weights folder. Writes agreement, max |Δp| and both accuracies to a JSON report.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

from model_src.bundle import load_bundle
from serving.config import CONFIG, MODEL_NAME, REPO, InferenceKey, ServeConfig, ServeError, http_key_refused
from serving.http_client import predict_bytes
from training.data import SHARED_DATA, DataError, scan_image_folder
from training.evaluate import predict_files

TOLERANCE = 1e-5  # float32 reductions may differ in the last bits between batch compositions


def served_probabilities(paths: list[Path], cfg: ServeConfig, key: InferenceKey, labels: tuple[str, ...],
                         concurrency: int = 8) -> tuple[list, float]:
    """Per path: a probability list in label order, or an error string; plus the wall time."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def one(path: Path):
        image = path.read_bytes()
        status, body = key.call(lambda k: predict_bytes(image, cfg.inference_url, k, session=session),
                                http_key_refused)
        if status != 200:
            return f"HTTP {status}: {body.get('error') or body.get('message') or body}"
        return body

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, paths))
    return answers, time.perf_counter() - start


def batch_counters(cfg: ServeConfig) -> tuple[float, float]:
    """(batches, requests) the handler has seen so far, from the Prometheus endpoint."""
    text = requests.get(f"{cfg.metrics_url}/metrics", timeout=30).text
    values = {}
    for part in ("count", "sum"):
        match = re.search(rf'^HotdogBatchSize_{part}{{ModelName="{MODEL_NAME}".*}} ([0-9.eE+-]+)$', text, re.M)
        values[part] = float(match[1]) if match else 0.0
    return values["count"], values["sum"]


def run(data: Path, weights: Path, cfg: ServeConfig, workdir: Path, concurrency: int = 8) -> dict:
    model, spec, manifest = load_bundle(weights)
    samples, _ = scan_image_folder(data, spec.labels)
    paths = [s.path for s in samples]
    offline, kept, skipped = predict_files(model, spec, paths)
    batches_before, requests_before = batch_counters(cfg)
    answers, seconds = served_probabilities(paths, cfg, InferenceKey.of_server(cfg, workdir), spec.labels,
                                            concurrency)
    batches_after, requests_after = batch_counters(cfg)

    version = manifest["weights_sha256"][:12]
    served_versions = {a["model_version"] for a in answers if isinstance(a, dict)}
    if served_versions - {version}:
        raise ServeError(f"the server answers with model {sorted(served_versions)} but {weights} is {version}: "
                         "rebuild and restart (`make stop && make serve`)")

    offline_row = {i: row for row, i in enumerate(kept)}
    served_errors = {str(paths[i]): a for i, a in enumerate(answers) if isinstance(a, str)}
    both = [i for i in kept if isinstance(answers[i], dict)]
    # Shaped (images, classes) even when nothing was served, so the comparisons below stay defined.
    served = torch.tensor([[answers[i]["probabilities"][c] for c in spec.labels] for i in both],
                          dtype=torch.float32).reshape(len(both), len(spec.labels))
    eager = offline[[offline_row[i] for i in both]]
    y_true = torch.tensor([samples[i].label for i in both])
    agree = (served.argmax(1) == eager.argmax(1)).float()
    max_dp = (served - eager).abs().max().item() if both else None  # None: JSON has no NaN
    served_ok = [i for i, a in enumerate(answers) if isinstance(a, dict)]
    served_pred = torch.tensor([spec.labels.index(answers[i]["label"]) for i in served_ok])
    served_true = torch.tensor([samples[i].label for i in served_ok])
    report = {
        "data": str(data),
        "weights": str(weights),
        "model_version": version,
        "input_size": spec.input_size,
        "images": len(paths),
        "compared": len(both),
        "label_agreement": agree.mean().item() if both else 0.0,
        "disagreements": [str(paths[both[k]]) for k in torch.nonzero(agree == 0).flatten().tolist()],
        "max_abs_prob_diff": max_dp,
        "tolerance": TOLERANCE,
        "served_accuracy": (served_pred == served_true).float().mean().item() if served_ok else 0.0,
        "offline_accuracy": (eager.argmax(1) == y_true).float().mean().item() if both else 0.0,
        "served_errors": served_errors,
        "offline_skipped": skipped,
        "concurrency": concurrency,
        "served_images_per_s": len(paths) / seconds,
        "mean_batch_size": ((requests_after - requests_before) / (batches_after - batches_before)
                            if batches_after > batches_before else None),
    }
    report["pass"] = (not served_errors and len(skipped) == 0 and report["label_agreement"] == 1.0
                      and max_dp is not None and max_dp <= TOLERANCE)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "test"))
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--workdir", default=str(REPO), help="where the server wrote key_file.json")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "reports" / "serve_parity.json"))
    args = parser.parse_args(argv)
    try:
        report = run(Path(args.data), Path(args.weights), ServeConfig.load(args.config), Path(args.workdir),
                     args.concurrency)
    except (ServeError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except requests.ConnectionError:
        print("error: TorchServe is not answering: start it with `make serve`", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("images", "label_agreement", "max_abs_prob_diff",
                                             "served_accuracy", "offline_accuracy", "served_images_per_s",
                                             "mean_batch_size", "pass")}))
    if report["served_errors"]:  # the report lists them all; one says why
        path, error = next(iter(report["served_errors"].items()))
        print(f"{len(report['served_errors'])} images not served, e.g. {path}: {error}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
