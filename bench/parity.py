"""Served vs offline predictions on a whole split: `python -m bench.parity` (make serve-parity).

Every image of the split goes through the running TorchServe (HTTP, several requests in flight so
the server batches them, as in production) and through `offline_predictor`: what the archive's
model-config serves (the same runtime, the eager model or the .pte run by the ExecuTorch runtime, and
the same decode), computed here without TorchServe, on the same weights. Writes agreement, max |Δp|,
both accuracies and the eager fp32 accuracy to a JSON report.
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
import yaml

from bench.reports import repo_relative
from handlers.hotdog_handler import PROB_DECIMALS
from mobile_export.export import DEFAULT_OUT as EXPORTED
from model_src.bundle import PTE_PROGRAMS, check_programs, load_bundle
from model_src.preprocess import ImageError, decode_image, image_to_tensor, image_to_uint8
from serving.archive import MODEL_CONFIG
from serving.config import CONFIG, MODEL_NAME, REPO, InferenceKey, ServeConfig, ServeError, http_key_refused
from serving.http_client import predict_bytes
from training.data import DataError, data_split, scan_image_folder
from training.evaluate import predict_files

# float32 reductions may differ in the last bits between batch compositions; answers carry PROB_DECIMALS.
TOLERANCE = 1e-5 + 0.5 * 10 ** -PROB_DECIMALS


def offline_predictor(weights: Path, model_config: Path = MODEL_CONFIG, exported: Path = EXPORTED):
    """(spec, decode, forward) as an archive built with this model-config serves: decode(bytes) -> image
    (ImageError if unusable; jpeg_draft as configured), forward(images) -> (N, classes) probabilities by
    the configured runtime (the eager model, or the .pte by the ExecuTorch runtime), without TorchServe."""
    model, spec, manifest = load_bundle(weights)
    options = (yaml.safe_load(Path(model_config).read_text()) or {}).get("handler") or {}
    runtime = options.get("runtime", "eager")
    draft = spec.resize_size if options.get("jpeg_draft") else None

    def decode(data: bytes):
        return decode_image(data, spec.max_pixels, draft)

    if runtime in PTE_PROGRAMS:
        from executorch.runtime import Runtime

        entry = check_programs(exported, manifest["weights_sha256"])["programs"][PTE_PROGRAMS[runtime]]
        method = Runtime.get().load_program(Path(exported) / entry["file"]).load_method("forward")

        def forward(images) -> torch.Tensor:  # uint8 in, probabilities out
            x = torch.stack([image_to_uint8(img, spec) for img in images])
            step = entry["batch"]["max"]
            return torch.cat([method.execute([x[i:i + step].contiguous()])[0] for i in range(0, len(x), step)])
    else:
        @torch.inference_mode()
        def forward(images) -> torch.Tensor:
            return torch.softmax(model(torch.stack([image_to_tensor(img, spec) for img in images])), dim=1)

    return spec, decode, forward


def offline_files(decode, forward, paths: list[Path], labels: tuple[str, ...], batch_size: int = 32):
    """(probabilities of the readable files, their indices, 'path: reason' for the others)."""
    probs, kept, skipped, images = [], [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(decode(Path(path).read_bytes()))
            kept.append(i)
        except (ImageError, OSError) as e:
            skipped.append(f"{path}: {e}")
        if len(images) == batch_size or (i == len(paths) - 1 and images):
            probs.append(forward(images).float())
            images = []
    return (torch.cat(probs) if probs else torch.zeros(0, len(labels))), kept, skipped


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


def run(data: Path, weights: Path, cfg: ServeConfig, workdir: Path, concurrency: int = 8,
        model_config: Path = MODEL_CONFIG) -> dict:
    model, spec, manifest = load_bundle(weights)
    samples, _ = scan_image_folder(data, spec.labels)
    paths = [s.path for s in samples]
    _, decode, forward = offline_predictor(weights, model_config)
    offline, kept, skipped = offline_files(decode, forward, paths, spec.labels)
    fp32, fp32_kept, _ = predict_files(model, spec, paths)  # the eager fp32 model on full decodes
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
    served_errors = {repo_relative(paths[i]): a for i, a in enumerate(answers) if isinstance(a, str)}
    both = [i for i in kept if isinstance(answers[i], dict)]
    # Shaped (images, classes) even when nothing was served, so the comparisons below stay defined.
    served = torch.tensor([[answers[i]["probabilities"][c] for c in spec.labels] for i in both],
                          dtype=torch.float32).reshape(len(both), len(spec.labels))
    reference = offline[[offline_row[i] for i in both]]
    y_true = torch.tensor([samples[i].label for i in both])
    agree = (served.argmax(1) == reference.argmax(1)).float()
    max_dp = (served - reference).abs().max().item() if both else None  # None: JSON has no NaN
    served_ok = [i for i, a in enumerate(answers) if isinstance(a, dict)]
    served_pred = torch.tensor([spec.labels.index(answers[i]["label"]) for i in served_ok])
    served_true = torch.tensor([samples[i].label for i in served_ok])
    report = {
        "data": repo_relative(data),
        "weights": repo_relative(weights),
        "model_version": version,
        "input_size": spec.input_size,
        "images": len(paths),
        "compared": len(both),
        "label_agreement": agree.mean().item() if both else 0.0,
        "disagreements": [repo_relative(paths[both[k]]) for k in torch.nonzero(agree == 0).flatten().tolist()],
        "max_abs_prob_diff": max_dp,
        "tolerance": TOLERANCE,
        "served_accuracy": (served_pred == served_true).float().mean().item() if served_ok else 0.0,
        "offline_accuracy": (reference.argmax(1) == y_true).float().mean().item() if both else 0.0,
        "offline_reference": repo_relative(model_config),
        "fp32_eager_accuracy": (fp32.argmax(1) == torch.tensor([samples[i].label for i in fp32_kept])).float()
                               .mean().item() if fp32_kept else 0.0,
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
    parser.add_argument("--data", help="(default: <data home>/hotdog/test)")
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--workdir", default=str(REPO), help="where the server wrote key_file.json")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model-config", default=str(MODEL_CONFIG),
                        help="the served archive's model-config.yaml (its runtime and decode are the reference)")
    parser.add_argument("--out", default=str(REPO / "reports" / "serve_parity.json"))
    args = parser.parse_args(argv)
    try:
        report = run(Path(args.data) if args.data else data_split("test"), Path(args.weights), ServeConfig.load(args.config), Path(args.workdir),
                     args.concurrency, Path(args.model_config))
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
                                             "served_accuracy", "offline_accuracy", "fp32_eager_accuracy",
                                             "served_images_per_s",
                                             "mean_batch_size", "pass")}))
    if report["served_errors"]:  # the report lists them all; one says why
        path, error = next(iter(report["served_errors"].items()))
        print(f"{len(report['served_errors'])} images not served, e.g. {path}: {error}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
