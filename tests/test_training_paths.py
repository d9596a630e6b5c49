"""Training paths the shipped recipe depends on: the time budget, EMA, the augmentations, the decode cache
(and its parallel decoding), drop_path, and model_src.bundle's refusals."""
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_TRAIN_ARGS
from helpers import flip_byte
from imagegen import stripes_tree
from model_src.bundle import BundleError, load_bundle
from model_src.preprocess import PreprocessSpec
from model_src.resnn import DownBlock
from training import data, train
from training.presets import TrainAugment

FP32 = ["--amp", "off", "--threads", "1"]


def test_time_budget_ends_the_run_and_drives_the_schedule(sample_tree, tmp_path, capsys):
    """1000 epochs allowed, 0.05 CPU-minutes of training: the run stops at the budget (not the epochs), and
    the learning rate follows time: it has decayed to nearly zero by the end (by steps it would be at 0.1%).
    CPU time (the recipe's budget_clock), so a loaded test machine does not shorten the run."""
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "1000",
                      "--time-budget-min", "0.05", "--budget-clock", "cpu", *TINY_TRAIN_ARGS, *FP32])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert 1 < manifest["epochs_run"] == len(rows) < 1000
    assert 0.05 <= manifest["train_minutes"] < 0.05 + 0.05  # stops at the first step past the budget
    assert rows[-1]["lr"] < 0.05 * 0.003 < max(r["lr"] for r in rows)  # cosine over time reached its end
    # One thread of several cores buys less than the recipe's budget: the run says so and records it.
    assert manifest["threads"] == 1 and manifest["cpu_count"] == os.cpu_count()
    assert ("this run gets less compute" in capsys.readouterr().err) == (os.cpu_count() > 1)


def test_ema_weights_are_what_is_evaluated_and_shipped(sample_tree, tmp_path):
    # 8 training photos in batches of 4: two steps (the first update copies the weights, the second averages).
    out = train.main(["--data", str(sample_tree), "--out", str(tmp_path / "run"), "--epochs", "1",
                      "--ema-decay", "0.5", *TINY_TRAIN_ARGS, "--batch-size", "4", *FP32])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    shipped = torch.load(out / "model.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert shipped.keys() == ema.keys() == ckpt["model"].keys()
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)  # one epoch: the best is the last EMA
    weight = "blocks.0.conv1.weight"
    assert not torch.equal(shipped[weight], ckpt["model"][weight])  # the average, not the raw weights
    # Decay 0.5 keeps the average close to the raw weights, closer than to where training started.
    torch.manual_seed(0)
    start = train.ResNN(2, (8, 16, 16, 32)).state_dict()[weight]
    raw = ckpt["model"][weight]
    assert (shipped[weight] - raw).norm() < (start - raw).norm()


def uniform_batch():
    """Two 16x16 images whose left and right halves differ, so a flip shows."""
    img = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    img[:, :, :, :8] = 200
    img[:, :, :, 8:] = 40
    return img


def augment(**kw) -> TrainAugment:
    return TrainAugment(PreprocessSpec(), **{"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "jitter": 0.0,
                                             "erasing": 0.0, **kw})


def test_flip_mirrors_about_half_the_images():
    spec, x = PreprocessSpec(), uniform_batch()
    from model_src.preprocess import normalize

    plain, mirrored = normalize(x.float(), spec), normalize(x.float().flip(-1), spec)
    flips = []
    for seed in range(40):
        out = augment()(x, 16, torch.Generator().manual_seed(seed))
        for i in range(2):
            assert torch.allclose(out[i], plain[i], atol=1e-4) or torch.allclose(out[i], mirrored[i], atol=1e-4)
            flips.append(torch.allclose(out[i], mirrored[i], atol=1e-4))
    assert 20 <= sum(flips) <= 60  # of 80: a fair coin


def test_crop_box_covers_the_asked_area_and_stays_inside():
    g = torch.Generator().manual_seed(0)
    aug = TrainAugment(PreprocessSpec(), scale=(0.25, 0.25))
    for _ in range(50):
        top, left, h, w = aug._crop_box(100, 100, g)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 100
        assert 0.2 < h * w / 10_000 < 0.3 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_color_jitter_changes_brightness_within_its_range():
    x = torch.full((64, 3, 8, 8), 100, dtype=torch.uint8)
    out = augment(jitter=0.3)(x, 8, torch.Generator().manual_seed(0))
    spec = PreprocessSpec()
    pixels = out * torch.tensor(spec.std).view(3, 1, 1) * 255 + torch.tensor(spec.mean).view(3, 1, 1) * 255
    means = pixels.mean(dim=(1, 2, 3))
    assert means.std() > 5  # images differ
    assert 100 * 0.7 - 1 <= means.min() and means.max() <= 100 * 1.3 + 1  # brightness within +-30%


