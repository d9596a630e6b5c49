import pytest
import torch

from training.evaluate import classification_report, roc_auc

LABELS = ("hot_dog", "not_hot_dog")


def test_report_on_a_hand_checked_case():
    # true:  hd hd nd nd nd ; predicted (argmax): hd nd nd nd hd
    y_true = torch.tensor([0, 0, 1, 1, 1])
    p_hotdog = torch.tensor([0.9, 0.4, 0.2, 0.3, 0.6])
    probs = torch.stack([p_hotdog, 1 - p_hotdog], dim=1)
    r = classification_report(y_true, probs, LABELS)
    assert r["confusion_matrix"] == [[1, 1], [1, 2]]
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["per_class"]["hot_dog"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert r["per_class"]["not_hot_dog"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["not_hot_dog"]["recall"] == pytest.approx(2 / 3)
    # AUC: positives (0.9, 0.4) vs negatives (0.2, 0.3, 0.6): 0.9 beats 3, 0.4 beats 2 -> 5/6.
    assert r["roc_auc"] == pytest.approx(5 / 6)
    assert r["decision_rule"] == "argmax"


def test_auc_counts_ties_as_half_and_needs_both_classes():
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == pytest.approx(0.5)
    assert roc_auc(torch.tensor([0.5, 0.7]), torch.tensor([True, True])) is None
