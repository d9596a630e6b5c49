"""Data problems test_training.py does not already cover, each one clear line and exit code 2.

Already covered there: a corrupt image and a text file named .png (skipped and named), a class
folder missing at evaluation, an empty class folder, a missing data folder, an output folder that
cannot be created, SIGKILL mid-run then --resume reproducing the uninterrupted run.
"""
import shutil

import pytest

from conftest import REPO, TINY_TRAIN_ARGS
from training import evaluate, train


def break_tree(tree, tmp_path, breakage):
    """Apply `breakage` to a copy of the sample tree; returns (data folder, extra train args)."""
    if breakage == "train_missing_class":
        shutil.rmtree(tree / "not_hot_dog")
    elif breakage == "empty_data_folder":
        tree = tmp_path / "empty"
        tree.mkdir()
    elif breakage == "class_folders_without_images":
        for f in tree.rglob("*.jpg"):
            f.unlink()
    elif breakage == "every_image_corrupt":
        for f in tree.rglob("*.jpg"):
            f.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    elif breakage == "one_class_all_corrupt":
        for f in (tree / "hot_dog").glob("*.jpg"):
            f.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    elif breakage == "empty_validation_split":
        return tree, ["--val-fraction", "{kaggle: 0.0, extra: 0.0}"]
    elif breakage == "output_is_a_file":
        return tree, []
    return tree, []


@pytest.mark.parametrize("breakage,message", [
    ("train_missing_class", "need at least 2 class folders"),
    ("empty_data_folder", "need at least 2 class folders"),
    ("class_folders_without_images", "class folder has no images"),
    ("every_image_corrupt", "no readable images"),
    ("one_class_all_corrupt", "no readable training images for class hot_dog"),
    ("empty_validation_split", "0 val images"),
    ("output_is_a_file", "output folder is not writable"),
])
def test_training_data_problems(sample_tree, tmp_path, capsys, breakage, message):
    data, extra = break_tree(sample_tree, tmp_path, breakage)
    out = tmp_path / "run"
    if breakage == "output_is_a_file":
        out.write_text("not a folder")
    code = train.cli(["--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.parametrize("breakage,message", [
    ("class_folders_without_images", "class folder has no images"),
    ("every_image_corrupt", "no readable images"),
    ("empty_data_folder", "class folder missing"),
])
def test_evaluation_data_problems(sample_tree, tmp_path, capsys, breakage, message):
    data, _ = break_tree(sample_tree, tmp_path, breakage)
    code = evaluate.cli(["--weights", str(REPO / "weights"), "--data", str(data), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err[-2000:]
