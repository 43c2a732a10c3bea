"""solution.tune's pieces: the fast threshold search against the plain metric, calibration, and the saved tuning."""
from __future__ import annotations

import numpy as np
import pytest

from solution.errors import UserError
from solution.labels import N_LABELS
from solution.metric import samples_f1
from solution.tune import GRID, RowF1, Tuned, best_global_threshold, calibrate, fit_calibration


def case(seed: int, rows: int = 2000):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.6, (rows, N_LABELS))  # each row's true label probabilities
    y = (rng.random((rows, N_LABELS)) < truth).astype(np.uint8)
    return y, truth, rng


def test_grid_search_matches_the_metric_at_every_threshold():
    y, truth, _ = case(0, rows=500)
    probs = truth.astype(np.float32)
    fast = RowF1(y, probs).at_grid()
    assert fast == pytest.approx([samples_f1(y, probs, t) for t in GRID], abs=1e-12)
    t, f1 = best_global_threshold(y, probs)
    assert f1 == pytest.approx(max(samples_f1(y, probs, g) for g in GRID))


def test_calibration_undoes_a_distortion():
    """Probabilities squashed and shifted on the logit scale come back close to the true ones."""
    y, truth, _ = case(1, rows=20000)
    logit = np.log(truth / (1 - truth))
    distorted = 1 / (1 + np.exp(-(0.4 * logit + 1.0)))  # over-confident on rare labels, under elsewhere
    calibration = fit_calibration(y, distorted)
    restored = calibrate(distorted, calibration)
    assert np.abs(calibration[:, 0] - 2.5).max() < 0.5  # the slope that undoes 0.4
    assert np.abs(restored - truth).mean() < 0.25 * np.abs(distorted - truth).mean()
    assert restored.sum(axis=0) == pytest.approx(y.sum(axis=0), rel=0.02)  # a logistic fit matches the label counts


def test_calibration_stays_finite_for_a_label_without_positives():
    y, truth, _ = case(2, rows=300)
    y[:, 5] = 0
    calibration = fit_calibration(y, truth)
    assert np.isfinite(calibration).all()
    assert calibrate(truth, calibration)[:, 5].max() < 0.2


def test_saved_tuning_round_trips_and_decides_alike():
    y, truth, rng = case(3, rows=400)
    tuned = Tuned(np.array([0.25, 0.75]), 0.4, rng.uniform(0.2, 0.7, N_LABELS).astype(np.float32),
                  fit_calibration(y, truth))
    record = {"models": ["a", "b"], "weights": {"a": 0.25, "b": 0.75}, **tuned.to_record()}
    again = Tuned.from_record(record)
    assert np.allclose(again.weights, tuned.weights)
    for decision in ("thresholds", "expected_f1"):
        assert (again.label_sets(truth, decision) == tuned.label_sets(truth, decision)).all()


def test_a_blend_json_from_before_calibration_asks_for_a_new_tune():
    record = {"models": ["a"], "weights": {"a": 1.0}, "global_threshold": 0.5,
              "thresholds": {str(label): 0.5 for label in range(1, 20) if label != 12}}
    with pytest.raises(UserError, match=r"oof/blend.json .*rerun ./run.sh tune"):
        Tuned.from_record(record)


def _same_tuning(a: Tuned, b: Tuned) -> bool:
    return (np.array_equal(a.weights, b.weights) and a.global_threshold == b.global_threshold
            and np.array_equal(a.thresholds, b.thresholds) and np.array_equal(a.calibration, b.calibration))


def test_nested_tuning_for_fold_k_never_reads_fold_k_labels():
    """Permuting the labels of fold k's rows leaves the weights, thresholds and calibration fitted for fold k's
    nested score unchanged, while it does change the other folds' (so the permutation is felt at all)."""
    from solution.config import build_config
    from solution.tune import nested_tunings

    y, truth, rng = case(3, rows=450)
    stack = np.stack([np.clip(truth + rng.normal(0, s, truth.shape), 0, 1).astype(np.float32) for s in (0.1, 0.2)])
    fold_of_row = np.arange(len(y)) % 3
    cfg = build_config(["n_folds=3", "tune.trials=6", "tune.threshold_trials=3"])
    base = nested_tunings(stack, y, fold_of_row, cfg)
    for k in range(3):
        rows = np.flatnonzero(fold_of_row == k)
        permuted = y.copy()
        permuted[rows] = y[rng.permutation(rows)]
        again = nested_tunings(stack, permuted, fold_of_row, cfg)
        assert _same_tuning(again[k], base[k])
        assert not all(_same_tuning(again[j], base[j]) for j in range(3) if j != k)
