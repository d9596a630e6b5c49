"""Leave-one-source-out table: how a student and its teacher, both trained without one source, score on it.

Each run is `train.py --exclude-source S` (S's validation photos stay, and never choose anything): the
student's figure is its chosen checkpoint's accuracy on S's validation photos, the teacher's is the head
fitted in the same run on the same training photos, scored on the same photos.

    python -m training.loso runs/loso-kaggle runs/loso-sasyl_fastfood --out docs/train_runs/loso.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from model_src.cli import run_cli
from training.data import DataError, display_path

GOAL_POINTS = 3.0  # the student within this many accuracy points of the teacher left out the same way


def loso_row(run: Path) -> dict:
    """The left-out source's figures of one finished `--exclude-source` run."""
    for name in ("config.yaml", "manifest.json", "metrics.jsonl"):
        if not (run / name).is_file():
            raise DataError(f"{run} has no {name}: not a finished training run")
    source = yaml.safe_load((run / "config.yaml").read_text()).get("exclude_source", "")
    if not source:
        raise DataError(f"{run} is not a leave-one-source-out run (its config has no exclude_source)")
    manifest = json.loads((run / "manifest.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    chosen = next((r for r in rows if r["epoch"] == manifest["best_epoch"] and f"val_acc_{source}" in r), None)
    if chosen is None:
        raise DataError(f"{run}: metrics.jsonl has no val_acc_{source} at the chosen epoch {manifest['best_epoch']}")
    student = chosen[f"val_acc_{source}"]
    teacher = manifest.get(f"teacher_val_acc_{source}")
    gap = None if teacher is None else 100 * (teacher - student)
    return {"left_out": source, "run": display_path(run), "val_photos": manifest["sources"][source]["val"],
            "student_acc": round(student, 4), "teacher_acc": None if teacher is None else round(teacher, 4),
            "teacher_minus_student_points": None if gap is None else round(gap, 1),
            f"within_{GOAL_POINTS:g}_points": None if gap is None else gap <= GOAL_POINTS,
            # Per class (runs from before these were recorded: None), as a source can be mostly one class.
            "student_recall": chosen.get(f"val_recall_{source}"),
            "teacher_recall": manifest.get(f"teacher_val_recall_{source}"),
            "selected_on": manifest.get("selected_on"), "best_epoch": manifest["best_epoch"],
            "epochs_run": manifest["epochs_run"], "train_minutes": round(manifest["train_minutes"], 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished --exclude-source runs")
    parser.add_argument("--out", type=Path, help="write the table here as JSON")
    args = parser.parse_args(argv)
    table = [loso_row(run) for run in args.runs]
    for row in table:
        teacher = "-" if row["teacher_acc"] is None else f"{row['teacher_acc']:.3f}"
        recall = "" if not row["student_recall"] else "  student per class " + ", ".join(
            f"{name} {value:.3f}" for name, value in row["student_recall"].items())
        print(f"{row['left_out']:<20} {row['val_photos']:>4} photos  student {row['student_acc']:.3f}  "
              f"teacher {teacher}{recall}  ({row['run']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1) + "\n")
    return table


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
