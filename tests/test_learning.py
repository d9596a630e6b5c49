"""Training learns: loss falls and held-out accuracy beats chance on a tiny learnable set, a distilled
student follows its teacher (even one that contradicts the labels), and a resumed run lands on values
stored in tests/data/expected_resume.json, not merely on another run of the same code.

The set is made here (tests/imagegen.stripes_tree): horizontal stripes are hot dogs, vertical ones are
not. fp32 on one thread (`--amp off --threads 1`) so the numbers do not depend on the CPU's bf16 support.
"""
import json
from pathlib import Path

import pytest

from conftest import REPO
from imagegen import stripes_tree
from training import evaluate, train

EXPECTED_RESUME = REPO / "tests" / "data" / "expected_resume.json"
LEARN_ARGS = [
    "--widths", "[8, 16, 32, 64]", "--input-size", "32", "--resize-size", "36", "--cache-size", "40",
    "--train-sizes", "[32]", "--val-fraction", "{kaggle: 0.25}", "--batch-size", "8", "--eval-every", "1",
    "--decode-workers", "1", "--amp", "off", "--threads", "1", "--label-smoothing", "0", "--lr", "0.01",
    "--ema-decay", "0.9", "--seed", "0",
]
EPOCHS = 15
# The teacher at test size, fitted on its own features of 2 crops per image, labelling at 64 px.
TEACHER_ARGS = ["--teacher", "lite0", "--teacher-views", "2", "--teacher-size", "64"]


@pytest.fixture
def stripes(tmp_path) -> Path:
    return stripes_tree(tmp_path / "stripes", per_class=32, seed=0)


@pytest.fixture
def held_out(tmp_path) -> Path:
    return stripes_tree(tmp_path / "held_out", per_class=16, seed=1)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def held_out_accuracy(run: Path, data: Path) -> float:
    return evaluate.main(["--weights", str(run), "--data", str(data), "--out", str(run / "eval")])["accuracy"]


def test_plain_recipe_lowers_the_loss_and_beats_chance_on_held_out_photos(stripes, held_out, tmp_path):
    run = train.main(["--data", str(stripes), "--out", str(tmp_path / "run"), "--epochs", str(EPOCHS), *LEARN_ARGS])
    rows = rows_of(run)
    first, last = (sum(r["train_loss"] for r in part) / 3 for part in (rows[:3], rows[-3:]))
    assert last < 0.7 * first, [round(r["train_loss"], 3) for r in rows]
    assert rows[0]["val_loss"] > 0.6 and rows[-1]["val_loss"] < 0.3  # from about ln 2 (a coin) to well below
    # The chosen weights, through `make eval`'s code on 32 photos it never saw: well above chance (0.5).
    assert held_out_accuracy(run, held_out) >= 0.9


def flipped_fit_head(monkeypatch):
    """The teacher's head fitted on every training label flipped: a confident teacher that is always wrong."""
    import training.teacher

    fit = training.teacher.fit_head
    monkeypatch.setattr(training.teacher, "fit_head",
                        lambda features, labels, *a, **kw: fit(features, 1 - labels, *a, **kw))


@pytest.mark.parametrize("online", [False, True], ids=["fixed_views", "online"])
def test_distilled_student_follows_its_teacher_over_the_labels(stripes, held_out, tmp_path, monkeypatch, online):
    """distill_weight 0.9 with a teacher that contradicts every label: a student that listens learns the
    flipped task (held-out accuracy far below chance); one that ignores the teacher would score high."""
    flipped_fit_head(monkeypatch)
    extra = ["--teacher-online", "true"] if online else []
    # Validation only after the last epoch, so model.pt is where training ended, not an early checkpoint.
    run = train.main(["--data", str(stripes), "--out", str(tmp_path / "run"), "--epochs", str(EPOCHS), *LEARN_ARGS,
                      *TEACHER_ARGS, *extra, "--distill-weight", "0.9", "--eval-every", str(EPOCHS)])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher_val_acc_kaggle"] <= 0.2  # the teacher itself is wrong on validation
    rows = rows_of(run)
    assert rows[-1]["train_acc"] <= 0.2 and rows[-1]["val_acc"] <= 0.2
    assert held_out_accuracy(run, held_out) <= 0.2


def kill_after_checkpoint(monkeypatch, epoch: int):
    """Make the run stop dead right after the checkpoint of `epoch` is written, as a kill would."""

    class Killed(Exception):
        pass

    save, done = train.atomic_save, []

    def atomic_save(obj, path):
        save(obj, path)
        if path.name == "checkpoint.pt" and obj["epoch"] == epoch and not done:
            done.append(epoch)
            raise Killed

    monkeypatch.setattr(train, "atomic_save", atomic_save)
    return Killed


def resume_run(stripes: Path, out: Path, monkeypatch) -> list[dict]:
    """6 epochs, stopped after the 3rd checkpoint, resumed: the rows of metrics.jsonl."""
    with pytest.raises(kill_after_checkpoint(monkeypatch, 3)):
        train.main(["--data", str(stripes), "--out", str(out), "--epochs", "6", *LEARN_ARGS])
    assert not (out / "manifest.json").exists()
    train.main(["--out", str(out), "--resume"])
    return rows_of(out)


def test_resumed_run_reproduces_the_stored_expectation(stripes, tmp_path, monkeypatch):
    rows = resume_run(stripes, tmp_path / "run", monkeypatch)
    expected = json.loads(EXPECTED_RESUME.read_text())
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in expected["rows"]]
    for got, want in zip(rows, expected["rows"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), (got["epoch"], key)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["best_epoch"] == expected["best_epoch"]


if __name__ == "__main__":
    # Regenerate tests/data/expected_resume.json after a deliberate change to training's arithmetic or
    # random draws: `.venv/bin/python tests/test_learning.py` runs the 6 epochs without a stop (review the
    # diff, then commit it).
    import tempfile

    import training.data

    with tempfile.TemporaryDirectory() as tmp:
        training.data.CACHE_DIR = Path(tmp) / "cache"
        run = train.main(["--data", str(stripes_tree(Path(tmp) / "stripes", per_class=32, seed=0)),
                          "--out", str(Path(tmp) / "run"), "--epochs", "6", *LEARN_ARGS])
        rows, best = rows_of(run), json.loads((run / "manifest.json").read_text())["best_epoch"]
    keep = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    EXPECTED_RESUME.write_text(json.dumps({"epochs": 6, "best_epoch": best,
                                           "rows": [{k: r[k] for k in keep} for r in rows]}, indent=1) + "\n")
    print(f"wrote {EXPECTED_RESUME}")
