"""Is a candidate run better than the shipped model? `python -m training.compare weights runs/a runs/b`

Every run is scored on the same photos: the baseline's validation images of one source (Kaggle, the
source `test/` is drawn from), read from its data_files.txt. Per photo, the cross-entropy of the true
class; per candidate, the mean difference from the baseline and its paired standard error. On 74 photos
a whole-set val loss moves by a few hundredths between equally good runs, so a candidate counts as
better only when its loss is lower by more than two paired standard errors (`better: true`); anything
less is a tie, and a tie keeps the shipped model. test/ is never read here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml

from model_src.bundle import BundleError, load_bundle, read_data_files
from model_src.cli import run_cli
from training.data import DataError, run_data_root
from training.evaluate import predict_files

MARGIN_SE = 2.0


def validation_files(run: Path, source: str) -> list[str]:
    if not (run / "data_files.txt").exists():
        raise DataError(f"{run}: no data_files.txt (not a training run folder)")
    return [path for split, path, row_source in read_data_files(run) if split == "val" and row_source == source]


def per_image_loss(run: Path, data_root: Path, files: list[str]) -> torch.Tensor:
    try:
        model, spec, _ = load_bundle(run)
    except BundleError as e:
        raise DataError(str(e)) from None
    probs, kept, skipped = predict_files(model, spec, [data_root / f for f in files])
    if skipped:
        raise DataError(f"unreadable validation images: {skipped}")
    classes = {Path(f).parts[0] for f in files}
    if not classes <= set(spec.labels):
        raise DataError(f"{run}: its labels {list(spec.labels)} lack {sorted(classes - set(spec.labels))}")
    truth = torch.tensor([spec.labels.index(Path(f).parts[0]) for f in files])
    return -torch.log(probs[torch.arange(len(files)), truth].clamp_min(1e-12))


def compare(baseline: Path, candidates: list[Path], data_root: Path | None = None, source: str = "kaggle") -> dict:
    files = validation_files(baseline, source)
    if not files:
        raise DataError(f"{baseline}: no {source!r} validation images in data_files.txt")
    for run in candidates:
        if validation_files(run, source) != files:
            raise DataError(f"{run}: its {source} validation photos differ from {baseline}'s; "
                            "losses on different photos are not comparable")
    if data_root is None:
        data_root = run_data_root(yaml.safe_load((baseline / "config.yaml").read_text())["data"])
    if not data_root.is_dir():
        raise DataError(f"training images not found at {data_root}: pass --data")
    base = per_image_loss(baseline, data_root, files)
    report = {"baseline": str(baseline), "source": source, "images": len(files), "margin_se": MARGIN_SE,
              "baseline_loss": round(base.mean().item(), 4), "candidates": {}}
    for run in candidates:
        report["candidates"][str(run)] = paired_difference(per_image_loss(run, data_root, files), base)
    return report


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
    parser.add_argument("--data", type=Path, help="the training ImageFolder (default: the baseline's config)")
    parser.add_argument("--source", default="kaggle", help="validation source to score on")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    report = compare(args.baseline, args.candidates, args.data, args.source)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return report


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
