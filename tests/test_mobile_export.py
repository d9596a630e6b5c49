"""ExecuTorch export: a tiny ResNN goes through the real export and the real executorch.runtime.

The export runs once per module (fixtures below) and every test reads its files; the tiny model is first
fitted to the sample photos for a few steps so its predictions have margins int8 must preserve.
"""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, SAMPLE
from mobile_export import bench, export, parity
from model_src.bundle import read_data_files, sha256_file, write_data_files
from model_src.preprocess import HOTDOG_LABEL, PreprocessSpec, normalize
from model_src.resnn import build_model

ARCH = {"name": "ResNN", "num_classes": 2, "widths": [8, 16, 16, 32], "dropout": 0.0}
SPEC = PreprocessSpec(input_size=64, resize_size=72)
MAX_BATCH = 20  # above 16: the size XNNPACK silently caps at 15 unless mkldnn/nnpack are off
CALIB_IMAGES = 6


def _sample_files() -> list[tuple[str, int]]:
    return [(f"{label}/{p.name}", i) for i, label in enumerate(SPEC.labels)
            for p in sorted((SAMPLE / label).glob("*.jpg"))]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A trained-model folder in the shipped layout, with a data_files.txt whose train rows are a subset."""
    files = _sample_files()
    x_u8, kept, _ = export.load_uint8_batch([SAMPLE / f for f, _ in files], SPEC)
    assert len(kept) == len(files)
    x, y = normalize(x_u8, SPEC), torch.tensor([label for _, label in files])
    torch.manual_seed(0)
    model = build_model(ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("tiny_weights")
    torch.save(model.state_dict(), folder / "model.pt")
    SPEC.save(folder)
    digest = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"arch": ARCH, "weights": "model.pt", "weights_sha256": digest}))
    # Every third photo is a validation row: calibration must never pick one.
    write_data_files(folder, [("val" if i % 3 == 0 else "train", f, "kaggle") for i, (f, _) in enumerate(files)])
    return folder


@pytest.fixture(scope="module")
def exported(tiny_weights, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pte")
    meta = export.export_all(tiny_weights, out, calib_data=SAMPLE, calib_images=CALIB_IMAGES, seed=0,
                             max_batch=MAX_BATCH, swift_path=out / "PreprocessConstants.swift", log=lambda m: None)
    return out, meta


@pytest.fixture(scope="module")
def parity_on_sample(tiny_weights, exported) -> dict:
    out, _ = exported
    return parity.parity_report(tiny_weights, out, SAMPLE)


def test_metadata_schema_and_file_hashes(exported, tiny_weights):
    import executorch.version

    out, meta = exported
    assert json.loads((out / export.METADATA_FILE).read_text()) == meta
    assert {"format_version", "model", "arch", "source_weights", "executorch_version", "torch_version", "input",
            "preprocess", "labels", "output", "programs"} <= meta.keys()
    assert meta["executorch_version"] == executorch.version.__version__
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    assert meta["source_weights"]["sha256"] == manifest["weights_sha256"]
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == "NCHW" and meta["input"]["channels"] == "RGB"
    assert meta["input"]["shape"] == ["batch", 3, SPEC.input_size, SPEC.input_size]
    assert meta["input"]["batch"] == {"min": 1, "max": MAX_BATCH, "note": "coreml program: batch 1 only"}
    assert PreprocessSpec.from_dict(meta["preprocess"]) == SPEC
    assert meta["labels"] == list(SPEC.labels)
    assert meta["output"]["shape"] == ["batch", len(SPEC.labels)] and meta["output"]["decision_rule"] == "argmax"
    assert set(meta["programs"]) == {"xnnpack_fp32", "xnnpack_int8", "coreml"}
    for entry in meta["programs"].values():
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size_bytes"] == len(data)
        assert entry["planned_memory_bytes"] > 0


def test_fp32_pte_matches_eager_on_real_photos(parity_on_sample):
    fp32 = parity_on_sample["xnnpack_fp32"]
    assert parity_on_sample["n"] == len(_sample_files())
    assert fp32["label_mismatches_vs_eager"] == 0
    assert fp32["max_abs_prob_diff_vs_eager"] <= parity.FP32_MAX_ABS_DIFF
    assert fp32["pass"]


def test_int8_pte_runs_agrees_with_fp32_and_is_smaller(parity_on_sample, exported):
    int8 = parity_on_sample["xnnpack_int8"]
    assert int8["agreement_with_fp32"] >= 0.75  # most photos: int8 may flip a near-tie
    assert int8["size_ratio_fp32_over_int8"] > 2
    # The quantized convolutions run inside XNNPACK, not as slow CPU fallbacks.
    ops = exported[1]["programs"]["xnnpack_int8"]["pte"]["cpu_operators"]
    assert not [op for op in ops if "conv" in op or "quantize" in op], ops


@pytest.mark.parametrize("program", ["xnnpack_fp32", "xnnpack_int8"])
def test_dynamic_batch_1_15_16_and_max(exported, tiny_weights, program):
    out, meta = exported
    method = parity.load_forward(out / meta["programs"][program]["file"])
    x_u8, _, _ = export.load_uint8_batch([SAMPLE / f for f, _ in _sample_files()], SPEC)
    images = x_u8.repeat(2, 1, 1, 1)[:MAX_BATCH]
    full = method.execute([images])[0]
    assert full.shape == (MAX_BATCH, 2)
    for n in (1, 15, 16):
        probs = method.execute([images[:n].contiguous()])[0]
        assert probs.shape == (n, 2)
        # Batch rows are independent: the same image gives the same answer at every batch size.
        torch.testing.assert_close(probs, full[:n], atol=1e-5, rtol=0)
        torch.testing.assert_close(probs.sum(1), torch.ones(n), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError):
        method.execute([images.repeat(2, 1, 1, 1)[:MAX_BATCH + 1].contiguous()])


def test_calibration_uses_only_training_rows(exported, tiny_weights):
    _, meta = exported
    calib = meta["programs"]["xnnpack_int8"]["quantization"]["calibration"]
    train = {f for split, f, _ in read_data_files(tiny_weights) if split == "train"}
    assert calib["num_images"] == CALIB_IMAGES == len(calib["files"])
    assert set(calib["files"]) <= train
    assert not any("test" in Path(f).parts for f in calib["files"])
    again = export.select_calibration(tiny_weights, SAMPLE, CALIB_IMAGES, seed=0)
    assert again.files == calib["files"] and again.digest() == calib["files_sha256"]


def test_calibration_from_a_test_split_is_refused(tmp_path, tiny_weights):
    test_split = tmp_path / "hotdog" / "test"
    shutil.copytree(SAMPLE, test_split)
    bare = tmp_path / "weights"  # no data_files.txt: the whole folder would be the calibration pool
    shutil.copytree(tiny_weights, bare)
    (bare / "data_files.txt").unlink()
    with pytest.raises(export.ExportError, match="test/ split"):
        export.select_calibration(bare, test_split, CALIB_IMAGES, seed=0)
    out = tmp_path / "out"
    assert export.cli(["--weights", str(bare), "--out", str(out), "--calib-data", str(test_split),
                       "--swift", str(tmp_path / "P.swift")]) == 2
    assert not list(out.glob("*.pte"))  # refused before any lowering


def test_calibration_without_data_files_samples_the_folder(tiny_weights, tmp_path):
    bare = tmp_path / "weights"
    shutil.copytree(tiny_weights, bare)
    (bare / "data_files.txt").unlink()
    a = export.select_calibration(bare, SAMPLE, 5, seed=0)
    assert a.files == export.select_calibration(bare, SAMPLE, 5, seed=0).files  # seeded
    assert len(a.files) == 5 and all((SAMPLE / f).is_file() for f in a.files)
    assert len(export.select_calibration(bare, SAMPLE, 100, seed=0).files) == len(_sample_files())


def test_int8_calibration_fits_a_max_batch_below_its_batch_size(tiny_weights):
    model, spec, _ = export.load_bundle(tiny_weights)
    calibration, _, _ = export.load_uint8_batch([SAMPLE / f for f, _ in _sample_files()], spec)
    assert len(calibration) > 4
    quantized = export.quantize_int8(export.MobileClassifier(model, spec).eval(), spec, calibration, max_batch=4)
    assert quantized(calibration[:4]).shape == (4, 2)


def test_swift_constants_keep_non_ascii_labels_literal():
    text = export.swift_constants(PreprocessSpec(labels=("crème brûlée", "hot_dog")), "test")
    assert '"crème brûlée"' in text and "\\u" not in text  # Swift would reject JSON's \u00e8
    assert export.parse_swift_constants(text)["labels"] == ["crème brûlée", "hot_dog"]


def test_coreml_pte_is_fully_delegated_with_its_settings(exported, tiny_weights):
    import coremltools as ct

    _, meta = exported
    coreml = meta["programs"]["coreml"]
    assert coreml["pte"]["delegates"] == ["CoreMLBackend"]
    # Only the uint8 -> float cast (Core ML has no uint8 input) runs outside Core ML.
    assert coreml["pte"]["cpu_operators"] == ["dim_order_ops::_to_dim_order_copy"], coreml["pte"]["cpu_operators"]
    (delegate,) = coreml["delegation"]["delegates"]
    model = build_model(ARCH)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert delegate["ops"].get("aten.conv2d.default", 0) + delegate["ops"].get("aten.convolution.default", 0) == n_conv
    assert delegate["ops"]["aten.linear.default"] == n_linear
    assert {"aten.softmax.int", "aten.sub.Tensor", "aten.mul.Tensor"} <= delegate["ops"].keys()  # normalize + softmax
    specs = coreml["pte"]["delegate_compile_specs"][0]
    assert specs["model_compute_precision"] == "float16"
    assert specs["min_deployment_target"] == str(ct.target.iOS17.value)
    assert coreml["batch"] == {"min": 1, "max": 1}


def test_generated_swift_constants_match_metadata(exported):
    out, meta = exported
    swift = export.parse_swift_constants((out / "PreprocessConstants.swift").read_text())
    assert swift == {"inputSize": meta["preprocess"]["input_size"], "resizeSize": meta["preprocess"]["resize_size"],
                     "maxPixels": meta["preprocess"]["max_pixels"], "labels": meta["labels"],
                     "hotdogLabel": HOTDOG_LABEL}


def test_committed_ios_sample_matches_shipped_weights_and_executorch():
    """The app in mobile_export/ios must be regenerated whenever weights/ changes (`make export`)."""
    import executorch.version

    spec = PreprocessSpec.load(REPO / "weights")
    swift = export.parse_swift_constants(export.SWIFT_CONSTANTS.read_text())
    assert swift == {"inputSize": spec.input_size, "resizeSize": spec.resize_size, "maxPixels": spec.max_pixels,
                     "labels": list(spec.labels), "hotdogLabel": HOTDOG_LABEL}, "stale PreprocessConstants.swift: run `make export`"
    assert HOTDOG_LABEL in spec.labels
    project = (REPO / "mobile_export" / "ios" / "project.yml").read_text()
    version = executorch.version.__version__.split("+")[0]
    assert re.search(rf"branch:\s*swiftpm-{re.escape(version)}\s*$", project, re.M), "SPM pin != pinned executorch"
    assert "-all_load" in project
    classifier = (REPO / "mobile_export" / "ios" / "Hotdog" / "Classifier.swift").read_text()
    assert "Tensor<UInt8>" in classifier and "PreprocessConstants.resizeSize" in classifier
    assert "label == PreprocessConstants.hotdogLabel" in classifier and '"hot_dog"' not in classifier


def test_parity_refuses_a_stale_or_tampered_export(exported, tiny_weights, tmp_path):
    out, _ = exported
    manifest = json.loads((tiny_weights / "manifest.json").read_text())
    with pytest.raises(export.ExportError, match=f"were exported from weights sha256 {manifest['weights_sha256']}, "
                                                 f"but the weights are sha256 {'0' * 64}"):
        export.verify_exported(out, {**manifest, "weights_sha256": "0" * 64}, check_exporter=False)
    tampered = tmp_path / "out"
    shutil.copytree(out, tampered)
    with open(tampered / export.FP32_FILE, "ab") as f:
        f.write(b"\0")
    recorded = json.loads((out / export.METADATA_FILE).read_text())["programs"]["xnnpack_fp32"]["sha256"]
    actual = sha256_file(tampered / export.FP32_FILE)
    with pytest.raises(export.ExportError, match=f"has sha256 {actual}, but hotdog.json records {recorded}"):
        export.verify_exported(tampered, manifest, check_exporter=False)
    # Exported with other settings (this fixture's small calibration) than the exporter's defaults.
    with pytest.raises(export.ExportError, match="other exporter settings .*changed: calib_images"):
        export.verify_exported(out, manifest)


def test_bench_reports_all_three_variants(exported, tiny_weights, tmp_path):
    out, _ = exported
    report = bench.bench(tiny_weights, out, SAMPLE / "hot_dog" / "133012.jpg", runs=3, warmup=1)
    assert set(report["results"]) == {"eager", "xnnpack_fp32", "xnnpack_int8"}
    assert all(r["runs"] == 3 and r["median_ms"] > 0 for r in report["results"].values())
    assert report["torch_threads"] >= 1 and report["input_size"] == SPEC.input_size


def test_bench_batch_reports_per_image_cost_within_the_programs_range(exported, tiny_weights):
    out, _ = exported
    photo = SAMPLE / "hot_dog" / "133012.jpg"
    report = bench.bench(tiny_weights, out, photo, runs=3, warmup=1, batch=3)
    assert report["batch"] == 3
    assert all(r["median_ms_per_image"] == pytest.approx(r["median_ms"] / 3) for r in report["results"].values())
    max_batch = json.loads((out / export.METADATA_FILE).read_text())["input"]["batch"]["max"]
    with pytest.raises(export.ExportError, match=f"batches of 1 to {max_batch}"):
        bench.bench(tiny_weights, out, photo, runs=1, warmup=0, batch=max_batch + 1)


def test_calibration_refuses_test_files_listed_or_found_under_the_root(tmp_path, tiny_weights):
    dataset = tmp_path / "hotdog"  # the dataset root itself: rglob would reach test/ images
    shutil.copytree(SAMPLE, dataset / "test")
    bare = tmp_path / "weights"
    shutil.copytree(tiny_weights, bare)
    (bare / "data_files.txt").unlink()
    with pytest.raises(export.ExportError, match="test/ split"):
        export.select_calibration(bare, dataset, 100, seed=0)
    # A data_files.txt whose train rows point into test/ is refused too.
    write_data_files(bare, [("train", f"test/{f}", "kaggle") for f, _ in _sample_files()])
    with pytest.raises(export.ExportError, match="test/ split"):
        export.select_calibration(bare, dataset, 100, seed=0)
