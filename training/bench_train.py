"""Time-to-accuracy benchmark: `python -m training.bench_train` (or `make bench-train`).

Trains each recipe under the same training-time budget on the same data and split, one after the
other in one invocation, then evaluates each once on the test split. Writes reports/bench_train.json
and reports/bench_train.png (validation accuracy vs training minutes). A recipe whose run folder is
already complete is reused; an interrupted one is resumed; either only if it was trained with the same
--budget-min and --data.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from model_src.cli import run_cli
from training.data import REPO_ROOT as REPO, DataError, data_split, run_data_root
from training.plots import plt

THRESHOLDS = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]


def check_same_run(run_dir: Path, budget_min: float, data: Path) -> None:
    """Refuse to reuse or resume a run folder trained on another budget or data: the report would label
    its numbers with this command line's --budget-min."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise DataError(f"{run_dir} holds a run without config.yaml; remove it or choose another --runs")
    saved = yaml.safe_load(saved_path.read_text())
    same_data = run_data_root(saved["data"]) == run_data_root(data)
    if float(saved["time_budget_min"]) != budget_min or not same_data:
        raise DataError(f"{run_dir} was trained with --budget-min {saved['time_budget_min']} --data {saved['data']}, "
                        f"not --budget-min {budget_min} --data {data}; pass those or choose another --runs")


def run_recipe(recipe: str, budget_min: float, run_dir: Path, data: Path) -> None:
    if (run_dir / "manifest.json").exists():
        print(f"{recipe}: reusing the complete run in {run_dir}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "training.train", "--out", str(run_dir)]
    if (run_dir / "checkpoint.pt").exists():
        cmd.append("--resume")
    else:
        cmd += ["--config", str(REPO / "training" / "configs" / f"{recipe}.yaml"), "--data", str(data),
                "--time-budget-min", str(budget_min), "--budget-clock", "cpu"]
    subprocess.run(cmd, cwd=REPO, check=True)


def summarize(recipe: str, run_dir: Path, test_data: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    subprocess.run([sys.executable, "-m", "training.evaluate", "--weights", str(run_dir), "--data", str(test_data)],
                   cwd=REPO, check=True)
    test = json.loads((run_dir / f"eval_{test_data.name}.json").read_text())
    evaluated = [r for r in rows if "val_acc_kaggle" in r]
    return {
        "recipe": recipe,
        "train_minutes": manifest["train_minutes"],
        "wall_minutes": manifest.get("wall_minutes_this_process"),
        "epochs": manifest["epochs_run"],
        "best_epoch": manifest["best_epoch"],
        "best_val_acc_kaggle": manifest.get("best_val_acc_kaggle"),
        "test_accuracy": test["accuracy"],
        "test_roc_auc": test.get("roc_auc"),
        "minutes_to_val_acc": {str(t): next((r["train_minutes"] for r in evaluated if r["val_acc_kaggle"] >= t), None)
                               for t in THRESHOLDS},
        "img_per_s_by_epoch": [round(r["img_per_s"], 1) for r in rows],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "curve": [(r["train_minutes"], r["val_acc_kaggle"]) for r in evaluated],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="seed,hotdog", help="configs in training/configs, comma-separated")
    parser.add_argument("--budget-min", type=float, default=30.0, help="training minutes per recipe (CPU clock)")
    parser.add_argument("--data", help="(default: <data home>/hotdog/train)")
    parser.add_argument("--test-data", help="(default: <data home>/hotdog/test)")
    parser.add_argument("--runs", default="runs/bench_train")
    parser.add_argument("--report", default="reports/bench_train")
    args = parser.parse_args(argv)
    args.data = args.data or data_split("train")
    run_dirs = {recipe: REPO / args.runs / recipe for recipe in args.recipes.split(",")}
    # Every folder before any training: a refusal after the first recipe's 30 minutes would waste them.
    for run_dir in run_dirs.values():
        if (run_dir / "manifest.json").exists() or (run_dir / "checkpoint.pt").exists():
            check_same_run(run_dir, args.budget_min, Path(args.data))
    args.test_data = args.test_data or data_split("test")  # found (or refused) before the first recipe trains
    results = []
    for recipe, run_dir in run_dirs.items():
        run_recipe(recipe, args.budget_min, run_dir, Path(args.data))
        results.append(summarize(recipe, run_dir, Path(args.test_data)))
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    blob = {"budget_min": args.budget_min, "budget_clock": "cpu time / threads", "results": results}
    report.with_suffix(".json").write_text(json.dumps(blob, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, "o-", ms=3, label=f"{r['recipe']} (test {r['test_accuracy']:.3f})")
    ax.set(xlabel="training minutes (2-core CPU)", ylabel="val accuracy (Kaggle photos)",
           title="time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(report.with_suffix(".png"), dpi=100)
    for r in results:
        print(f"{r['recipe']:>8}: test {r['test_accuracy']:.4f}  best val {r['best_val_acc_kaggle']:.4f}  "
              f"{r['train_minutes']:.1f} min")
    return blob


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
