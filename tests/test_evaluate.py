"""training.evaluate.classification_metrics against answers worked out by hand, and `make eval`'s use of it."""
import json

import pytest
import torch

from conftest import REPO
from training.evaluate import classification_metrics, main, roc_auc

LABELS = ("hot_dog", "not_hot_dog")


def test_metrics_of_a_hand_checked_two_class_case():
    # true:       hd   hd   nd   nd   nd   hd
    # P(hot dog): 0.9  0.4  0.2  0.3  0.6  0.8  -> predicted hd nd nd nd hd hd
    # sources:    k    k    k    x    x    x
    y_true = torch.tensor([0, 0, 1, 1, 1, 0])
    p_hotdog = torch.tensor([0.9, 0.4, 0.2, 0.3, 0.6, 0.8])
    probs = torch.stack([p_hotdog, 1 - p_hotdog], dim=1)
    r = classification_metrics(probs, y_true, LABELS, ["k", "k", "k", "x", "x", "x"])
    # rows = true, columns = predicted: hd -> (hd 2, nd 1); nd -> (hd 1, nd 2)
    assert r["confusion_matrix"] == [[2, 1], [1, 2]]
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["hot_dog"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert r["per_class"]["not_hot_dog"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                                           "support": 3})
    # AUC: positives (0.9, 0.4, 0.8) vs negatives (0.2, 0.3, 0.6): 0.9 and 0.8 beat all 3, 0.4 beats 2 -> 8/9.
    assert r["roc_auc"] == pytest.approx(8 / 9)
    # k: hd right, hd wrong, nd right -> 2/3; x: nd right, nd wrong, hd right -> 2/3
    assert r["per_source"] == {"k": {"n": 3, "accuracy": pytest.approx(2 / 3)},
                               "x": {"n": 3, "accuracy": pytest.approx(2 / 3)}}
    assert r["decision_rule"] == "argmax"


def test_metrics_with_unequal_classes_and_sources():
    # true:  hd hd hd hd nd ; predicted: hd hd hd nd hd ; sources a a b b b
    y_true = torch.tensor([0, 0, 0, 0, 1])
    p_hotdog = torch.tensor([0.7, 0.9, 0.6, 0.1, 0.55])
    r = classification_metrics(torch.stack([p_hotdog, 1 - p_hotdog], 1), y_true, LABELS, list("aabbb"))
    assert r["confusion_matrix"] == [[3, 1], [1, 0]]
    assert r["accuracy"] == pytest.approx(3 / 5)
    # hot_dog: precision 3/4, recall 3/4; not_hot_dog: nothing right -> 0 precision, recall and F1
    assert r["per_class"]["hot_dog"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert r["per_class"]["not_hot_dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # The one negative (0.55) is beaten by 0.7, 0.9 and 0.6, beats 0.1: 3/4.
    assert r["roc_auc"] == pytest.approx(3 / 4)
    assert r["per_source"]["a"] == {"n": 2, "accuracy": 1.0}
    assert r["per_source"]["b"] == {"n": 3, "accuracy": pytest.approx(1 / 3)}


def test_auc_is_about_the_hot_dog_class_wherever_it_sits():
    # Same photos, classes listed the other way round: every figure follows the names, not the column.
    y_true = torch.tensor([1, 1, 0, 0, 0, 1])  # hd is index 1 here
    p_hotdog = torch.tensor([0.9, 0.4, 0.2, 0.3, 0.6, 0.8])
    r = classification_metrics(torch.stack([1 - p_hotdog, p_hotdog], 1), y_true, ("not_hot_dog", "hot_dog"))
    assert r["roc_auc"] == pytest.approx(8 / 9)
    assert "per_source" not in r


def test_three_classes_have_no_auc_and_a_full_confusion_matrix():
    probs = torch.eye(3)[[0, 1, 2, 2, 1]]  # predicted 0 1 2 2 1
    r = classification_metrics(probs, torch.tensor([0, 1, 2, 1, 0]), ("a", "b", "c"))
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["per_class"]["c"] == pytest.approx({"precision": 1 / 2, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert "roc_auc" not in r


def test_auc_counts_ties_as_half_and_needs_both_classes():
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == pytest.approx(0.5)
    assert roc_auc(torch.tensor([0.5, 0.7]), torch.tensor([True, True])) is None


def test_make_eval_report_agrees_with_its_own_per_photo_predictions(sample_tree, tmp_path):
    """`make eval` on the shipped weights: the report's figures are the metrics of the predictions it wrote,
    and each row's true label is the folder the photo sits in (a flipped label shows up here)."""
    report = main(["--weights", str(REPO / "weights"), "--data", str(sample_tree), "--out", str(tmp_path),
                   "--name", "sample"])
    rows = [json.loads(line) for line in (tmp_path / "eval_sample_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["n"] == 12
    assert all(row["file"].split("/")[0] == row["true"] for row in rows)
    labels = tuple(rows[0]["probabilities"])
    probs = torch.tensor([[row["probabilities"][name] for name in labels] for row in rows])
    y_true = torch.tensor([labels.index(row["true"]) for row in rows])
    again = classification_metrics(probs, y_true, labels)
    assert report["confusion_matrix"] == again["confusion_matrix"]
    assert report["accuracy"] == pytest.approx(again["accuracy"])
    assert report["roc_auc"] == pytest.approx(again["roc_auc"], abs=1e-6)  # probabilities rounded through JSON
    for name in labels:
        assert report["per_class"][name] == pytest.approx(again["per_class"][name])
    # The shipped weights' own sources: the sample holds Kaggle photos and x* extra ones.
    assert {name: v["n"] for name, v in report["per_source"].items()} == {"kaggle": 6, "extra": 6}
    assert report["accuracy"] > 0.5  # the shipped model on its own sample photos is better than chance
