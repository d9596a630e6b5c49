"""Resuming from each point of the end-of-epoch writes, and the benchmarks' refusals and timeouts.

test_training.py SIGKILLs a run wherever it happens to be; here the kill lands at a chosen point: a
child process wraps train.atomic_save to SIGKILL itself just before a given file is written.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_TRAIN_ARGS
from training import bench_train, train

EPOCHS = 4
ARGS = ["--epochs", str(EPOCHS), *TINY_TRAIN_ARGS]

# argv: FILE EPOCH TRAIN_ARGS...: SIGKILL instead of writing FILE once a checkpoint of EPOCH is due or done.
KILL_BEFORE = """
import os, signal, sys
from training import train

name, epoch = sys.argv[1], int(sys.argv[2])
save, last = train.atomic_save, {"epoch": 0}

def atomic_save(obj, path):
    if path.name == "checkpoint.pt":
        last["epoch"] = obj["epoch"]
    if path.name == name and last["epoch"] >= epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, path)

train.atomic_save = atomic_save
train.main(sys.argv[3:])
"""


def rows_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def straight(sample_tree, tmp_path):
    return train.main(["--data", str(sample_tree), "--out", str(tmp_path / "straight"), *ARGS])


@pytest.mark.parametrize("file,epoch", [
    ("checkpoint.pt", 1),  # metrics line of epoch 1 written, no checkpoint yet: --resume starts over
    ("checkpoint.pt", 3),  # metrics line of epoch 3 written, checkpoint still at epoch 2
    ("model.pt", 2),  # checkpoint has a new best, model.pt still holds the previous one
])
def test_a_kill_between_the_end_of_epoch_writes_resumes_to_the_same_run(sample_tree, tmp_path, capsys, straight,
                                                                       file, epoch):
    run = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE, file, str(epoch), "--data", str(sample_tree),
                           "--out", str(run), *ARGS], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"no kill before {file} (rc {proc.returncode}): {proc.stderr[-2000:]}"
    killed_at = rows_of(run)[-1]["epoch"]
    assert killed_at >= epoch  # the metrics line comes first
    if file == "model.pt":
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == ckpt["scheduler"]["best_epoch"] == killed_at
        stale = torch.load(run / "model.pt", weights_only=True)
        assert not all(torch.equal(stale[k], v) for k, v in ckpt["best_model"].items())

    capsys.readouterr()
    assert train.cli(["--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert ("no checkpoint yet" if epoch == 1 else "resumed") in err and "Traceback" not in err
    a, b = rows_of(straight), rows_of(run)
    assert [r["epoch"] for r in b] == list(range(1, EPOCHS + 1))
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-3, abs=1e-3)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-3, abs=1e-3)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    weights = torch.load(run / "model.pt", weights_only=True)
    assert weights.keys() == ckpt["best_model"].keys()
    assert all(torch.equal(weights[k], v) for k, v in ckpt["best_model"].items())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["best_epoch"] == json.loads((straight / "manifest.json").read_text())["best_epoch"]
    assert manifest["weights_sha256"] == train.sha256_file(run / "model.pt")


def test_step_benchmark_records_a_timeout_as_a_crash(tmp_path):
    report = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, "-m", "training.bench_step", "--sizes", "32", "--variants", "eager",
                           "--timeout", "0.5", "--report", str(report)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(report.read_text())["results"]
    assert row["crashes"] == row["runs"] == 2 and row["img_per_s"] is None
    assert row["crash_errors"] == ["timeout after 0.5 s"]


def fake_finished_run(run_dir, budget_min, data):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"data: {data}\ntime_budget_min: {budget_min}\n")
    (run_dir / "manifest.json").write_text("{}\n")


@pytest.mark.parametrize("saved_budget,saved_data", [(10.0, "tests/data/sample"), (30.0, "tests/data")])
def test_train_benchmark_refuses_a_run_folder_of_another_budget_or_data(tmp_path, capsys, saved_budget,
                                                                      saved_data):
    fake_finished_run(tmp_path / "runs" / "seed", saved_budget, saved_data)
    code = bench_train.cli(["--recipes", "seed", "--budget-min", "30", "--data", str(REPO / "tests/data/sample"),
                            "--runs", str(tmp_path / "runs"), "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "was trained with --budget-min" in err, err
    assert not (tmp_path / "report.json").exists()


def test_train_benchmark_accepts_the_same_data_spelled_another_way(tmp_path):
    fake_finished_run(tmp_path / "seed", 30, "tests/data/sample")  # relative to the repo, where train.py runs
    bench_train.check_same_run(tmp_path / "seed", 30.0, REPO / "tests" / "data" / ".." / "data" / "sample")
