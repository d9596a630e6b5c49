"""Sources are first-class in training: a recipe names its data roots, every photo carries its source,
validation is carved per source and class, sampling weights come from the config, and every report
shows accuracy per source. Bad data roots fail in one line before any training."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SAMPLE, TINY_TRAIN_ARGS
from training import train
from training.config import parse_config
from training.data import (DataError, data_home, parse_data_roots, scan_sources, stratified_split)

LABELS = ("hot_dog", "not_hot_dog")


def make_home(tmp_path: Path) -> Path:
    """A data home laid out like ../shared/data: hotdog/train (kaggle + x* extra) and two more sources,
    one of which holds hot dogs only."""
    home = tmp_path / "home"
    shutil.copytree(SAMPLE, home / "hotdog" / "train")
    for cls in LABELS:
        (home / "hotdog-more" / "both" / cls).mkdir(parents=True)
        for i, photo in enumerate(sorted((SAMPLE / cls).glob("1*.jpg"))):
            shutil.copy(photo, home / "hotdog-more" / "both" / cls / f"b{i}.jpg")
    (home / "hotdog-more" / "hotonly" / "hot_dog").mkdir(parents=True)
    for i, photo in enumerate(sorted((SAMPLE / "hot_dog").glob("*.jpg"))[:3]):
        shutil.copy(photo, home / "hotdog-more" / "hotonly" / "hot_dog" / f"h{i}.jpg")
    for f in home.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    return home


ROOTS = {"kaggle": "hotdog/train", "both": "hotdog-more/both",
         "hotonly": {"path": "hotdog-more/hotonly", "classes": ["hot_dog"]}}
SOURCE_ARGS = ["--data-roots", json.dumps(ROOTS), "--source-patterns", "{extra: 'x*'}",
               "--val-fraction", "{kaggle: 0.34, extra: 0.34, both: 0.34, hotonly: 0.34}", "--select-source", "all"]


def test_every_photo_carries_its_source_and_reports_show_each(tmp_path):
    home = make_home(tmp_path)
    run = train.main(["--data-home", str(home), "--out", str(tmp_path / "run"), "--epochs", "1",
                      *TINY_TRAIN_ARGS, *SOURCE_ARGS])
    rows = [line.split("\t") for line in (run / "data_files.txt").read_text().splitlines()]
    sources = {source for _, _, source in rows}
    assert sources == {"kaggle", "extra", "both", "hotonly"}
    assert all(path.startswith("hotdog-more/both/") for _, path, source in rows if source == "both")
    assert all(Path(path).name.startswith("x") == (source == "extra") for _, path, source in rows
               if path.startswith("hotdog/"))
    assert all(path.startswith("hotdog-more/hotonly/hot_dog/") for _, path, source in rows if source == "hotonly")
    # Validation holds every (source, class) group the data has.
    val_groups = {(source, Path(path).parent.name) for split, path, source in rows if split == "val"}
    assert val_groups == {(s, c) for s in ("kaggle", "extra", "both") for c in LABELS} | {("hotonly", "hot_dog")}
    manifest = json.loads((run / "manifest.json").read_text())
    for source in sources:
        counted = manifest["sources"][source]
        assert counted["train"] == sum(1 for split, _, s in rows if (split, s) == ("train", source))
        assert counted["val"] == sum(1 for split, _, s in rows if (split, s) == ("val", source))
        assert counted["skipped"] == 0
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {f"val_acc_{s}" for s in sources} <= set(metrics)


def test_unreadable_photos_are_skipped_and_counted_per_source(tmp_path):
    home = make_home(tmp_path)
    (home / "hotdog-more" / "both" / "not_hot_dog" / "broken.jpg").write_bytes(b"not a jpeg")
    run = train.main(["--data-home", str(home), "--out", str(tmp_path / "run"), "--epochs", "1",
                      *TINY_TRAIN_ARGS, *SOURCE_ARGS])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["sources"]["both"]["skipped"] == 1
    assert sum(c["skipped"] for c in manifest["sources"].values()) == 1
    assert any("broken.jpg" in line for line in manifest["skipped_files"])


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.train", "--out", str(tmp_path / "run"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_missing_data_root_fails_in_one_line_naming_it_before_training(tmp_path):
    home = make_home(tmp_path)
    roots = {**ROOTS, "typo": "hotdog-more/no_such_source"}
    result = run_cli(tmp_path, "--data-home", str(home), "--data-roots", json.dumps(roots), *TINY_TRAIN_ARGS)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'typo'" in lines[0] and "no_such_source" in lines[0], result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_source_missing_a_class_folder_fails_in_one_line(tmp_path):
    home = make_home(tmp_path)
    roots = {**ROOTS, "hotonly": "hotdog-more/hotonly"}  # claims both classes, holds hot dogs only
    result = run_cli(tmp_path, "--data-home", str(home), "--data-roots", json.dumps(roots), *TINY_TRAIN_ARGS)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'hotonly'" in lines[0] and "not_hot_dog" in lines[0], result.stderr


def test_a_sampling_weight_for_an_unknown_source_is_refused(tmp_path):
    home = make_home(tmp_path)
    result = run_cli(tmp_path, "--data-home", str(home), *SOURCE_ARGS, "--source-repeats", "{kagle: 2}",
                     *TINY_TRAIN_ARGS)
    assert result.returncode == 2 and "kagle" in result.stderr.strip().splitlines()[-1], result.stderr


def test_no_data_anywhere_says_run_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="make data"):
        data_home()


def test_the_split_of_a_source_does_not_move_when_another_source_is_added(tmp_path):
    home = make_home(tmp_path)
    roots = parse_data_roots(ROOTS, home)
    fractions = {"kaggle": 0.34, "extra": 0.34, "both": 0.5, "hotonly": 0.34}
    fewer = scan_sources([r for r in roots if r.source != "both"], LABELS, {"extra": "x*"})
    more = scan_sources(roots, LABELS, {"extra": "x*"})
    val_fewer = {s.path for s in stratified_split(fewer, fractions, seed=0)[1]}
    val_more = {s.path for s in stratified_split(more, fractions, seed=0)[1]}
    assert val_more - val_fewer == {s.path for s in stratified_split(more, fractions, seed=0)[1] if s.source == "both"}
    assert val_fewer <= val_more


def test_sampling_weights_set_how_often_each_source_is_visited():
    sources = ["a"] * 10 + ["b"] * 20 + ["c"] * 4
    g = torch.Generator().manual_seed(0)
    order = train.epoch_sample_order(sources, {"a": 3, "b": 0.25}, g)
    counts = torch.bincount(order, minlength=len(sources))
    assert counts[:10].tolist() == [3] * 10  # whole weights repeat every image
    assert int((counts[10:30] == 1).sum()) == 5 and int(counts[10:30].max()) == 1  # a quarter, each once
    assert counts[30:].tolist() == [1] * 4  # default weight 1
    again = train.epoch_sample_order(sources, {"a": 3, "b": 0.25}, torch.Generator().manual_seed(0))
    other = train.epoch_sample_order(sources, {"a": 3, "b": 0.25}, torch.Generator().manual_seed(1))
    assert torch.equal(order, again) and not torch.equal(order, other)  # a fresh subset each epoch, replayable
    with pytest.raises(DataError, match="must be >= 0"):
        train.epoch_sample_order(sources, {"a": -1}, g)


def test_class_balance_gives_every_class_the_same_visits_and_keeps_the_source_weights():
    # Source a: 20 hot dogs (label 0), 180 not; source b: 100 hot dogs only, visited twice.
    sources = ["a"] * 200 + ["b"] * 100
    labels = torch.tensor([0] * 20 + [1] * 180 + [0] * 100)
    weights = {"b": 2}
    plain = train.epoch_sample_order(sources, weights, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[plain]).tolist() == [220, 180]  # 20 + 2 x 100 hot dogs
    order = train.epoch_sample_order(sources, weights, torch.Generator().manual_seed(0), labels, class_balance=True)
    per_class = torch.bincount(labels[order]).tolist()
    assert abs(per_class[0] - per_class[1]) <= 2 and abs(len(order) - len(plain)) <= 2
    counts = torch.bincount(order, minlength=len(sources)).float()
    # Within a class, b still gets twice a's visits per photo.
    assert counts[200:].mean() / counts[:20].mean() == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="labels"):
        train.epoch_sample_order(sources, weights, torch.Generator().manual_seed(0), class_balance=True)


def test_a_recipe_inherits_its_base_and_overrides_it(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data_roots": ROOTS, "lr": 0.1, "epochs": 5}))
    (tmp_path / "child.yaml").write_text("base: base.yaml\nlr: 0.2\n")
    cfg, _ = parse_config(["--config", str(tmp_path / "child.yaml"), "--epochs", "7"])
    assert (cfg.data_roots, cfg.lr, cfg.epochs) == (ROOTS, 0.2, 7)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(SystemExit, match="names itself"):
        parse_config(["--config", str(tmp_path / "loop.yaml")])


def test_the_shipped_recipes_name_every_source_of_the_data_home():
    cfg, _ = parse_config(["--config", str(REPO / "training" / "configs" / "distill-patient.yaml")])
    assert cfg.teacher == "lite2" and cfg.teacher_online and cfg.mixup > 0 and cfg.select_source == "all"
    sources = set(cfg.data_roots) | set(cfg.source_patterns)
    assert set(cfg.val_fraction) == sources and set(cfg.source_repeats) <= sources
    folders = {Path(e if isinstance(e, str) else e["path"]).name for e in cfg.data_roots.values()}
    shared_more = REPO.parent / "shared" / "data" / "hotdog-more"
    if shared_more.is_dir():  # every hotdog-more source is trained on
        assert {p.name for p in shared_more.iterdir() if p.is_dir()} <= folders


def test_mixup_mixes_images_and_targets_by_the_same_weight():
    from training.presets import mixup

    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    target = torch.eye(2)[[0, 0, 1, 1]]
    mixed, mixed_target, lam = mixup(x, target, 1.0, torch.Generator().manual_seed(3))
    assert 0 < lam < 1
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[3])
    assert torch.allclose(mixed_target[0], torch.tensor([lam, 1 - lam]))
    assert torch.allclose(mixed_target.sum(1), torch.ones(4))


def test_a_patient_run_learns_from_an_online_lite2_teacher_on_mixed_batches(sample_tree, tmp_path):
    run = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "2", *TINY_TRAIN_ARGS,
                      "--teacher", "lite2", "--teacher-online", "true", "--teacher-views", "1", "--teacher-size", "64",
                      "--mixup", "1.0", "--label-smoothing", "0"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher"].startswith("tf_efficientnet_lite2") and manifest["teacher_labels"] == "online"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["train_acc"] < 1 for r in rows)  # mixed targets: fractional hits


def test_an_unknown_teacher_is_refused_in_one_line(tmp_path):
    result = run_cli(tmp_path, "--data", str(SAMPLE), "--teacher", "lite9", *TINY_TRAIN_ARGS)
    assert result.returncode == 2
    assert "lite0, lite1, lite2" in result.stderr.strip().splitlines()[-1]


def test_data_given_on_the_command_line_replaces_the_recipes_sources(tmp_path):
    recipe = str(REPO / "training" / "configs" / "sources.yaml")
    cfg, _ = parse_config(["--config", recipe, "--data", str(SAMPLE)])
    samples, labels, root = train.scan_recipe_data(cfg)
    assert root == SAMPLE and len(samples) == 12 and labels == LABELS
    home = make_home(tmp_path)
    cfg, _ = parse_config(["--config", recipe, "--data-home", str(home), "--data-roots", json.dumps(ROOTS)])
    samples, _, root = train.scan_recipe_data(cfg)
    assert root == home and {s.source for s in samples} == {"kaggle", "extra", "both", "hotonly"}
