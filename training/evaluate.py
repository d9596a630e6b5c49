"""Evaluate a trained-model folder on an ImageFolder split: `python -m training.evaluate`.

Images go through model_src.preprocess exactly as the TorchServe handler does. The decision rule is
fixed in advance (argmax over the softmax) and is never tuned on the evaluated split.
Writes eval_<split>.json (metrics), eval_<split>_predictions.jsonl (one line per image) and
eval_<split>_confusion.png next to the weights, plus curves.png when the folder has metrics.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from model_src.bundle import BundleError, load_bundle, read_manifest, sha256_file
from model_src.cli import run_cli
from model_src.preprocess import HOTDOG_LABEL, ImageError, PreprocessSpec, decode_image, image_to_tensor
from model_src.resnn import inference_gflops
from training.data import DataError, data_split, display_path, scan_image_folder
from training.plots import plot_confusion, plot_curves


def load_model_folder(folder: str | Path) -> tuple[torch.nn.Module, PreprocessSpec, dict]:
    """A ResNN run folder, or the transfer arm's (training.transfer), as (model, spec, manifest)."""
    from training.teacher import TRANSFER_ARCHS, build_transfer_model

    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
        if manifest["arch"]["name"] not in TRANSFER_ARCHS:
            return load_bundle(folder)
    except BundleError as e:
        raise DataError(str(e)) from None
    weights = manifest["weights"] and folder / manifest["weights"]
    if weights and sha256_file(weights) != manifest["weights_sha256"]:
        raise DataError(f"{weights} does not match its manifest's sha256: refusing to load")
    state = torch.load(weights, map_location="cpu", weights_only=True) if weights else None
    return build_transfer_model(manifest["arch"], state), PreprocessSpec.load(folder), manifest


@torch.no_grad()
def predict_files(model, spec: PreprocessSpec, paths: list[Path], batch_size: int = 64
                  ) -> tuple[torch.Tensor, list[int], list[str]]:
    """Softmax probabilities for readable images; returns (probs, kept indices, 'path: reason' skips)."""
    probs, kept, skipped, batch = [], [], [], []

    def flush():
        if batch:
            probs.append(torch.softmax(model(torch.stack(batch)).float(), dim=1))
            batch.clear()

    for i, path in enumerate(paths):
        try:
            batch.append(image_to_tensor(decode_image(Path(path).read_bytes(), spec.max_pixels), spec))
            kept.append(i)
        except (ImageError, OSError) as e:
            skipped.append(f"{path}: {e}")
        if len(batch) == batch_size:
            flush()
    flush()
    return (torch.cat(probs) if probs else torch.zeros(0, len(spec.labels))), kept, skipped


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).float().sum()
    ties = (pos[:, None] == neg[None, :]).float().sum()
    return ((greater + 0.5 * ties) / (len(pos) * len(neg))).item()


def classification_metrics(probs: torch.Tensor, y_true: torch.Tensor, labels: tuple[str, ...] | list[str],
                           sources: list[str] | None = None) -> dict:
    """The evaluation figures of (N, K) probabilities against N true class indices, argmax rule: accuracy,
    per-class precision/recall/F1, confusion matrix (rows = true, columns = predicted), ROC AUC of the
    hot dog class (two classes only) and, given each photo's source, accuracy per source."""
    k, n = len(labels), len(y_true)
    y_pred = probs.argmax(dim=1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        confusion[t, p] += 1
    per_class = {}
    for c, name in enumerate(labels):
        tp = confusion[c, c].item()
        predicted, actual = confusion[:, c].sum().item(), confusion[c, :].sum().item()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    correct = y_pred == y_true
    report = {
        "n": n,
        "accuracy": correct.sum().item() / n if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "decision_rule": "argmax",
    }
    if k == 2:
        positive = list(labels).index(HOTDOG_LABEL) if HOTDOG_LABEL in labels else 0
        report["roc_auc"] = roc_auc(probs[:, positive], y_true == positive)
    if sources is not None:
        report["per_source"] = {}
        for source in sorted(set(sources)):
            mask = torch.tensor([s == source for s in sources])
            report["per_source"][source] = {"n": int(mask.sum()), "accuracy": correct[mask].sum().item() / int(mask.sum())}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights", help="trained-model folder (model.pt, preprocess.json, manifest.json)")
    parser.add_argument("--data", help="ImageFolder split to evaluate (default: <data home>/hotdog/test)")
    parser.add_argument("--out", help="output folder (default: the weights folder)")
    parser.add_argument("--name", help="split name used in output file names (default: the data folder name)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    model, spec, manifest = load_model_folder(args.weights)
    data = Path(args.data) if args.data else data_split("test")
    saved = Path(args.weights) / "config.yaml"  # a run's own source patterns name each photo's source
    run_cfg = (yaml.safe_load(saved.read_text()) or {}) if saved.exists() else {}
    samples, _ = scan_image_folder(data, spec.labels, run_cfg.get("source_patterns"),
                                   run_cfg.get("default_source", "default"))
    probs, kept, skipped = predict_files(model, spec, [s.path for s in samples], args.batch_size)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s):", *skipped, sep="\n  ", file=sys.stderr)
    if not kept:
        raise DataError(f"no readable images in {data}")
    y_true = torch.tensor([samples[i].label for i in kept])
    report = classification_metrics(probs, y_true, spec.labels, [samples[i].source for i in kept])
    name = args.name or data.name
    report.update(split=name, data=display_path(data), skipped=skipped, weights_sha256=manifest["weights_sha256"],
                  input_size=spec.input_size, gflops_per_image=round(inference_gflops(model, spec.input_size), 4),
                  parameters=sum(p.numel() for p in model.parameters()), train_minutes=manifest.get("train_minutes"))
    out = Path(args.out or args.weights)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eval_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out / f"eval_{name}_predictions.jsonl").open("w") as f:
        for row, i in enumerate(kept):
            f.write(json.dumps({"file": str(samples[i].path.relative_to(data)), "true": spec.labels[samples[i].label],
                                "pred": spec.labels[int(probs[row].argmax())],
                                "probabilities": dict(zip(spec.labels, probs[row].tolist()))}) + "\n")
    plot_confusion(report["confusion_matrix"], list(spec.labels), out / f"eval_{name}_confusion.png",
                   f"{name}: accuracy {report['accuracy']:.3f}")
    if (Path(args.weights) / "metrics.jsonl").exists():
        plot_curves(Path(args.weights) / "metrics.jsonl", out / "curves.png")
    print(json.dumps({k: report[k] for k in ("split", "n", "accuracy", "roc_auc", "gflops_per_image", "parameters")
                      if k in report}))
    return report


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
