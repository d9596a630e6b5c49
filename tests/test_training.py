import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_TRAIN_ARGS
from training import evaluate, train
from training.data import scan_image_folder, stratified_split

RUN_FILES = ["model.pt", "checkpoint.pt", "preprocess.json", "config.yaml", "metrics.jsonl", "manifest.json",
             "data_files.txt", "curves.png"]


def run_cli(module: str, *args: str, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def test_stratified_split_keeps_every_source_and_class(sample_tree):
    samples, labels = scan_image_folder(sample_tree, None, {"extra": "x*"}, "kaggle")
    train_s, val_s = stratified_split(samples, {"kaggle": 0.34, "extra": 0.34}, seed=0)
    assert labels == ("hot_dog", "not_hot_dog")
    assert {(s.source, s.label) for s in val_s} == {(src, c) for src in ("kaggle", "extra") for c in (0, 1)}
    assert not {s.path for s in train_s} & {s.path for s in val_s}
    again, _ = stratified_split(samples, {"kaggle": 0.34, "extra": 0.34}, seed=0)
    assert [s.path for s in again] == [s.path for s in train_s]


def test_two_epoch_run_writes_every_output(sample_tree, tmp_path):
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "2", *TINY_TRAIN_ARGS])
    for name in RUN_FILES:
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_acc" in r for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_sha256"] == train.sha256_file(out / "model.pt")
    assert manifest["train_images"] + manifest["val_images"] == 12
    assert manifest["amp"] == train.resolve_amp("auto", torch.device("cpu"))  # what `amp: auto` chose here
    state = torch.load(out / "model.pt", weights_only=True)
    assert "head.weight" in state
    # The run folder is a complete bundle: evaluation loads it and writes its reports.
    report = evaluate.main(["--weights", str(out), "--data", str(sample_tree), "--name", "sample"])
    assert report["n"] == 12
    for name in ["eval_sample.json", "eval_sample_predictions.jsonl", "eval_sample_confusion.png"]:
        assert (out / name).exists()


def test_source_repeats_lengthen_the_epoch_by_that_source_only():
    g = torch.Generator().manual_seed(0)
    order = train.epoch_sample_order(["kaggle", "extra", "kaggle", "extra", "extra"], {"kaggle": 3}, g)
    assert sorted(order.tolist()) == [0, 0, 0, 1, 2, 2, 2, 3, 4]
    assert sorted(train.epoch_sample_order(["a", "b"], {}, g).tolist()) == [0, 1]


def test_cutmix_labels_are_mixed_by_the_area_pasted():
    from training.presets import cutmix

    g = torch.Generator().manual_seed(0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()
    y = torch.tensor([0, 1, 1, 0])
    for _ in range(20):
        mixed, target = cutmix(x, y, 2, g)
        pasted = (mixed != x)[:, 0].float().mean(dim=(1, 2))  # row i got its box from row i-1
        assert torch.allclose(target.sum(1), torch.ones(4))
        # Row 1 (label 1) took its box from row 0 (label 0): its label-0 share is the area pasted.
        assert target[1, 0].item() == pytest.approx(pasted[1].item())
        assert target[3, 1].item() == pytest.approx(pasted[3].item())
        assert target[0].tolist() == [1.0, 0.0] and mixed[0].min() >= 0  # same class pasted: label unchanged


def test_train_accuracy_credits_the_share_of_a_mixed_image():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    assert train.hits(logits, torch.tensor([0, 1, 0])) == 2
    mixed = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.0, 1.0]])  # predicted 0, 1, 1
    assert train.hits(logits, mixed) == pytest.approx(0.7 + 0.3 + 1.0)


def test_cutmix_run_trains_and_records_it(sample_tree, tmp_path):
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "1", "--cutmix", "1",
                      *TINY_TRAIN_ARGS])
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] > 0
    assert "cutmix: 1" in (out / "config.yaml").read_text()


