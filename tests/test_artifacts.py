"""The shipped artifacts agree with each other: every report and the .pte metadata name the weights in
weights/ (their sha256), the reports' figures agree where they measure the same thing, and the int8
program `make serve` ships keeps the labels and accuracy its parity report promises.

Every expected value is read from the files (the shipped model changes); nothing here is today's number.
"""
import json
import math

import pytest
import torch

from conftest import REPO, SAMPLE
from model_src.bundle import load_bundle, sha256_file

WEIGHTS, REPORTS, EXPORTED = REPO / "weights", REPO / "reports", REPO / "exported"


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def shipped_sha() -> str:
    sha = sha256_file(WEIGHTS / "model.pt")
    assert read(WEIGHTS / "manifest.json")["weights_sha256"] == sha
    return sha


@pytest.mark.parametrize("path,key", [
    ("weights/eval_test.json", "weights_sha256"),
    ("exported/hotdog.json", "source_weights.sha256"),
    ("reports/mobile_parity.json", "weights_sha256"),
    ("reports/bench_mobile.json", "weights_sha256"),
    ("reports/serve_parity.json", "model_version"),  # the handler's model_version: the sha's first 12 digits
])
def test_each_artifact_names_the_shipped_weights(shipped_sha, path, key):
    value = read(REPO / path)
    for part in key.split("."):
        value = value[part]
    assert shipped_sha.startswith(value) and len(value) >= 12, f"{path} names {value}, weights/ is {shipped_sha}"


def test_the_reports_agree_on_the_test_accuracy_of_the_same_weights():
    """`make eval`, `make export-parity` and `make serve-parity` all score the shipped fp32 model on test/."""
    evaluated = read(WEIGHTS / "eval_test.json")
    mobile, served = read(REPORTS / "mobile_parity.json"), read(REPORTS / "serve_parity.json")
    assert evaluated["n"] == mobile["n"] == served["compared"]
    for other in (mobile["eager"]["accuracy"], mobile["xnnpack_fp32"]["accuracy"], served["fp32_eager_accuracy"]):
        assert other == pytest.approx(evaluated["accuracy"], abs=0.5 / evaluated["n"])
    # The confusion matrix and the accuracy are one set of predictions.
    matrix = evaluated["confusion_matrix"]
    assert sum(map(sum, matrix)) == evaluated["n"]
    assert sum(matrix[i][i] for i in range(len(matrix))) / evaluated["n"] == pytest.approx(evaluated["accuracy"])


def test_int8_parity_report_keeps_its_promise():
    """The int8 program loses at most INT8_MAX_DROP_PT points against fp32 on test/, and the report's own
    figures are consistent (the drop is the difference of the two accuracies it states)."""
    from mobile_export.parity import INT8_MAX_DROP_PT

    report = read(REPORTS / "mobile_parity.json")
    int8, fp32 = report["xnnpack_int8"], report["xnnpack_fp32"]
    assert int8["limit_pt"] == INT8_MAX_DROP_PT
    assert int8["accuracy_drop_vs_fp32_pt"] == pytest.approx((fp32["accuracy"] - int8["accuracy"]) * 100, abs=1e-6)
    assert int8["accuracy_drop_vs_fp32_pt"] <= INT8_MAX_DROP_PT and int8["pass"] and report["pass"]
    # Each point of accuracy gap is at least one flipped label: agreement cannot exceed 1 - gap.
    assert int8["agreement_with_fp32"] <= 1 - abs(fp32["accuracy"] - int8["accuracy"]) + 1e-6
    assert fp32["label_mismatches_vs_eager"] == 0


def test_shipped_int8_program_agrees_with_eager_on_the_sample_photos():
    """The committed int8 .pte through the ExecuTorch runtime vs the shipped weights in eager PyTorch, on the
    12 sample photos: no more label flips than the parity report's agreement rate on test/ allows."""
    from mobile_export.export import INT8_FILE, load_uint8_batch
    from mobile_export.parity import eager_probs, load_forward, run_method

    model, spec, _ = load_bundle(WEIGHTS)
    meta = read(EXPORTED / "hotdog.json")
    paths = sorted(SAMPLE.rglob("*.jpg"))
    images, kept, _ = load_uint8_batch(paths, spec)
    assert len(kept) == len(paths) == 12
    eager = eager_probs(model, spec, images)
    int8 = run_method(load_forward(EXPORTED / INT8_FILE), images, meta["input"]["batch"]["max"])
    flips = int((eager.argmax(1) != int8.argmax(1)).sum())
    agreement = read(REPORTS / "mobile_parity.json")["xnnpack_int8"]["agreement_with_fp32"]
    # 12 photos at the stated agreement rate: allow the expected flips, rounded up, and at least one.
    assert flips <= max(1, math.ceil(12 * (1 - agreement))), f"{flips} of 12 labels flipped"
    assert torch.allclose(int8.sum(1), torch.ones(12), atol=1e-4)  # probabilities, softmax in the graph
    # And the labels the sample's folders name: the int8 program is no worse than eager there.
    truth = torch.tensor([0 if "/hot_dog/" in str(p) else 1 for p in paths])
    assert (int8.argmax(1) == truth).sum() >= (eager.argmax(1) == truth).sum() - 1