def test_random_erasing_replaces_a_patch_with_noise():
    x = torch.full((32, 3, 32, 32), 128, dtype=torch.uint8)
    clean = augment()(x, 32, torch.Generator().manual_seed(0))
    erased = augment(erasing=1.0)(x, 32, torch.Generator().manual_seed(0))
    changed = (erased != clean).any(1).float().mean(dim=(1, 2))  # share of each image erased
    assert (changed > 0.01).all() and (changed < 0.4).all()  # every image, 2-33% of its area


def test_drop_path_drops_whole_residual_branches_in_training_only():
    torch.manual_seed(0)
    block = DownBlock(3, 8, drop_path=0.5)
    torch.nn.init.ones_(block.bn2.weight)  # a live branch (zero-init would hide the drop)
    x = torch.randn(64, 3, 8, 8)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    out, shortcut_only = block(x), torch.relu(block.shortcut(x))
    dropped = torch.tensor([torch.equal(out[i], shortcut_only[i]) for i in range(64)])
    assert 16 <= int(dropped.sum()) <= 48  # about half the samples lost their branch, the rest kept it


def stripes_samples(tmp_path, n):
    root = stripes_tree(tmp_path / "stripes", per_class=n // 2, seed=0)
    samples, _ = data.scan_image_folder(root)
    return root, samples


def test_decode_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root, samples = stripes_samples(tmp_path, 8)
    first = data.load_cached(samples, 36, 32, 10**7, workers=1, quiet=True)
    [cache_file] = data.CACHE_DIR.glob("*.pt")
    decode = data._decode_one
    monkeypatch.setattr(data, "_decode_one", lambda job: pytest.fail(f"decoded again: {job[0]}"))
    again = data.load_cached(samples, 36, 32, 10**7, workers=1, quiet=True)
    assert torch.equal(again[0], first[0])  # read from the cache
    monkeypatch.setattr(data, "_decode_one", decode)
    # The same file, new pixels (a re-exported photo): its entry no longer matches, it is decoded again.
    Image.new("RGB", (40, 40), (255, 0, 0)).save(samples[0].path)
    changed = data.load_cached(samples, 36, 32, 10**7, workers=1, quiet=True)
    assert changed[0][0, 0].float().mean() == 255 and torch.equal(changed[0][1:], first[0][1:])
    # Another crop size is another entry, not the old one.
    assert data.load_cached(samples, 40, 40, 10**7, workers=1, quiet=True)[0].shape[-1] == 40
    assert len(list(cache_file.parent.glob("*.pt"))) == 3


def test_parallel_decoding_above_64_images_gives_the_same_tensors(tmp_path, monkeypatch):
    _, samples = stripes_samples(tmp_path, 70)
    serial = data.load_cached(samples, 36, 32, 10**7, workers=1, quiet=True)
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache2")
    parallel = data.load_cached(samples, 36, 32, 10**7, workers=2, quiet=True)
    for a, b in zip(serial[:3], parallel[:3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("breakage,words", [
    ("no_manifest", "no manifest.json"),
    ("no_weights", "weights file missing"),
    ("tampered_weights", "does not match the manifest"),
    ("label_count", "3 labels but the model has 2 outputs"),
])
def test_bundle_refusals_name_the_problem(tmp_path, breakage, words):
    folder = tmp_path / "weights"
    shutil.copytree(REPO / "weights", folder)
    if breakage == "no_manifest":
        (folder / "manifest.json").unlink()
    elif breakage == "no_weights":
        (folder / "model.pt").unlink()
    elif breakage == "tampered_weights":
        (folder / "model.pt").write_bytes(flip_byte((folder / "model.pt").read_bytes()))
    else:
        spec = json.loads((folder / "preprocess.json").read_text())
        (folder / "preprocess.json").write_text(json.dumps({**spec, "labels": [*spec["labels"], "taco"]}))
    with pytest.raises(BundleError, match=words):
        load_bundle(folder)