def test_sgd_run_trains_with_nesterov_momentum_and_records_it(sample_tree, tmp_path):
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "2",
                      *TINY_TRAIN_ARGS, "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "5e-4"])
    assert "optimizer: sgd" in (out / "config.yaml").read_text()
    opt = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]
    assert [g["nesterov"] for g in opt["param_groups"]] == [True, True]
    assert [g["weight_decay"] for g in opt["param_groups"]] == [5e-4, 0.0]  # norms and biases never decay
    assert all("momentum_buffer" in s for s in opt["state"].values())
    resumed = train.main(["--out", str(out), "--resume", "--epochs", "3"])  # an SGD checkpoint resumes
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 3


def test_float_fields_accept_exponents_without_a_dot(tmp_path):
    from training.config import parse_config

    (tmp_path / "c.yaml").write_text("lr: 1e-3\n")  # PyYAML alone reads both of these as strings
    cfg, _ = parse_config(["--config", str(tmp_path / "c.yaml"), "--weight-decay", "5e-4"])
    assert (cfg.lr, cfg.weight_decay) == (1e-3, 5e-4)
    with pytest.raises(SystemExit):
        parse_config(["--lr", "fast"])


def test_help_shows_each_default_in_the_syntax_its_flag_takes(capsys):
    from training.config import parse_config

    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    assert "MISSING" not in text
    assert "--widths WIDTHS (default: [32, 64, 128, 256])" in text
    assert "(default: {kaggle: 0.15, extra: 0.05})" in text
    cfg, _ = parse_config(["--widths", "[32, 64, 128, 256]", "--val-fraction", "{kaggle: 0.15, extra: 0.05}"])
    assert cfg.widths == [32, 64, 128, 256] and cfg.val_fraction == {"kaggle": 0.15, "extra": 0.05}


def test_unknown_optimizer_is_refused(sample_tree, tmp_path, capsys):
    code = train.cli(["--data", str(sample_tree), "--out", str(tmp_path / "r"), "--optimizer", "lion",
                      *TINY_TRAIN_ARGS])
    assert code != 0 and "optimizer must be one of adamw, sgd, got 'lion'" in capsys.readouterr().err


@pytest.mark.parametrize("metric", ["loss", "acc"])
def test_checkpoint_is_chosen_by_the_configured_validation_metric(sample_tree, tmp_path, metric):
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / metric), "--epochs", "4",
                      "--select-metric", metric, "--source-repeats", "{kaggle: 2}", *TINY_TRAIN_ARGS,
                      "--batch-size", "4", "--ema-decay", "0"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    if metric == "loss":
        expected = min(rows, key=lambda r: (r["val_loss_kaggle"], r["epoch"]))
    else:
        expected = max(rows, key=lambda r: (r["val_acc_kaggle"], -r["epoch"]))
    assert manifest["select_metric"] == metric and manifest["best_epoch"] == expected["epoch"]
    assert manifest["best_val_loss_kaggle"] == pytest.approx(expected["val_loss_kaggle"])
    # 8 training images, 4 of them Kaggle, each seen twice: 12 per epoch (3 batches of 4).
    assert rows[0]["train_images"] == 12


def test_unknown_select_metric_is_refused(sample_tree, tmp_path, capsys):
    code = train.cli(["--data", str(sample_tree), "--out", str(tmp_path / "r"), "--select-metric", "f1",
                      *TINY_TRAIN_ARGS])
    assert code != 0 and "select_metric must be 'loss' or 'acc'" in capsys.readouterr().err


def test_step_benchmark_records_each_variant(tmp_path):
    report = tmp_path / "step.json"
    proc = run_cli("training.bench_step", "--sizes", "32", "--variants", "eager,channels_last,fp32", "--widths",
                   "8,8,16,16", "--batch", "4", "--steps", "1", "--rounds", "1", "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    blob = json.loads(report.read_text())
    rows = blob["results"]
    assert [r["variant"] for r in rows] == ["eager", "channels_last", "fp32"]
    assert rows[0]["img_per_s"] > 0 and rows[0]["vs_eager"] == 1.0
    assert rows[2]["img_per_s"] > 0 and rows[2]["vs_eager"] > 0  # the ratio `amp: auto` is about
    assert blob["amp"] == {"eager": "bf16", "channels_last": "bf16", "fp32": "fp32"}
    assert blob["cpu_native_bf16"] == train.cpu_has_native_bf16()
    # A crashed variant is data, not a benchmark failure; either way each run is accounted for.
    assert all(r["runs"] == 1 and (r["crashes"] == 1) == (r["img_per_s"] is None) for r in rows)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "off"), (True, False, "bf16"),
                                                         (False, True, "bf16")])
