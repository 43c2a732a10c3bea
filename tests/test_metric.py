"""solution.metric against scikit-learn: samples F1 (the competition metric), micro/macro and per-label P/R/F1."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from solution.labels import LABELS, N_LABELS
from solution.metric import binarize, expected_f1, expected_f1_sets, f1_by_threshold, per_row_f1, samples_f1, scores


def random_case(seed: int, rows: int = 300):
    rng = np.random.default_rng(seed)
    y = (rng.random((rows, N_LABELS)) < rng.uniform(0.03, 0.4, N_LABELS)).astype(np.uint8)
    y[np.flatnonzero(y.sum(axis=1) == 0), rng.integers(0, N_LABELS, (y.sum(axis=1) == 0).sum())] = 1
    probs = np.clip(0.3 * y + rng.beta(1, 4, (rows, N_LABELS)), 0, 1).astype(np.float32)
    return y, probs, rng


def reference_binarize(probs, thresholds):
    """Written out independently: threshold, then the top label for a row with none above."""
    pred = probs >= np.broadcast_to(np.asarray(thresholds, dtype=probs.dtype), probs.shape)
    for r in range(len(pred)):
        if not pred[r].any():
            pred[r, int(np.argmax(probs[r]))] = True
    return pred.astype(int)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["scalar", "per_label"])
def test_samples_f1_matches_sklearn(seed, kind):
    y, probs, rng = random_case(seed)
    thresholds = 0.55 if kind == "scalar" else rng.uniform(0.3, 0.9, N_LABELS)
    assert (~(probs >= thresholds).any(axis=1)).sum() >= 5  # the at-least-one-label rule is exercised
    want = f1_score(y, reference_binarize(probs, thresholds), average="samples", zero_division=0)
    assert samples_f1(y, probs, thresholds) == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(per_row_f1(y, probs, thresholds).mean(), want, atol=1e-12)


def test_binarize_gives_every_row_at_least_its_top_label():
    probs = np.array([[0.1, 0.3, 0.2] + [0.0] * 15,  # nothing above 0.5: its argmax (label 2) only
                      [0.9, 0.6, 0.1] + [0.0] * 15,  # two above: both, nothing added
                      [0.0] * 17 + [0.4]], dtype=np.float32)  # nothing above: the last label
    pred = binarize(probs, 0.5)
    assert pred.sum(axis=1).tolist() == [1, 2, 1]
    assert pred[0, 1] and pred[1, 0] and pred[1, 1] and pred[2, 17]
    # per-label thresholds are per column
    t = np.full(N_LABELS, 0.95, np.float32)
    t[2] = 0.15
    assert np.flatnonzero(binarize(probs, t)[0]).tolist() == [2]


def test_at_least_one_label_rule_changes_the_score():
    y = np.zeros((2, N_LABELS), np.uint8)
    y[:, 4] = 1
    probs = np.full((2, N_LABELS), 0.01, np.float32)
    probs[:, 4] = 0.2  # below 0.5, yet the top label of its row: predicted, so F1 is 1
    assert samples_f1(y, probs, 0.5) == 1.0
    probs[1, 7] = 0.3  # now the wrong label is on top in row 1
    assert samples_f1(y, probs, 0.5) == 0.5


def test_integer_probabilities_are_not_all_positive():
    y = np.zeros((3, N_LABELS), np.int64)
    y[[0, 1, 2], [0, 3, 5]] = 1
    assert binarize(y, 0.5).sum() == 3
    assert samples_f1(y, y, 0.5) == 1.0


def test_micro_macro_and_per_label_match_sklearn():
    y, probs, rng = random_case(7, rows=400)
    y[:, 11] = 0  # a label with no support and (probably) few predictions
    thresholds = rng.uniform(0.35, 0.8, N_LABELS)
    pred = reference_binarize(probs, thresholds)
    got = scores(y, binarize(probs, thresholds))
    assert got["samples_f1"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=0))
    assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert list(got["per_label"]) == [str(label) for label in LABELS]
    for j, label in enumerate(LABELS):
        entry = got["per_label"][str(label)]
        assert entry["precision"] == pytest.approx(p[j]) and entry["recall"] == pytest.approx(r[j])
        assert entry["f1"] == pytest.approx(f[j]) and entry["support"] == s[j]


def test_perfect_and_worst_predictions():
    y, _, _ = random_case(3, rows=50)
    assert samples_f1(y, y.astype(np.float32), 0.5) == 1.0
    assert samples_f1(y, 1.0 - y.astype(np.float32), 0.5) == 0.0


def _expected_f1_by_enumeration(p: np.ndarray, pred: np.ndarray) -> float:
    """E[F1] of one predicted set when label j is true with probability p[j], independently: all 2^n truths."""
    n = len(p)
    total = 0.0
    for bits in range(2 ** n):
        truth = np.array([(bits >> j) & 1 for j in range(n)], dtype=bool)
        chance = np.prod(np.where(truth, p, 1 - p))
        total += chance * 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
    return total


@pytest.mark.parametrize("seed", range(4))
def test_expected_f1_sets_are_the_best_of_all_label_sets(seed):
    """Brute force over every non-empty set of 6 labels: the chosen set has the highest expected F1."""
    rng = np.random.default_rng(seed)
    n = 6
    probs = rng.beta(0.6, 0.9, (5, n))
    chosen = expected_f1_sets(probs, chunk=2)  # chunk < rows exercises the chunking
    every_set = [np.array([(bits >> j) & 1 for j in range(n)], dtype=bool) for bits in range(1, 2 ** n)]
    for row, pred in zip(probs, chosen):
        best = max(_expected_f1_by_enumeration(row, s) for s in every_set)
        assert pred.any()
        assert _expected_f1_by_enumeration(row, pred) == pytest.approx(best, abs=1e-12)


def test_expected_f1_of_any_set_matches_enumeration():
    """report.html ranks test rows by the expected F1 of their submitted set, whatever set the decision chose."""
    rng = np.random.default_rng(5)
    probs = rng.beta(0.6, 0.9, (7, 6))
    sets = rng.random((7, 6)) < 0.4
    sets[np.arange(7), rng.integers(0, 6, 7)] = True  # every row has a label
    got = expected_f1(probs, sets, chunk=3)
    assert got == pytest.approx([_expected_f1_by_enumeration(p, s) for p, s in zip(probs, sets)], abs=1e-12)


def test_f1_by_threshold_is_each_thresholds_f1():
    truth, probs = np.array([1, 1, 0, 0, 1], bool), np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    assert f1_by_threshold(truth, probs, np.array([0.3, 0.5, 0.95])) == pytest.approx([2 * 2 / 6, 2 * 1 / 5, 0.0])


def test_expected_f1_sets_follow_confidence():
    probs = np.full((3, N_LABELS), 0.01)
    probs[0, 0] = 0.99  # one sure label: only it
    probs[1, :3] = 0.9  # three likely labels: all three
    probs[2, 4] = 0.2  # nothing likely: still the top label (every image has one)
    pred = expected_f1_sets(probs)
    assert pred[0].nonzero()[0].tolist() == [0]
    assert pred[1].nonzero()[0].tolist() == [0, 1, 2]
    assert pred[2].nonzero()[0].tolist() == [4]
