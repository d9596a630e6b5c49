"""Is a candidate run better than the shipped model? `python -m training.compare weights runs/a runs/b`

Every model is scored on the same photos: the candidates' validation photos (all sources, or --source),
less any photo the baseline trained on (an older baseline may have trained on a newer split's validation
photos). Per photo, the cross-entropy of the true class; per candidate, the mean difference from the
baseline and its paired standard error, the noise measured on these photos. A candidate counts as better
only when its loss is lower by more than two paired standard errors (`better: true`); anything less is a
tie, and a tie keeps the shipped model. Accuracy is reported per source beside the total. test/ is never
read here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from model_src.bundle import BundleError, load_bundle, read_data_files
from model_src.cli import run_cli
from training.data import DataError, run_photo_root
from training.evaluate import classification_metrics, predict_files

MARGIN_SE = 2.0


def run_files(run: Path) -> list[tuple[str, Path, str]]:
    """(split, absolute path, source) of every photo a run trained or validated on."""
    if not (run / "data_files.txt").exists():
        raise DataError(f"{run}: no data_files.txt (not a training run folder)")
    root = run_photo_root(run)
    return [(split, (root / path).resolve(), source) for split, path, source in read_data_files(run)]


def per_image_loss(run: Path, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(per-photo cross-entropy of the true class, probabilities, labels) of a run on `files`."""
    try:
        model, spec, _ = load_bundle(run)
    except BundleError as e:
        raise DataError(str(e)) from None
    classes = {f.parent.name for f in files}
    if not classes <= set(spec.labels):
        raise DataError(f"{run}: its labels {list(spec.labels)} lack {sorted(classes - set(spec.labels))}")
    probs, kept, skipped = predict_files(model, spec, files)
    if skipped:
        raise DataError(f"unreadable validation images: {skipped}")
    truth = torch.tensor([spec.labels.index(f.parent.name) for f in files])
    return -torch.log(probs[torch.arange(len(files)), truth].clamp_min(1e-12)), probs, spec.labels


def validation_photos(baseline: Path, candidates: list[Path], source: str) -> tuple[list[Path], list[str], int]:
    """The candidates' shared validation photos of `source` ("all": every source), less the baseline's
    training photos; returns (paths, sources, how many were dropped as seen by the baseline)."""
    val = None
    for run in candidates:
        rows = sorted((path, src) for split, path, src in run_files(run) if split == "val")
        if val is not None and rows != val:
            raise DataError(f"{run}: its validation photos differ from {candidates[0]}'s; "
                            "losses on different photos are not comparable")
        val = rows
    seen = {path for split, path, _ in run_files(baseline) if split == "train"}
    kept = [(path, src) for path, src in val if source in ("all", src)]
    unseen = [(path, src) for path, src in kept if path not in seen]
    if not unseen:
        raise DataError(f"no {source!r} validation photos of {candidates[0]} that {baseline} did not train on")
    missing = [str(p) for p, _ in unseen if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} validation photos not found (first: {missing[0]}): run `make data`")
    return [p for p, _ in unseen], [s for _, s in unseen], len(kept) - len(unseen)


def compare(baseline: Path, candidates: list[Path], source: str = "all") -> dict:
    files, sources, dropped = validation_photos(baseline, candidates, source)
    base, base_probs, labels = per_image_loss(baseline, files)
    truth = torch.tensor([labels.index(f.parent.name) for f in files])
    report = {"baseline": str(baseline), "source": source, "images": len(files),
              "dropped_baseline_trained_on": dropped, "margin_se": MARGIN_SE,
              "baseline_loss": round(base.mean().item(), 4),
              "baseline_per_source": per_source(base_probs, truth, labels, sources), "candidates": {}}
    for run in candidates:
        loss, probs, _ = per_image_loss(run, files)
        report["candidates"][str(run)] = {**paired_difference(loss, base),
                                          "per_source": per_source(probs, truth, labels, sources)}
    return report


def per_source(probs: torch.Tensor, truth: torch.Tensor, labels, sources: list[str]) -> dict:
    metrics = classification_metrics(probs, truth, labels, sources)
    return {"all": {"n": metrics["n"], "accuracy": round(metrics["accuracy"], 4)},
            **{s: {"n": m["n"], "accuracy": round(m["accuracy"], 4)} for s, m in metrics["per_source"].items()}}


def paired_difference(loss: torch.Tensor, base: torch.Tensor) -> dict:
    diff = loss - base
    se = diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else math.inf
    return {"loss": round(loss.mean().item(), 4), "difference": round(diff.mean().item(), 4),
            "paired_se": round(se, 4), "lower_on": int((diff < 0).sum()),
            "better": bool(diff.mean().item() < -MARGIN_SE * se)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="the shipped run (e.g. weights)")
    parser.add_argument("candidates", type=Path, nargs="+", help="run folders trained on the same split")
    parser.add_argument("--source", default="all", help="validation source to score on (default: all)")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    report = compare(args.baseline, args.candidates, args.source)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return report


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