def test_auto_amp_uses_bf16_only_on_a_cpu_that_computes_it(monkeypatch, avx512_bf16, amx, expected):
    # An AVX2-only CPU (the first case) emulates bf16: autocast there trained ~13x slower than fp32.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(train.os, "uname", lambda: os.uname_result(("Linux", "h", "6", "1", "x86_64")))
    cpu = torch.device("cpu")
    assert train.resolve_amp("auto", cpu) == expected
    context, scaler = train.autocast_for(train.TrainConfig(), cpu)
    assert scaler is None
    assert isinstance(context, torch.autocast) == (expected == "bf16")
    assert train.resolve_amp("bf16", cpu) == "bf16" and train.resolve_amp("off", cpu) == "off"  # explicit wins
    assert train.resolve_amp("auto", torch.device("cuda")) == "fp16"


def test_temporal_ensemble_averages_each_images_past_predictions():
    past = train.TemporalEnsemble(num_images=3, num_classes=2, momentum=0.5)
    past.update(torch.tensor([0, 2]), torch.tensor([[1.0, 0.0], [0.2, 0.8]]))
    average, seen = past.targets(torch.tensor([0, 1, 2]))
    assert seen.tolist() == [True, False, True]
    assert torch.allclose(average[[0, 2]], torch.tensor([[1.0, 0.0], [0.2, 0.8]]))  # one visit: that prediction
    past.update(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    # Two visits: 0.5*(0.5*[1,0]) + 0.5*[0,1] = [0.25, 0.5], over 1 - 0.5**2: the later visit weighs twice.
    assert torch.allclose(past.targets(torch.tensor([0]))[0], torch.tensor([[1 / 3, 2 / 3]]))


def test_self_distill_run_changes_the_targets_and_records_each_visit(sample_tree, tmp_path):
    base = ["--data", str(sample_tree), "--epochs", "3", *TINY_TRAIN_ARGS]
    plain = train.main([*base, "--out", str(tmp_path / "plain")])
    distilled = train.main([*base, "--out", str(tmp_path / "distilled"), "--self-distill", "0.8"])
    ckpt = torch.load(distilled / "checkpoint.pt", weights_only=True)
    visits = ckpt["self_distill"]["visits"]
    train_images = json.loads((distilled / "manifest.json").read_text())["train_images"]
    assert len(visits) == train_images and visits.max() >= 2
    assert torch.allclose(ckpt["self_distill"]["avg"].sum(1)[visits > 0] / (1 - 0.6 ** visits[visits > 0]),
                          torch.ones(int((visits > 0).sum())))  # bias-corrected averages are distributions
    assert torch.load(plain / "checkpoint.pt", weights_only=True)["self_distill"] is None
    rows = [[json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (plain, distilled)]
    assert rows[0][0] == pytest.approx(rows[1][0], abs=1e-6)  # epoch 1: nothing seen before, same targets
    assert rows[0][2] != pytest.approx(rows[1][2], abs=1e-4)  # after that the soft targets take a share


@pytest.mark.parametrize("extra", [[], ["--self-distill", "0.8"]], ids=["plain", "self_distill"])
def test_killed_run_resumes_to_the_same_result(sample_tree, tmp_path, extra):
    args = ["--data", str(sample_tree), "--epochs", "6", *TINY_TRAIN_ARGS, *extra]
    env = {"HOTDOG_CACHE": str(tmp_path / "cache")}
    straight = run_cli("training.train", *args, "--out", str(tmp_path / "straight"), env_extra=env)
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *args, "--out", str(killed_dir)], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < 6, f"kill came too late to test resuming ({done} epochs done)"
    assert not (killed_dir / "manifest.json").exists()

    resumed = run_cli("training.train", "--out", str(killed_dir), "--resume", env_extra=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-3, abs=1e-3)
        assert rb["val_acc"] == pytest.approx(ra["val_acc"], abs=1e-6)


def test_corrupt_and_non_image_files_are_skipped_and_named(sample_tree, tmp_path, capsys):
    (sample_tree / "hot_dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (sample_tree / "not_hot_dog" / "notes.png").write_text("this is text, not a picture")
    code = train.cli(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_TRAIN_ARGS])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 2 unreadable image(s)" in err
    assert "broken.jpg" in err and "notes.png" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest["skipped_files"]) == 2

    assert evaluate.cli(["--weights", str(tmp_path / "run"), "--data", str(sample_tree)]) == 0
    assert "broken.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("breakage,message", [
    ("missing_class", "class folder missing"),
    ("empty_class", "class folder has no images"),
    ("missing_root", "data folder not found"),
    ("unwritable_out", "output folder is not writable"),
])
def test_data_problems_give_one_clear_line(sample_tree, tmp_path, capsys, breakage, message):
    import shutil

    data, out = sample_tree, tmp_path / "run"
    if breakage == "empty_class":
        for f in (sample_tree / "hot_dog").iterdir():
            f.unlink()
    if breakage == "missing_class":
        # Evaluation expects the model's classes; a split that lacks one must say so.
        shutil.rmtree(sample_tree / "not_hot_dog")
        code = evaluate.cli(["--weights", str(REPO / "weights"), "--data", str(data), "--out", str(tmp_path)])
    else:
        if breakage == "missing_root":
            data = tmp_path / "nowhere"
        if breakage == "unwritable_out":
            (tmp_path / "a_file").write_text("x")
            out = tmp_path / "a_file" / "run"
        code = train.cli(["--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_ARGS])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err


def test_refuses_to_overwrite_a_run_without_resume(sample_tree, tmp_path, capsys):
    args = ["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_TRAIN_ARGS]
    assert train.cli(args) == 0
    assert train.cli(args) == 2 and "--resume" in capsys.readouterr().err


def test_torchrun_two_cpu_processes_share_each_epoch(sample_tree, tmp_path):
    """DDP on the gloo backend: each rank trains on its half of every batch; rank 0 writes the run."""
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training.train",
         "--data", str(sample_tree), "--out", str(out), "--epochs", "2", "--threads", "1", *TINY_TRAIN_ARGS,
         "--self-distill", "0.8"],
        cwd=REPO, env={**os.environ, "HOTDOG_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    manifest = json.loads((out / "manifest.json").read_text())
    # Images seen per epoch are summed over both ranks: together they cover the whole train set once.
    assert all(r["train_images"] == manifest["train_images"] for r in rows)
    assert manifest["weights_sha256"] == train.sha256_file(out / "model.pt")
    # The self-distillation table holds both ranks' predictions: every image, once per epoch.
    visits = torch.load(out / "checkpoint.pt", weights_only=True)["self_distill"]["visits"]
    assert visits.tolist() == [2.0] * manifest["train_images"]


def test_compare_scores_runs_on_the_same_validation_photos(sample_tree, tmp_path):
    from model_src.bundle import read_data_files
    from training import compare

    base = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "a"), "--epochs", "1", *TINY_TRAIN_ARGS])
    other = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "b"), "--epochs", "1", *TINY_TRAIN_ARGS,
                        "--widths", "[8, 8, 16, 32]"])
    report = compare.main([str(base), str(base), str(other), "--source", "kaggle", "--out", str(tmp_path / "cmp.json")])
    kaggle_val = [path for split, path, source in read_data_files(base) if (split, source) == ("val", "kaggle")]
    assert report["images"] == len(kaggle_val) > 1
    assert report["candidates"][str(base)]["per_source"]["kaggle"]["n"] == len(kaggle_val)
    # The per-photo losses reproduce what training logged for the chosen checkpoint.
    manifest = json.loads((base / "manifest.json").read_text())
    assert report["baseline_loss"] == pytest.approx(manifest["best_val_loss_kaggle"], abs=2e-3)
    same = report["candidates"][str(base)]
    assert same["difference"] == 0 and same["better"] is False
    assert report["candidates"][str(other)]["loss"] != report["baseline_loss"]
    assert json.loads((tmp_path / "cmp.json").read_text()) == report

    reseeded = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "c"), "--epochs", "1", "--seed", "3",
                           *TINY_TRAIN_ARGS])
    renamed = tmp_path / "renamed"  # the same photos, but a model whose classes are named otherwise
    shutil.copytree(base, renamed)
    spec = json.loads((renamed / "preprocess.json").read_text())
    (renamed / "preprocess.json").write_text(json.dumps({**spec, "labels": ["dog", "cat"]}))
    with pytest.raises(train.DataError, match="lack"):
        compare.compare(base, [renamed])

    def val_photos(run):
        return sorted(path for split, path, _ in compare.run_files(run) if split == "val")

    assert val_photos(reseeded) != val_photos(base)
    with pytest.raises(train.DataError, match="validation photos differ"):
        compare.compare(base, [base, reseeded])
    # Against a baseline that trained on some of the candidate's validation photos, those are left out.
    cross = compare.compare(reseeded, [base])
    seen = {path for split, path, _ in compare.run_files(reseeded) if split == "train"}
    assert cross["dropped_baseline_trained_on"] == len(set(val_photos(base)) & seen) > 0
    assert cross["images"] == len(val_photos(base)) - cross["dropped_baseline_trained_on"]


def test_compare_reads_a_repo_relative_data_path_from_any_cwd(sample_tree, tmp_path, monkeypatch):
    """`make train DATA=../shared/...` records a path relative to the repo; compare must not read it
    relative to wherever it is run from."""
    import yaml
    from training import compare

    monkeypatch.chdir(REPO)
    relative = os.path.relpath(sample_tree, REPO)
    base = train.main(["--data", relative, "--out", str(tmp_path / "a"), "--epochs", "1", *TINY_TRAIN_ARGS])
    assert yaml.safe_load((base / "config.yaml").read_text())["data"] == relative
    monkeypatch.chdir(tmp_path)
    assert not Path(relative).is_dir()
    report = compare.compare(base, [base])
    assert report["images"] > 1 and report["candidates"][str(base)]["difference"] == 0


def test_compare_calls_better_only_beyond_two_paired_standard_errors():
    from training.compare import paired_difference

    base = torch.linspace(0.2, 1.0, 50)
    assert paired_difference(base - 0.05, base)["better"] is True  # lower on every photo
    noisy = base + 0.3 * torch.tensor([1.0, -1.0] * 25) - 0.01  # lower on average, but by noise
    result = paired_difference(noisy, base)
    assert result["difference"] < 0 and result["lower_on"] == 25 and result["better"] is False


def test_cross_source_run_trains_without_the_excluded_source_but_validates_on_it(sample_tree, tmp_path, capsys):
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_TRAIN_ARGS,
                      "--exclude-source", "kaggle", "--select-source", "extra"])
    rows = (out / "data_files.txt").read_text().splitlines()
    trained = [r.split("\t") for r in rows if r.startswith("train")]
    assert trained and {source for _, _, source in trained} == {"extra"}
    assert "val_acc_kaggle" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # Chosen on every source but the left-out one: its photos only measure.
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "all"), "--epochs", "1", *TINY_TRAIN_ARGS,
                      "--exclude-source", "kaggle", "--select-source", "all"])
    assert json.loads((out / "manifest.json").read_text())["selected_on"] == ["extra"]
    code = train.cli(["--data", str(sample_tree), "--out", str(tmp_path / "bad"), *TINY_TRAIN_ARGS,
                      "--exclude-source", "kaggle"])
    assert code == 2 and "select_source" in capsys.readouterr().err
